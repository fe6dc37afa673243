"""``bench kernels``, ``bench infer``, ``bench calibrate`` and the shipped prior of ``auto``.

* ``kernels``: forward and forward+backward median wall time and peak memory of
  ``StructLearnedLinear`` on every backend (``auto`` included, freshly calibrated), and with
  ``--peers`` of the peers (:mod:`.peers`), against ``nn.Linear`` timed interleaved on the same
  input, over a grid of shapes, densities, dtypes and block sizes.
* ``infer``: the deployment case — forward only, ``eval()`` and ``torch.inference_mode()``, at
  batch 1, 16 and 256 (default shape 4096 → 4096).
* ``calibrate``: ``auto``'s decisions for a grid of calls on this machine, measured (or read
  from the cache with ``--keep``) and printed.
* ``crossover``: ``auto``'s shipped prior from ``kernels`` JSON files, per instruction set.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..layers import StructLearnedLinear
from ..ops import auto, available_backends, calibrate
from . import peers
from .timing import command, header, machine, measure, paired_median_ms

CPU_SHAPES = [(256, 3072, 4096), (4096, 768, 3072)]  # (batch, in, out)
GPU_SHAPES = [(8192, 4096, 4096), (8192, 4096, 16384), (8192, 768, 3072)]
INFER_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (256, 4096, 4096)]
DENSITIES = [0.01, 0.02, 0.05, 0.10, 0.25, 0.50]
GPU_DENSITIES = [0.01, 0.02, 0.05, 0.10, 0.25]


def fresh_calibration() -> Path:
    """Point ``auto``'s calibration at an empty temporary folder for this run (so ``auto``
    rows measure what a first-time user gets, not decisions cached by earlier versions)."""
    calibrate.DIRECTORY = Path(tempfile.mkdtemp(prefix="structlearn-calibration-"))
    calibrate.clear()
    return calibrate.DIRECTORY


def _names(args, block, device) -> list[str]:
    usable = [n for n in available_backends(block, device) if n != "auto"]
    names = [n for n in usable if args.backends is None or n in args.backends]
    if args.backends is None or "auto" in args.backends:
        names.append("auto")
    return names


def _module(name: str, probe: StructLearnedLinear, block, device, dtype) -> nn.Module:
    if name.startswith("peer:"):
        return peers.build(name.removeprefix("peer:"), probe).to(device, dtype)
    return StructLearnedLinear(probe.in_features, probe.out_features, connectivity=probe.connectivity,
                               block=block, backend=name, device=device, dtype=dtype)


def _picked(device, dtype, block, shape, density) -> dict:
    """What ``auto`` decided for this call, in training and in inference."""
    return {mode: calibrate.recall(device, dtype, block, shape, density, mode == "train")
            for mode in ("train", "infer")}


def run_kernels(args) -> dict:
    device = torch.device(args.device)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    fresh_calibration()
    rows: list[dict] = []
    table_device = auto.table_device(device)
    print(f"{'(batch, in, out)':>22} {'dtype':>8} {'block':>5} {'density':>8} {'backend':>16} "
          f"{'fwd ms':>9} {'fwd+bwd':>9} {'fwd x':>8} {'f+b x':>8} {'peak MiB':>9} "
          f"{'bytes/dense':>7}")
    for dtype in dtypes:
        for batch, fin, fout in args.shapes:
            shape = (batch, fin, fout)
            torch.manual_seed(0)
            x = torch.randn(batch, fin, device=device, dtype=dtype)
            dense = nn.Linear(fin, fout, device=device, dtype=dtype)
            ref = measure(dense, dense, x, args.repeats)
            rows.append(_row(device, dtype, shape, 0, 1.0, "nn.Linear", ref, 1.0, table_device))
            peak = ref["peak_forward_backward_bytes"]
            for b in args.blocks:
                block = (b, b) if b else None
                if block and (fin % b or fout % b):
                    continue
                names = _names(args, block, device)
                if args.peers:
                    names += [f"peer:{p}" for p in peers.available(device, dtype, block)]
                for density in args.densities:
                    torch.manual_seed(0)
                    probe = StructLearnedLinear(fin, fout, density=density, block=block)
                    for name in names:
                        module = _module(name, probe, block, device, dtype)
                        m = measure(module, dense, x, args.repeats, peak)
                        if name == "auto":
                            m["auto_picked"] = _picked(device, dtype, block, shape, probe.density)
                        rows.append(_row(device, dtype, shape, b, density, name, m, probe.density,
                                         table_device))
    table, by_shape = update_tables(rows, auto.TABLE, auto.BY_SHAPE)
    return {"benchmark": "kernels", "machine": machine(), "repeats": args.repeats,
            "command": command(args), "crossover": table, "by_shape": by_shape, "rows": rows}


def _row(device, dtype, shape, block, density, backend, m, actual, table_device) -> dict:
    """One result row, printed as it is recorded. ``density`` is the nominal grid value;
    ``actual_density`` the layer's nnz / (in * out) (slightly above: fan-in is rounded up) —
    the crossover is stated in actual density."""
    row = {"device": device.type, "table_device": table_device,
           "dtype": str(dtype).removeprefix("torch."), "shape": list(shape), "block": block,
           "density": density, "actual_density": actual, "backend": backend, **m}
    print(f"{tuple(shape)!s:>22} {row['dtype']:>8} {block or '-':>5} {density:>7.2%} "
          f"{backend:>16} {m['forward_ms']:>9.2f} {m['forward_backward_ms']:>9.2f} "
          f"{m['baseline_forward_ms'] / m['forward_ms']:>7.2f}x "
          f"{m['baseline_forward_backward_ms'] / m['forward_backward_ms']:>7.2f}x "
          f"{m['peak_forward_backward_bytes'] / 2**20:>9.1f} "
          f"{m['param_bytes'] / m['baseline_param_bytes']:>7.3f} "
          f"{m['eval_param_bytes'] / m['baseline_param_bytes']:>7.3f}"
          + (f"  (auto: {m['auto_picked']})" if "auto_picked" in m else ""), flush=True)
    return row


def _picked_cell(r: dict) -> str:
    p = r.get("auto_picked")
    return f" ({p['train']} / {p['infer']})" if p else ""


def markdown(result: dict) -> str:
    """The BENCHMARKS.md section for one ``kernels`` result."""
    lines = [*header(result, True, f"median of {result['repeats']} runs"),
             "Speedups are against `nn.Linear` timed interleaved with each row (same input, "
             "same run). `auto` is calibrated afresh in the run (its pick for training / "
             "inference in brackets).", "",
             "Memory: peak = bytes the torch allocator held above the start during one "
             "forward+backward (vs `nn.Linear`'s in the same run); stored = parameters + every "
             "buffer (and the dense backend's kept weight) as a fraction of `nn.Linear`'s, in "
             "training mode / in eval mode.", "",
             "| device | dtype | (batch, in, out) | block | density | backend | fwd ms | fwd+bwd ms "
             "| fwd speedup | fwd+bwd speedup | peak MiB (fwd+bwd) | peak / dense "
             "| stored / dense: train / eval |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        base_peak = r.get("baseline_peak_forward_backward_bytes")
        lines.append(
            f"| {r['device']} | {r['dtype']} | {tuple(r['shape'])} | {r.get('block') or '-'} | "
            f"{'dense' if r['backend'] == 'nn.Linear' else format(r['density'], '.0%')} | "
            f"{r['backend']}{_picked_cell(r)} | {r['forward_ms']:.2f} | "
            f"{r['forward_backward_ms']:.2f} | "
            f"{r['baseline_forward_ms'] / r['forward_ms']:.2f}x | "
            f"{r['baseline_forward_backward_ms'] / r['forward_backward_ms']:.2f}x | "
            f"{r['peak_forward_backward_bytes'] / 2**20:.1f} | "
            + (f"{r['peak_forward_backward_bytes'] / base_peak:.2f} | " if base_peak else "- | ")
            + _stored(r))
    return "\n".join(lines)


def _stored(r: dict) -> str:
    """The row's 'stored / dense: train / eval' cell."""
    base = r.get("baseline_param_bytes")
    if not base:
        return "- |"
    cell = f"{r['param_bytes'] / base:.3f}"
    if "eval_param_bytes" in r:
        cell += f" / {r['eval_param_bytes'] / base:.3f}"
    return cell + " |"


