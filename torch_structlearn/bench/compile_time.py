"""A training step (forward + backward) of a converted timm model, eager against
``torch.compile``, with the dense model as the reference — and the time of the first compiled
call (the compile).

    structlearn bench compile-time [--model convnext_atto] [--kwargs '{"conv_mlp": false}']
        [--density 0.1] [--batch 8] [--size 224] [--steps 5] [--backend inductor]
        [--out benchmarks/compile-time-cpu.json]

Each configuration runs in a fresh subprocess (nothing compiled or calibrated before): the
model built with random weights, every ``nn.Linear`` converted by ``method='magnitude'`` (the
mask does not change the kernels' speed at a given density; no data is needed), then
``--steps`` timed steps after one warm-up (median). The compiled model is compiled *before* any
eager call of its layers, as a user would, with an empty inductor cache. Prints a table with the machine line, and the ops
that take a converted step's time eager and compiled (``torch.profiler``, self time per step,
``--steps`` more steps), and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..checks import arg_density, arg_positive
from ..convert import convert
from ..filesystem import write_json
from .timing import machine, machine_line, run_child


def child(cfg: dict) -> dict:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(cfg["model"], pretrained=False, **cfg["kwargs"]).train()
    if cfg["sparse"]:
        layers = convert(model, None, density=cfg["density"], method="magnitude", verbose=False)
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"])
    run = torch.compile(model, backend=cfg["backend"]) if cfg["compiled"] else model

    def step() -> float:
        t0 = time.perf_counter()
        run(x).float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    first = step()  # compile (compiled) or warm-up and calibration (eager)
    times = [step() for _ in range(cfg["steps"])]
    with torch.profiler.profile() as prof:  # where a step's time goes: self time per op
        for _ in range(cfg["steps"]):
            step()
    ops = {e.key: e.self_cpu_time_total / 1e3 / cfg["steps"] for e in prof.key_averages()}
    return {**cfg, "first_seconds": first, "step_seconds": statistics.median(times),
            "steps_seconds": times, "converted_layers": len(layers) if cfg["sparse"] else 0,
            "profile_ms_per_step": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structlearn bench compile-time",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="convnext_atto", help="timm model name")
    p.add_argument("--kwargs", type=json.loads, default={"conv_mlp": False},
                   help="timm.create_model keyword arguments as JSON (default: the MLPs as "
                        "nn.Linear layers, which convnext_atto makes 1x1 convolutions otherwise)")
    p.add_argument("--density", type=arg_density, default=0.1,
                   help="density of every converted layer")
    p.add_argument("--batch", type=arg_positive(int), default=8, help="images per step")
    p.add_argument("--size", type=arg_positive(int), default=224, help="image side")
    p.add_argument("--steps", type=arg_positive(int), default=5,
                   help="timed steps after the first call (the median kept)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--out", type=Path, default=Path("benchmarks/compile-time-cpu.json"),
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
    for sparse in (False, True):
        for compiled in (False, True):
            cfg = {"model": args.model, "kwargs": args.kwargs, "density": args.density,
                   "batch": args.batch, "size": args.size, "steps": args.steps,
                   "backend": args.backend, "sparse": sparse, "compiled": compiled}
            with tempfile.TemporaryDirectory() as cache:  # a cold compile: no inductor cache
                rows.append(run_child("compile-time", cfg,
                                      f"the {'compiled' if compiled else 'eager'} "
                                      f"{'converted' if sparse else 'dense'} run",
                                      env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}))
            print(f"{'converted' if sparse else 'dense':<10} {'compiled' if compiled else 'eager':<9}"
                  f" step {rows[-1]['step_seconds']:7.3f} s   first call "
                  f"{rows[-1]['first_seconds']:7.1f} s", flush=True)
    by = {(r["sparse"], r["compiled"]): r for r in rows}
    lines = [f"| {args.model} {args.kwargs}, batch {args.batch}×{args.size}², density "
             f"{args.density:g} | eager step | compiled step ({args.backend}) | compiled / eager "
             "| first compiled call |", "|---|---|---|---|---|"]
    for sparse, name in ((False, "dense (nn.Linear)"), (True, "converted")):
        e, c = by[(sparse, False)], by[(sparse, True)]
        lines.append(f"| {name} | {e['step_seconds']:.3f} s | {c['step_seconds']:.3f} s | "
                     f"{c['step_seconds'] / e['step_seconds']:.2f} | {c['first_seconds']:.0f} s |")
    print("\n" + "\n".join(lines))
    # the ops that take most of a converted step, eager against compiled (profiled steps)
    e, c = (by[(True, False)]["profile_ms_per_step"], by[(True, True)]["profile_ms_per_step"])
    top = sorted({*list(e)[:6], *list(c)[:6]}, key=lambda k: -max(e.get(k, 0), c.get(k, 0)))
    print("\n| op (converted model, self time per step) | eager | compiled |\n|---|---|---|")
    for k in top:
        print(f"| `{k[:60]}` | {e.get(k, 0):.1f} ms | {c.get(k, 0):.1f} ms |")
    write_json(args.out, {"command": "structlearn bench compile-time "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
                          "machine": m, "rows": rows})
    print(f"wrote {args.out}")
    return 0

