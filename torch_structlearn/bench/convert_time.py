"""How long converting a timm model takes, and its peak memory, by method — against the time of
one forward pass over the same calibration images.

    structlearn bench convert-time [--models deit_tiny_patch16_224 convnext_atto ...]
        [--methods refit sparsegpt wanda] [--density 0.1] [--calib 128]
        [--out benchmarks/convert-time-cpu.json]

Each (model, method) runs in a fresh subprocess (peak resident memory from ``getrusage``, the
model built alone as the baseline), on random-initialised weights (timing does not depend on
training; no weights can be downloaded here) and ``--calib`` random 224×224 images, every
``nn.Linear`` converted (convnext_atto built with ``conv_mlp=False``, so that its MLPs are
``nn.Linear`` layers). Prints a table with the machine line and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from ..checks import arg_density, arg_positive
from ..convert import convert
from ..filesystem import write_json
from .timing import machine

MODELS = ["deit_tiny_patch16_224", "convnext_atto", "resmlp_12_224", "mixer_s16_224",
          "swin_tiny_patch4_window7_224"]
# convnext_atto makes its MLPs 1x1 convolutions unless asked for nn.Linear (24 layers + head)
KWARGS = {"convnext_atto": {"conv_mlp": False}}


def child(model_name: str, method: str, density: float, calib: int) -> dict:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, **KWARGS.get(model_name, {})).eval()
    X = torch.rand(calib, 3, 224, 224)
    loader = [(b,) for b in X.split(32)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"model": model_name, "method": method}
    if method == "forward":
        t0 = time.perf_counter()
        with torch.no_grad():
            for (b,) in loader:
                model(b)
        out["seconds"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        report = convert(model, loader, density=density, method=method, verbose=False)
        out["seconds"] = time.perf_counter() - t0
        out["layers"] = len(report)
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["baseline_mib"] = base / 1024
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structlearn bench convert-time",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, help="timm model names")
    p.add_argument("--methods", nargs="+", default=["refit", "sparsegpt", "wanda"],
                   choices=["refit", "sparsegpt", "wanda", "magnitude", "dictionary"],
                   help="convert methods timed")
    p.add_argument("--density", type=arg_density, default=0.1,
                   help="density of every converted layer")
    p.add_argument("--calib", type=arg_positive(int), default=128,
                   help="calibration images (random, 224x224)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/convert-time-cpu.json"),
                   help="result file")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], float(args.child[2]), int(args.child[3]))))
        return 0
    m = machine()
    head = f"{m['cpu']} ({' '.join(m['cpu_flags'])}), {m['threads']} threads, torch {m['torch']}"
    print(head)
    rows = []
    for model in args.models:
        for method in ["forward", *args.methods]:
            r = subprocess.run([sys.executable, "-m", "torch_structlearn.bench", "convert-time",
                                "--child", model, method,
                                str(args.density), str(args.calib)],
                               capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"{model:<30} {method:<10} {rows[-1]['seconds']:8.1f} s  "
                  f"peak {rows[-1]['peak_mib']:7.0f} MiB (model alone {rows[-1]['baseline_mib']:.0f})",
                  flush=True)
    lines = [f"| model | forward over {args.calib} images | "
             + " | ".join(f"`{mt}`" for mt in args.methods) + " |",
             "|---|---|" + "---|" * len(args.methods)]
    for model in args.models:
        got = {r["method"]: r for r in rows if r["model"] == model}
        f = got["forward"]["seconds"]
        cells = [f"{got[mt]['seconds']:.1f} s ({got[mt]['seconds'] / f:.1f}×), "
                 f"{got[mt]['peak_mib']:.0f} MiB" for mt in args.methods]
        lines.append(f"| {model} | {f:.1f} s, {got['forward']['peak_mib']:.0f} MiB | "
                     + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    write_json(args.out, {"command": "structlearn bench convert-time "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
                          "machine": m, "density": args.density,
                          "calibration_images": args.calib, "rows": rows})
    print(f"wrote {args.out}")
    return 0