# ---------------------------------------------------------------------------- inference
def run_infer(args) -> dict:
    """Forward only, in ``eval()`` under ``torch.inference_mode()``, against ``nn.Linear`` in
    the same mode, timed interleaved."""
    device = torch.device(args.device)
    fresh_calibration()
    rows = []
    print(f"{'(batch, in, out)':>22} {'density':>8} {'backend':>16} {'fwd ms':>9} "
          f"{'nn.Linear':>9} {'speedup':>8}")
    for batch, fin, fout in args.shapes:
        torch.manual_seed(0)
        x = torch.randn(batch, fin, device=device)
        dense = nn.Linear(fin, fout, device=device).eval()
        for density in args.densities:
            torch.manual_seed(0)
            probe = StructLearnedLinear(fin, fout, density=density)
            names = _names(args, None, device)
            if args.peers:
                names += [f"peer:{p}" for p in peers.available(device, torch.float32, None)]
            for name in names:
                module = _module(name, probe, None, device, torch.float32).eval()

                def fwd(m=module, x=x):
                    with torch.inference_mode():
                        m(x)

                def base(m=dense, x=x):
                    with torch.inference_mode():
                        m(x)

                ms, base_ms = paired_median_ms([fwd, base], device, args.repeats)
                row = {"device": device.type, "shape": [batch, fin, fout], "density": density,
                       "actual_density": probe.density, "backend": name, "forward_ms": ms,
                       "baseline_forward_ms": base_ms}
                if name == "auto":
                    row["auto_picked"] = _picked(device, torch.float32, None, (batch, fin, fout),
                                                 probe.density)["infer"]
                rows.append(row)
                print(f"{(batch, fin, fout)!s:>22} {density:>7.2%} {name:>16} {ms:>9.3f} "
                      f"{base_ms:>9.3f} {base_ms / ms:>7.2f}x"
                      + (f"  (auto: {row['auto_picked']})" if name == "auto" else ""), flush=True)
    return {"benchmark": "infer", "machine": machine(), "repeats": args.repeats,
            "command": command(args), "rows": rows}


