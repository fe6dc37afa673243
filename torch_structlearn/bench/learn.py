"""``bench learn``: time to a structure — one layer learned from whitened images at the paper's
size (CIFAR-10: 45 000 images, K = 1 600, groups of 4, density 5 %) with the learner's defaults
against the learner as it was in v0.1 (steps of 250 samples, 50 FISTA iterations, float32, five
passes), and SPAMS's dictionary (where installed) read off the same way.

Each row reports the wall time, the passes made, the mean Jaccard overlap of the units'
supports at the last two checks of the stopping rule, the mean objective on held-out images
(codes from FISTA run to convergence, the same encoder for every dictionary) and the overlap of
its mask with the v0.1 learner's. Accuracy is the recipes' job (``recipes/exp_learner.py``)."""

from __future__ import annotations

import importlib.util
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..coding import fista, objective
from ..connectivity import Connectivity
from ..datasets import load_dataset
from ..learn import learn_layer
from ..whitening import ZCAWhitening
from .coding import spams_dictionary
from .timing import command, header, machine

V01 = {"batch_size": 250, "max_iter": 50, "precision": "float32", "epochs": 5, "settle": None,
       "subspace": None}
"""The v0.1 learner's settings (steps of 250 samples, as the loaders of its recipes gave; memory:
its default, four steps)."""

SETTINGS = {"defaults": {}, "defaults, float32": {"precision": "float32"},
            "defaults, input space": {"subspace": None}, "v0.1": V01}
"""The rows of ``bench learn`` by name: learner settings over the defaults. ``defaults, float32``
is what a CPU without native bfloat16 (most AVX2 CPUs) runs; ``defaults, input space`` learns
without the principal subspace (``subspace=None``), what the subspace saves."""


def run_learn(args) -> dict:
    """Learn the layer with each of ``args.settings`` (and SPAMS unless ``--skip-spams``) on
    ``args.n`` whitened training images; score each on ``args.held_out`` other images."""
    X, _ = load_dataset(args.dataset, "train", args.data_root, args.n + args.held_out)
    X = X.flatten(1)
    train, held = X[: args.n], X[args.n :]
    whiten = ZCAWhitening(X.shape[1], eps=args.eps).fit(DataLoader(TensorDataset(train), 1000))
    with torch.no_grad():
        train, held = whiten(train), whiten(held)
    loader = DataLoader(TensorDataset(train), batch_size=250)
    common = {"density": args.density, "group_size": args.group_size, "seed": args.seed,
              "verbose": False}
    if args.active_fraction is not None:
        common["active_fraction"] = args.active_fraction

    def held_objective(D: torch.Tensor, lam1: float, lam_g: float) -> float:
        total = 0.0
        for part in held.split(1000):
            A = fista(part, D, lam1=lam1, lam_g=lam_g, group_size=args.group_size,
                      max_iter=200, tol=1e-5)
            total += float(objective(part, D, A, lam1, lam_g, args.group_size).sum())
        return total / max(len(held), 1)

    rows, structures = [], {}
    for name in args.settings:
        t0 = time.perf_counter()
        layer, report = learn_layer(loader, args.atoms, **common, **SETTINGS[name])
        seconds = time.perf_counter() - t0
        structures[name] = layer.connectivity
        stab = report.stability
        rows.append({"method": name, "settings": SETTINGS[name], "seconds": seconds,
                     "passes": report.passes, "settled": report.settled,
                     "overlap": stab[-1][1] if stab else None, "lam1": report.lam1,
                     "lam_g": report.lam_g,
                     "held_out_objective": held_objective(layer.dictionary, report.lam1,
                                                          report.lam_g)})
        print(f"{name}: {seconds:.1f} s, {report.passes:.2f} passes, held-out objective "
              f"{rows[-1]['held_out_objective']:.4f}", flush=True)
    if args.skip_spams:
        pass
    elif importlib.util.find_spec("spams") is None:
        print("spams: not installed (pip install spams-bin), its row is skipped", flush=True)
    elif rows:  # the first row's λ₁ and passes (SPAMS has no group penalty to learn with)
        first = rows[0]
        D, seconds = spams_dictionary(train, args.atoms, first["lam1"], first["passes"], 256,
                                      args.seed)
        structures["SPAMS"] = Connectivity.from_scores(D.T, args.density, "per_unit")
        rows.append({"method": "SPAMS", "settings": {"lambda1": first["lam1"], "batchsize": 256},
                     "seconds": seconds, "passes": first["passes"], "settled": None,
                     "overlap": None, "lam1": first["lam1"], "lam_g": first["lam_g"],
                     # scored on our objective, group penalty included, as every other row
                     "held_out_objective": held_objective(D, first["lam1"], first["lam_g"])})
        print(f"SPAMS: {seconds:.1f} s, held-out objective {rows[-1]['held_out_objective']:.4f}",
              flush=True)
    if "v0.1" in structures:
        for r in rows:
            r["mask_overlap_v01"] = structures[r["method"]].overlap(structures["v0.1"])
        base = next(r["seconds"] for r in rows if r["method"] == "v0.1")
        for r in rows:
            r["speedup"] = base / r["seconds"]
    return {"benchmark": "learn", "machine": machine(), "command": command(args),
            "matmul_isa": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "native"),
            "dataset": args.dataset, "n": args.n, "held_out": len(held), "atoms": args.atoms,
            "group_size": args.group_size, "density": args.density, "eps": args.eps,
            "seed": args.seed, "rows": rows}


def learn_markdown(result: dict) -> str:
    """The BENCHMARKS.md section of a ``bench learn`` result."""
    isa = result.get("matmul_isa", "native")
    lines = [*header(result, False, f"seed {result['seed']}" + (
                 "" if isa == "native" else f"; MKL limited to {isa} (MKL_ENABLE_INSTRUCTIONS), "
                 "as on a CPU without AVX-512")),
             f"{result['n']} whitened {result['dataset']} training images (ZCA ε "
             f"{result['eps']:g}), K = {result['atoms']}, groups of {result['group_size']}, "
             f"density {result['density']:g}. Objective: mean ½‖x − Da‖² + λ₁‖a‖₁ + "
             f"λ_g Σ‖a_g‖₂ on {result['held_out']} held-out images, same encoder for every "
             "dictionary. Overlap: mean Jaccard of the units' supports at the stopping rule's "
             "last two checks; mask vs v0.1: mean Jaccard of each unit's connections with the "
             "v0.1 learner's.", "",
             "| learner | wall time (s) | passes | overlap at stop | held-out objective | "
             "mask vs v0.1 | speedup vs v0.1 |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ov = "-" if r.get("overlap") is None else f"{r['overlap']:.3f}"
        mv = "-" if r.get("mask_overlap_v01") is None else f"{r['mask_overlap_v01']:.3f}"
        sp = "-" if r.get("speedup") is None else f"{r['speedup']:.1f}x"
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r['passes']:.2f} | {ov} | "
                     f"{r['held_out_objective']:.4f} | {mv} | {sp} |")
    return "\n".join(lines)
