"""Experiment 2 — density sweep: learned connectivity against random (same per-unit fan-in),
random-local, a sparsifying RBM, SNIP, SynFlow, dynamic sparse training (RigL, SET, and RigL
started from the learned structure) and dense, 3 seeds, one training recipe.

    python recipes/exp_density.py --dataset mnist --quick     # 2-core CPU, < 20 min
    python recipes/exp_density.py --dataset cifar10           # full setting (GPU)

Network: whitened image → sparse layer (K units) → ReLU → L2 group pooling → linear head.
Learned = structure from group sparse coding on the unlabelled training images + dictionary
init; every other structure starts from the per-unit Kaiming init. ``rigl`` and ``set`` start
from the random structure and update it while training (``DynamicSparsity``, the papers'
settings: ΔT 100 steps, fraction 0.3 cosine-decayed to 0 at 75 % of training; SET's constant
fraction is replaced by the same schedule so that only the growth rule differs);
``learned-rigl`` starts RigL from the learned structure and its dictionary init;
``dense-params`` is a dense layer with as many weights as the sparse one (``density·K`` units,
rounded to a multiple of the group size), the same-parameter-count baseline. Writes
runs/repro/density-<dataset>[-quick].json (``--resume``: see common.checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import random_local, rbm_mask, snip_mask, synflow_mask  # noqa: E402
from common import (  # noqa: E402
    add_args,
    checkpoint,
    done,
    dynamic_fit,
    finish,
    network,
    seed_range,
    setup,
    train_eval,
)

from torch_structlearn import Connectivity, learn_structure  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.learn import dictionary_values  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, resumable=True)
    p.add_argument("--densities", type=_density, nargs="+", default=[0.01, 0.02, 0.05, 0.10, 0.25])
    methods = ["learned", "random", "random-local", "rbm", "snip", "synflow", "rigl", "set",
               "learned-rigl", "dense-params"]
    p.add_argument("--methods", nargs="+", choices=methods, default=methods)
    args = p.parse_args(argv)
    cfg = setup(args, "density")
    K, d, n_classes, splits = cfg["K"], cfg["d"], cfg["n_classes"], cfg["splits"]
    Xtr, ytr = splits[0]

    def dense_builder():
        return network(None, d, K, args.group_size, n_classes, dense=True)

    rows = list(cfg["done"])  # those an interrupted run saved (--resume)

    def run(method, density, seed, conn=None, values=None, dense=False, dynamic=None, width=K):
        torch.manual_seed(seed)
        model = network(conn, d, width, args.group_size, n_classes, values=values, dense=dense)
        fit = cfg["fit"] if dynamic is None else dynamic_fit(cfg["fit"], model, dynamic, seed)
        r = train_eval(model, splits, seed=seed, **fit)
        rows.append({"method": method, "density": density, "seed": seed, "width": width,
                     "actual_density": width / K if dense else conn.density, **r})
        print(f"{method:>13} {density:>6.2%} seed {seed}: val {r['val_accuracy']:.4f} "
              f"test {r['test_accuracy']:.4f}", flush=True)
        checkpoint("density", args, cfg, rows)

    for seed in seed_range(args):
        if not done(rows, method="dense", seed=seed):
            run("dense", 1.0, seed, dense=True)
        if any(m in args.methods and not all(done(rows, method=m, density=r, seed=seed)
                                             for r in args.densities)
               for m in ("learned", "learned-rigl")):
            # one dictionary per seed; each density reads its own mask
            _, D, _ = learn_structure(cfg["loader"], K, density=args.densities[0],
                                      group_size=args.group_size, epochs=cfg["dict_epochs"],
                                      seed=seed, verbose=False, **cfg["learn_kw"])
        for density in args.densities:
            for method in args.methods:
                if done(rows, method=method, density=density, seed=seed):
                    continue
                if method == "learned":
                    conn = Connectivity.from_scores(D.T, density, "per_unit")
                    run(method, density, seed, conn, dictionary_values(D, conn))
                elif method == "random":
                    run(method, density, seed, Connectivity.random((K, d), density=density, seed=seed))
                elif method in ("rigl", "set"):
                    run(method, density, seed, Connectivity.random((K, d), density=density,
                                                                   seed=seed), dynamic=method)
                elif method == "learned-rigl":
                    conn = Connectivity.from_scores(D.T, density, "per_unit")
                    run(method, density, seed, conn, dictionary_values(D, conn), dynamic="rigl")
                elif method == "dense-params":  # dense, as many first-layer weights
                    width = max(args.group_size, round(density * K / args.group_size) * args.group_size)
                    run(method, density, seed, dense=True, width=width)
                elif method == "random-local":
                    run(method, density, seed, random_local(K, cfg["image_shape"], density, seed))
                elif method == "rbm":
                    run(method, density, seed, rbm_mask(Xtr, K, density, seed=seed))
                elif method == "snip":
                    run(method, density, seed, snip_mask(dense_builder, Xtr, ytr, density, seed))
                elif method == "synflow":
                    run(method, density, seed, synflow_mask(dense_builder, d, density, seed))
    finish("density", args, cfg, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