def infer_markdown(result: dict) -> str:
    lines = [*header(result, True, f"median of {result['repeats']} runs"),
             "Forward only, the layer and `nn.Linear` in `eval()` under "
             "`torch.inference_mode()`, timed interleaved on the same input; `auto` calibrated "
             "afresh (its pick in brackets).", "",
             "| (batch, in, out) | density | backend | fwd ms | nn.Linear ms | speedup |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        pick = f" ({r['auto_picked']})" if r.get("auto_picked") else ""
        lines.append(f"| {tuple(r['shape'])} | {r['density']:.0%} | {r['backend']}{pick} | "
                     f"{r['forward_ms']:.3f} | {r['baseline_forward_ms']:.3f} | "
                     f"{r['baseline_forward_ms'] / r['forward_ms']:.2f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- calibration
def run_calibrate(args) -> dict:
    """``auto``'s decision for every (shape, density, block, mode) of the grid, measured now
    (unless ``--keep`` and already cached) into this machine's calibration file."""
    device = torch.device(args.device)
    calibrate.REPEATS = args.repeats
    rows = []
    print(f"{'(batch, in, out)':>22} {'block':>6} {'density':>8} {'mode':>6} {'picks':>12}  "
          "ms per backend")
    for batch, fin, fout in args.shapes:
        for b in args.blocks:
            block = (b, b) if b else None
            if block and (fin % b or fout % b):
                continue
            for density in args.densities:
                torch.manual_seed(0)
                layer = StructLearnedLinear(fin, fout, density=density, block=block,
                                            device=device)
                for mode in args.modes:
                    training = mode == "train"
                    shape = (batch, fin, fout)
                    if not args.keep:
                        calibrate.forget(device, torch.float32, block, shape, layer.density,
                                         training)
                    x = torch.randn(batch, fin, device=device, requires_grad=training)
                    layer.train(training)
                    with torch.set_grad_enabled(training):
                        layer(x)
                    entry = calibrate.entry(device, torch.float32, block, shape, layer.density,
                                            training)
                    rows.append({**entry, "shape": list(shape), "block": b, "density": density,
                                 "actual_density": layer.density, "mode": mode})
                    ms = "  ".join(f"{k} {v:.2f}" for k, v in entry["ms"].items())
                    print(f"{shape!s:>22} {b or '-':>6} {density:>7.2%} {mode:>6} "
                          f"{entry['backend']:>12}  {ms}", flush=True)
    return {"benchmark": "calibrate", "machine": machine(), "command": command(args),
            "cache_file": str(calibrate.cache_file(device)), "rows": rows}


def calibrate_markdown(result: dict) -> str:
    lines = [*header(result, True, "median of "
                     f"{calibrate.REPEATS} rounds per backend after a warm-up"),
             "`auto`'s decisions: every usable backend timed on the call (training: "
             "forward+backward; inference: forward under no grad) after an untimed warm-up, the "
             "fastest kept. A backend 3x slower than the best in the first timed round is not "
             "timed further (that round's time shown).", "",
             "| (batch, in, out) | block | density | mode | picks | ms per backend | "
             "dense / pick |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ms = ", ".join(f"{k} {v:.2f}" for k, v in r["ms"].items())
        ratio = r["ms"].get("dense", float("nan")) / r["ms"][r["backend"]]
        lines.append(f"| {tuple(r['shape'])} | {r['block'] or '-'} | {r['density']:.0%} | "
                     f"{r['mode']} | {r['backend']} | {ms} | {ratio:.2f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the prior
def crossover(rows: list[dict], table_device: str, dtype: str, block: int = 0,
              backend: str | None = None) -> dict[str, float | None]:
    """Per measured shape ``"BxIxO"``: the largest grid density up to which ``backend`` (default:
    the sparse kernel preferred for this device and block size) beat ``nn.Linear`` (fwd+bwd),
    for this table device (``cpu/<isa>``), dtype and block size (0: unstructured); None where
    it never did."""
    blk = (block, block) if block else None
    device = torch.device(table_device.split("/")[0])
    sparse = backend or auto.preferred_backend(device, blk)
    sel_all = [r for r in rows if r["table_device"] == table_device and r["dtype"] == dtype
               and r.get("block", 0) == block and r["backend"] == sparse]
    out = {}
    for shape in sorted({tuple(r["shape"]) for r in sel_all}):  # shapes measured for it
        sel = [r for r in sel_all if tuple(r["shape"]) == shape]
        best = 0.0
        for r in sorted(sel, key=lambda r: r["actual_density"]):
            if r["forward_backward_ms"] >= r["baseline_forward_backward_ms"]:
                break
            best = r["actual_density"]
        out["x".join(map(str, shape))] = best or None
    return out


def _table_entry(r: dict) -> tuple[str, str, int, bool] | None:
    """``(table_device, dtype, block, stand_in)`` of the prior's entry this row measures: rows
    of the preferred sparse kernel, and ``csr`` rows where ``csr`` may stand in for it
    (unstructured CPU layers without a compiler); None for other rows."""
    block = r.get("block", 0)
    blk = (block, block) if block else None
    preferred = auto.preferred_backend(torch.device(r["device"]), blk)
    if r["backend"] == preferred:
        return r["table_device"], r["dtype"], block, False
    if r["backend"] == auto.stand_in_for(preferred):
        return r["table_device"], r["dtype"], block, True
    return None


def update_tables(rows: list[dict], table: dict, by_shape: dict) -> tuple[dict, dict]:
    """Copies of the prior's tables with an entry for every (table device, dtype, block) whose
    sparse kernel was measured in ``rows`` (and a ``@csr`` entry where ``csr`` rows measure the
    stand-in); the others are kept."""
    table, by_shape = copy.deepcopy(table), copy.deepcopy(by_shape)
    measured = {e for e in map(_table_entry, rows) if e is not None}
    for dev, dtype, b, stand_in in sorted(measured):  # unmeasured entries keep shipped values
        shapes = crossover(rows, dev, dtype, b, "csr" if stand_in else None)
        k = auto.key(getattr(torch, dtype), (b, b) if b else None, stand_in)
        by_shape.setdefault(dev, {})[k] = shapes
        table.setdefault(dev, {})[k] = min((v or 0.0 for v in shapes.values()), default=0.0) or None
    return table, by_shape
