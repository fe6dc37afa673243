"""How long converting a model takes, and its peak memory, by method — against the time of one
forward pass over the same calibration data.

    structlearn bench convert-time [--models deit_tiny_patch16_224 linear:8192,8192
        mlp:2048,8192,2048 ...] [--methods refit sparsegpt wanda] [--density 0.1]
        [--pattern 2:4] [--calib 128] [--out benchmarks/convert-time-cpu.json]

Each (model, method) runs in a fresh subprocess (peak resident memory from ``getrusage``; the
model and its calibration data built alone are the baseline, so *above model* is what the
conversion adds), on random-initialised weights (timing does not depend on training; no
weights can be downloaded here). A timm name gets ``--calib`` random 224×224 images, every
``nn.Linear`` converted (convnext_atto built with ``conv_mlp=False``, so that its MLPs are
``nn.Linear`` layers); ``linear:IN,OUT`` is one ``nn.Linear`` and ``mlp:A,B,C`` a
transformer's MLP block (``Linear(A, B) → GELU → Linear(B, C)``), each given ``--calib``
Gaussian input rows. Prints a table with the machine line and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from ..checks import arg_density, arg_positive
from ..convert import convert
from ..filesystem import write_json
from .timing import machine, machine_line, run_child

MODELS = ["deit_tiny_patch16_224", "convnext_atto", "resmlp_12_224", "mixer_s16_224",
          "swin_tiny_patch4_window7_224"]
# convnext_atto makes its MLPs 1x1 convolutions unless asked for nn.Linear (24 layers + head)
KWARGS = {"convnext_atto": {"conv_mlp": False}}


def _build(spec: str, calib: int):
    """``(model, loader)`` of a model spec (module docstring)."""
    import torch
    from torch import nn

    kind, _, sizes = spec.partition(":")
    if kind in ("linear", "mlp"):
        dims = [int(v) for v in sizes.split(",")]
        if kind == "linear":
            model = nn.Sequential(nn.Linear(*dims))
        else:
            model = nn.Sequential(nn.Linear(dims[0], dims[1]), nn.GELU(), nn.Linear(dims[1], dims[2]))
        X = torch.randn(calib, dims[0])
        return model.eval(), [(b,) for b in X.split(256)]
    import timm

    model = timm.create_model(spec, pretrained=False, **KWARGS.get(spec, {})).eval()
    X = torch.rand(calib, 3, 224, 224)
    return model, [(b,) for b in X.split(32)]


def child(cfg: dict) -> dict:
    import torch

    torch.manual_seed(0)
    model, loader = _build(cfg["model"], cfg["calib"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"model": cfg["model"], "method": cfg["method"], "pattern": cfg["pattern"]}
    if cfg["method"] == "forward":
        t0 = time.perf_counter()
        with torch.no_grad():
            for (b,) in loader:
                model(b)
        out["seconds"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        report = convert(model, loader, density=cfg["density"], method=cfg["method"],
                         pattern=cfg["pattern"], verbose=False)
        out["seconds"] = time.perf_counter() - t0
        out["layers"] = len(report)
        out["output_error"] = [r.get("output_error") for r in report]
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["baseline_mib"] = base / 1024
    out["above_model_mib"] = out["peak_mib"] - out["baseline_mib"]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structlearn bench convert-time",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS,
                   help="timm model names, linear:IN,OUT or mlp:A,B,C")
    p.add_argument("--methods", nargs="+", default=["refit", "sparsegpt", "wanda"],
                   choices=["refit", "sparsegpt", "wanda", "magnitude", "dictionary"],
                   help="convert methods timed")
    p.add_argument("--density", type=arg_density, default=0.1,
                   help="density of every converted layer")
    p.add_argument("--calib", type=arg_positive(int), default=128,
                   help="calibration examples (random 224x224 images, or input rows)")
    p.add_argument("--pattern", default=None, help="the masks' pattern (2:4, 4x4; default: "
                                                   "unstructured)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/convert-time-cpu.json"),
                   help="result file")
    p.add_argument("--child", type=json.loads, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    m = machine()
    print(machine_line(m))
    rows = []
    for model in args.models:
        for method in ["forward", *args.methods]:
            cfg = {"model": model, "method": method, "density": args.density,
                   "calib": args.calib, "pattern": args.pattern}
            rows.append(run_child("convert-time", cfg, f"{model} {method}"))
            print(f"{model:<30} {method:<10} {rows[-1]['seconds']:8.1f} s  "
                  f"peak {rows[-1]['peak_mib']:7.0f} MiB (model alone {rows[-1]['baseline_mib']:.0f}"
                  f", above it {rows[-1]['above_model_mib']:.0f})", flush=True)
    lines = [f"| model | forward over {args.calib} examples (model + data) | "
             + " | ".join(f"`{mt}`" for mt in args.methods) + " |",
             "|---|---|" + "---|" * len(args.methods)]
    for model in args.models:
        got = {r["method"]: r for r in rows if r["model"] == model}
        f = got["forward"]["seconds"]
        cells = [f"{got[mt]['seconds']:.1f} s ({got[mt]['seconds'] / f:.1f}×), "
                 f"+{got[mt]['above_model_mib']:.0f} MiB" for mt in args.methods]
        lines.append(f"| {model} | {f:.1f} s, {got['forward']['baseline_mib']:.0f} MiB | "
                     + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    write_json(args.out, {"command": "structlearn bench convert-time "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
                          "machine": m, "density": args.density, "pattern": args.pattern,
                          "calibration_images": args.calib, "rows": rows})
    print(f"wrote {args.out}")
    return 0

