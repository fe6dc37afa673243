"""``bench overhead``: is ``backend='auto'`` ever slower than ``nn.Linear``? And what does a call
cost around the kernel?

* **grid**: per layer ``(in, out)``, batch and density, a ``StructLearnedLinear`` with
  ``backend='auto'`` (calibrated afresh) against ``nn.Linear`` of the same shape, timed
  interleaved (``--runs`` runs of enough calls to last ~2 ms each; the median per call):
  inference (``eval()`` under ``torch.inference_mode()``) at every batch, and forward +
  backward (``train()``, an input that needs its gradient) at the training batches. A cell
  passes when ``auto`` is at least 0.95x as fast as ``nn.Linear`` or within 2 µs of it; the
  worst ratio is printed. Training cells also time ``nn.Linear`` under the layer's mask
  through ``torch.nn.utils.prune`` (``masked``): what masked training costs on dense kernels.
* **fixed cost**: at batch 1, the ``cpu`` kernel alone (its checked-once runner: the output's
  allocation and the foreign call, nothing else) against the layer on ``cpu``, ``dense`` and
  ``auto``, in inference and with autograd (forward only): the difference is what the layer
  adds around the kernel.
* **mlp**: a 784-512-512-10 MLP converted to 10 % (``auto``) against the dense one, answering
  one request (batch 1) and a batch of 64.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune

from ..convert import convert
from ..layers import StructLearnedLinear
from ..ops import calibrate
from ..ops import cpu as cpu_backend
from .kernels import fresh_calibration
from .timing import command, header, machine

__all__ = ["LAYERS", "BATCHES", "DENSITIES", "TRAIN_BATCHES", "run_overhead", "overhead_markdown"]

LAYERS = [(256, 256), (512, 512), (784, 512), (1024, 1024), (768, 3072), (4096, 4096)]
BATCHES = [1, 8, 64, 512, 4096]
TRAIN_BATCHES = [64, 512, 4096]
DENSITIES = [0.01, 0.05, 0.10, 0.25, 0.50]
MAX_WORK = 2**31  # batch * in * out above this is left out (a 4096 x 4096 GEMM at batch 4096)
FIXED = [(512, 512, 0.10), (784, 512, 0.10), (4096, 4096, 0.05)]
SLACK_US, SLACK_RATIO = 2.0, 0.95  # the target: >= 0.95x nn.Linear, or within 2 µs of it


def _per_call_us(fns, runs: int) -> list[float]:
    """Median µs per call of each function, interleaved: each run calls every function in turn
    ``k`` times, ``k`` sized so that the slowest single call's run lasts ~2 ms."""
    for fn in fns:  # warm-up (and plans, allocations)
        fn()
        fn()
    single = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        single.append(time.perf_counter() - t0)
    k = max(1, min(2000, math.ceil(2e-3 / max(max(single), 1e-7))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            ts.append((time.perf_counter() - t0) / k * 1e6)
    return [statistics.median(ts) for ts in times]


def _step(module: nn.Module, x: torch.Tensor, training: bool):
    if not training:
        def infer():
            with torch.inference_mode():
                module(x)
        return infer
    xg = x.detach().clone().requires_grad_()
    gy = torch.randn(x.shape[0], module.out_features)

    def train():
        module.zero_grad(set_to_none=True)
        xg.grad = None
        module(xg).backward(gy)
    return train


def _masked(linear: nn.Linear, layer: StructLearnedLinear) -> nn.Linear:
    """A copy of ``linear`` trained under ``layer``'s mask the way PyTorch offers it
    (``torch.nn.utils.prune``: ``weight = weight_orig * mask`` on every forward) — what masked
    training costs on dense kernels."""
    masked = copy.deepcopy(linear)
    prune.custom_from_mask(masked, "weight", layer.connectivity.to_mask().to(torch.float32))
    return masked


def _passes(auto_us: float, linear_us: float) -> bool:
    return auto_us <= linear_us / SLACK_RATIO or auto_us - linear_us <= SLACK_US


def _grid(args) -> list[dict]:
    rows = []
    print(f"{'(in, out)':>13} {'batch':>6} {'density':>8} {'mode':>6} {'nn.Linear µs':>13} "
          f"{'auto µs':>10} {'ratio':>7} {'masked µs':>10}  pick")
    for fin, fout in args.layers:
        for mode in ("infer", "train"):
            training = mode == "train"
            for batch in (args.train_batches if training else args.batches):
                if batch * fin * fout > args.max_work:
                    continue
                torch.manual_seed(0)
                x = torch.randn(batch, fin)
                linear = nn.Linear(fin, fout).train(training)
                for density in args.densities:
                    torch.manual_seed(0)
                    layer = StructLearnedLinear(fin, fout, density=density).train(training)
                    steps = [_step(linear, x, training), _step(layer, x, training)]
                    if training:  # the floor of masked training: nn.Linear under a prune mask
                        steps.append(_step(_masked(linear, layer), x, training))
                    lin_us, auto_us, *masked = _per_call_us(steps, args.runs)
                    pick = calibrate.recall(torch.device("cpu"), torch.float32, None,
                                            (batch, fin, fout), layer.density, training)
                    row = {"in": fin, "out": fout, "batch": batch, "density": density,
                           "mode": mode, "linear_us": lin_us, "auto_us": auto_us,
                           "ratio": lin_us / auto_us, "passes": _passes(auto_us, lin_us),
                           "auto_picked": pick}
                    if masked:
                        row["masked_us"] = masked[0]
                    rows.append(row)
                    print(f"{str((fin, fout)):>13} {batch:>6} {density:>7.0%} {mode:>6} "
                          f"{lin_us:>13.1f} {auto_us:>10.1f} {row['ratio']:>6.2f}x "
                          f"{masked[0] if masked else float('nan'):>10.1f}  {pick}"
                          + ("" if row["passes"] else "  <- slower"), flush=True)
    return rows


def _fixed(args) -> list[dict]:
    """Batch 1: the kernel alone against the layer around it."""
    rows = []
    kernels = cpu_backend.kernels() if cpu_backend.available() else None
    print(f"\n{'(in, out)':>13} {'density':>8} {'grad':>5} {'kernel µs':>10} {'cpu µs':>8} "
          f"{'dense µs':>9} {'auto µs':>8} {'nn.Linear µs':>13} {'fixed µs':>9}")
    for fin, fout, density in args.fixed:
        torch.manual_seed(0)
        x = torch.randn(1, fin)
        linear = nn.Linear(fin, fout)
        layers = {b: StructLearnedLinear(fin, fout, density=density, backend=b)
                  for b in ("cpu", "dense", "auto")}
        for b in ("dense", "auto"):
            layers[b].copy_csr_values_(layers["cpu"].csr_values().detach())
        for grad in (False, True):
            xg = x.clone().requires_grad_(grad)
            ctx = torch.enable_grad if grad else torch.inference_mode
            fns = []
            if kernels is not None:
                L = layers["cpu"]
                run = kernels.forward_runner(L.values.detach(), L.crow_indices, L.col_indices,
                                             L.bias.detach(), fin)
                fns.append(lambda run=run, x=x: run(x))
            for m in (*layers.values(), linear):
                def call(m=m, ctx=ctx, xg=xg):
                    with ctx():
                        m(xg)
                fns.append(call)
            us = _per_call_us(fns, args.runs)
            kernel_us = us.pop(0) if kernels is not None else float("nan")
            row = {"in": fin, "out": fout, "density": density, "grad": grad,
                   "kernel_us": kernel_us, "cpu_us": us[0], "dense_us": us[1], "auto_us": us[2],
                   "linear_us": us[3], "fixed_us": us[0] - kernel_us}
            rows.append(row)
            print(f"{str((fin, fout)):>13} {density:>7.0%} {str(grad):>5} {kernel_us:>10.1f} "
                  f"{us[0]:>8.1f} {us[1]:>9.1f} {us[2]:>8.1f} {us[3]:>13.1f} "
                  f"{row['fixed_us']:>9.1f}", flush=True)
    return rows


def _mlp(args) -> list[dict]:
    """A converted 784-512-512-10 MLP (10 %, auto) against the dense one."""
    rows = []
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).eval()
    sparse = copy.deepcopy(dense)
    convert(sparse, None, density=0.10, method="magnitude", exclude="4", verbose=False)
    print(f"\n{'MLP 784-512-512-10, 10 %':>26} {'batch':>6} {'dense µs':>9} {'converted µs':>13} "
          f"{'ratio':>7}")
    for batch in (1, 64):
        x = torch.randn(batch, 784)
        fns = []
        for m in (dense, sparse):
            def call(m=m, x=x):
                with torch.inference_mode():
                    m(x)
            fns.append(call)
        d_us, s_us = _per_call_us(fns, args.runs)
        rows.append({"batch": batch, "dense_us": d_us, "converted_us": s_us,
                     "ratio": d_us / s_us})
        print(f"{'':>26} {batch:>6} {d_us:>9.1f} {s_us:>13.1f} {d_us / s_us:>6.2f}x", flush=True)
    return rows


def run_overhead(args) -> dict:
    """The three tables (printed as they are measured) and the worst ratio of the grid."""
    fresh_calibration()
    grid = _grid(args)
    worst = min(grid, key=lambda r: r["ratio"]) if grid else None
    failing = [r for r in grid if not r["passes"]]
    if worst is not None:
        print(f"\nworst ratio: {worst['ratio']:.2f}x at {(worst['in'], worst['out'])}, batch "
              f"{worst['batch']}, {worst['density']:.0%}, {worst['mode']} "
              f"({worst['auto_us']:.1f} µs against {worst['linear_us']:.1f}); "
              f"{len(failing)} of {len(grid)} cells miss the target "
              f"(>= {SLACK_RATIO}x or within {SLACK_US:g} µs)")
    fixed = _fixed(args)
    mlp = _mlp(args)
    return {"benchmark": "overhead", "machine": machine(), "runs": args.runs,
            "command": command(args), "rows": grid, "fixed": fixed, "mlp": mlp,
            "worst": worst, "failing": len(failing)}


def overhead_markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [*header(result, False, f"median of {result['runs']} interleaved runs per cell"),
             "`auto` (calibrated afresh) against `nn.Linear` of the same shape: inference is "
             "`eval()` under `torch.inference_mode()`, training is forward + backward with an "
             "input that needs its gradient. Ratio = `nn.Linear` time / `auto` time (above 1: "
             "`auto` faster). Target: every cell ≥ 0.95x or within 2 µs.", ""]
    w = result.get("worst")
    if w:
        lines += [f"**Worst cell: {w['ratio']:.2f}x** — ({w['in']}, {w['out']}), batch "
                  f"{w['batch']}, {w['density']:.0%}, {w['mode']}: {w['auto_us']:.1f} µs against "
                  f"{w['linear_us']:.1f} µs; {result['failing']} of {len(rows)} cells miss the "
                  "target.", ""]
    densities = sorted({r["density"] for r in rows})
    lines += ["| (in, out) | batch | mode | nn.Linear µs | " +
              " | ".join(f"auto {d:.0%}" for d in densities) + " |",
              "|---|---|---|---|" + "---|" * len(densities)]
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["in"], r["out"], r["batch"], r["mode"]), {})[r["density"]] = r
    for (fin, fout, batch, mode), by_d in cells.items():
        lin = statistics.median(r["linear_us"] for r in by_d.values())
        parts = []
        for d in densities:
            r = by_d.get(d)
            parts.append("" if r is None else
                         f"{r['ratio']:.2f}x {r['auto_picked'] or ''}" + ("" if r["passes"] else " ✗"))
        lines.append(f"| ({fin}, {fout}) | {batch} | {mode} | {lin:.1f} | " + " | ".join(parts) + " |")
    lines += ["", "Batch 1, what a call costs around the kernel (`kernel`: the `cpu` kernel's "
              "checked-once runner alone — the output's allocation and the foreign call; "
              "`fixed` = layer on `cpu` − kernel; *grad*: forward with autograd recording):", "",
              "| (in, out) | density | grad | kernel µs | cpu µs | dense µs | auto µs | "
              "nn.Linear µs | fixed µs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["fixed"]:
        lines.append(f"| ({r['in']}, {r['out']}) | {r['density']:.0%} | {r['grad']} | "
                     f"{r['kernel_us']:.1f} | {r['cpu_us']:.1f} | {r['dense_us']:.1f} | "
                     f"{r['auto_us']:.1f} | {r['linear_us']:.1f} | {r['fixed_us']:.1f} |")
    lines += ["", "A 784-512-512-10 MLP converted to 10 % (`method='magnitude'`, last layer "
              "kept dense; `auto`) against the dense MLP, inference:", "",
              "| batch | dense µs | converted µs | ratio |", "|---|---|---|---|"]
    for r in result["mlp"]:
        lines.append(f"| {r['batch']} | {r['dense_us']:.1f} | {r['converted_us']:.1f} | "
                     f"{r['ratio']:.2f}x |")
    return "\n".join(lines)
