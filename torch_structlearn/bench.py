"""Benchmarks: ``python -m torch_structlearn.bench [kernels] [--device cpu|cuda] ...``.

``kernels``: forward and forward+backward median wall time and peak memory of
``StructLearnedLinear`` (every backend: the sparse kernels, ``dense`` = masked dense weight,
``torch_sparse`` when installed) against dense ``nn.Linear`` on the same input, over a grid of
densities, shapes, dtypes and block sizes (``--blocks 0 32``: unstructured and 32x32 blocks).
Prints a table, writes JSON, optionally rewrites the ``auto`` crossover table
(``--write-crossover``) and the matching section of ``BENCHMARKS.md`` (``--markdown``).
``mlp``: one training epoch (forward, backward, SGD step) of a sparse MLP against the same MLP
with ``nn.Linear`` layers, wall time and peak memory of one step; ``mlp --hub NAME`` does the
same for a hub entry's model (e.g. the learned CIFAR-10 stack) against its dense copy.

Peak memory is what the torch allocator holds above the starting point during one step
(CPU: from the profiler's allocation events; CUDA: ``max_memory_allocated``). Buffers that MKL
allocates internally are not seen by the torch allocator and so are not counted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler quiet

import torch  # noqa: E402
from torch import nn  # noqa: E402

from . import StructLearnedLinear  # noqa: E402
from ._files import write_atomic as _write_atomic  # noqa: E402
from ._files import write_json as _write_json  # noqa: E402
from .cli import _density, _nonnegative, _positive  # noqa: E402
from .ops import BACKENDS, auto, available_backends  # noqa: E402

CPU_SHAPES = [(256, 3072, 4096), (4096, 768, 3072)]  # (batch, in, out)
GPU_SHAPES = [(8192, 4096, 4096), (8192, 4096, 16384), (8192, 768, 3072)]
DENSITIES = [0.01, 0.02, 0.05, 0.10, 0.25, 0.50]
GPU_DENSITIES = [0.01, 0.02, 0.05, 0.10, 0.25]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _paired_median_ms(fns, device, repeats: int) -> list[float]:
    """Median wall time of each function, run interleaved (a, b, a, b, ...) so that a slow
    moment of a shared machine hits the candidate and its baseline alike."""
    for fn in fns:
        fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=False):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def _peak_bytes(fn, device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _steps(module: nn.Module, x: torch.Tensor):
    """``fwd``, ``fwd_bwd`` (which first drops the gradients) and ``clear`` (drops them)."""
    xg = x.detach().clone().requires_grad_()
    gy = torch.randn(x.shape[0], module.out_features, device=x.device, dtype=x.dtype)

    def fwd():
        with torch.no_grad():
            module(x)

    def clear():
        module.zero_grad(set_to_none=True)
        xg.grad = None

    def fwd_bwd():
        clear()
        module(xg).backward(gy)

    return fwd, fwd_bwd, clear


def _peak_of_step(step, clear, device) -> int:
    """Peak bytes above the start of one ``step``, the gradients dropped *before* the start (so
    freeing the previous step's gradients inside the step cannot hide the new ones)."""
    clear()
    return _peak_bytes(step, device)


def _measure(module: nn.Module, baseline: nn.Module, x: torch.Tensor, repeats: int,
             baseline_peak: int | None = None) -> dict:
    """Times of ``module`` and, interleaved with it, of ``baseline`` on the same input."""
    device = x.device
    fwd, fwd_bwd, clear = _steps(module, x)
    bfwd, bfwd_bwd, bclear = _steps(baseline, x)
    f, bf = _paired_median_ms([fwd, bfwd], device, repeats)
    fb, bfb = _paired_median_ms([fwd_bwd, bfwd_bwd], device, repeats)
    return {
        "forward_ms": f, "forward_backward_ms": fb,
        "baseline_forward_ms": bf, "baseline_forward_backward_ms": bfb,
        "peak_forward_backward_bytes": _peak_of_step(fwd_bwd, clear, device),
        "baseline_peak_forward_backward_bytes": baseline_peak or _peak_of_step(bfwd_bwd, bclear, device),
        "param_bytes": _state_bytes(module),
        "eval_param_bytes": _state_bytes(module, training=False),
        "baseline_param_bytes": _state_bytes(baseline),
    }


def _state_bytes(module: nn.Module, training: bool = True) -> int:
    """Bytes the module keeps in training (or eval) mode: parameters and every buffer
    (structure and the caches that mode holds)."""
    was = module.training
    module.train(training)
    n = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    module.train(was)
    return n


def _command(args) -> str:
    """The command line that ran this benchmark, as recorded next to its numbers."""
    return shlex.join(["python", "-m", "torch_structlearn.bench", *args.argv])


def _header(result: dict, show_gpu: bool, tail: str) -> list[str]:
    """The ``Command:`` and ``Machine:`` lines every BENCHMARKS.md section starts with."""
    m = result["machine"]
    return [f"Command: `{result['command']}`  ",
            f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}"
            + (f", GPU {m['gpu']}" if show_gpu and "gpu" in m else "") + f"; {tail}.  "]


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def crossover(rows: list[dict], device: str, dtype: str, block: int = 0,
              backend: str | None = None) -> dict[str, float | None]:
    """Per measured shape ``"BxIxO"``: the largest grid density up to which ``backend`` (default:
    the sparse kernel preferred for this device and block size) beat ``nn.Linear`` (fwd+bwd),
    for this dtype and block size (0: unstructured); None where it never did."""
    blk = (block, block) if block else None
    sparse = backend or auto.preferred_backend(torch.device(device), blk)
    sel_all = [r for r in rows if r["device"] == device and r["dtype"] == dtype
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
    """``(device, dtype, block, stand_in)`` of the ``auto`` entry this row measures: rows of the
    preferred sparse kernel, and ``csr`` rows where ``csr`` may stand in for it (unstructured
    CPU layers without a compiler); None for other rows."""
    block = r.get("block", 0)
    blk = (block, block) if block else None
    preferred = auto.preferred_backend(torch.device(r["device"]), blk)
    if r["backend"] == preferred:
        return r["device"], r["dtype"], block, False
    if r["backend"] == auto.stand_in_for(preferred):
        return r["device"], r["dtype"], block, True
    return None


def update_tables(rows: list[dict], table: dict, by_shape: dict) -> tuple[dict, dict]:
    """Copies of ``auto``'s tables with an entry for every (device, dtype, block) whose sparse
    kernel was measured in ``rows`` (and a ``@csr`` entry where ``csr`` rows measure the
    stand-in); the others are kept."""
    table, by_shape = copy.deepcopy(table), copy.deepcopy(by_shape)
    measured = {e for e in map(_table_entry, rows) if e is not None}
    for dev, dtype, b, stand_in in sorted(measured):  # unmeasured entries keep shipped values
        shapes = crossover(rows, dev, dtype, b, "csr" if stand_in else None)
        k = auto.key(getattr(torch, dtype), (b, b) if b else None, stand_in)
        by_shape.setdefault(dev, {})[k] = shapes
        table.setdefault(dev, {})[k] = min((v or 0.0 for v in shapes.values()), default=0.0) or None
    return table, by_shape


def write_tables(table: dict, by_shape: dict, command: str) -> None:
    """Write ``auto``'s crossover.json (atomically) and reload it in this process."""
    _write_json(auto.TABLE_PATH, {
        "generated_by": command, "machine": machine(), "crossover": table, "by_shape": by_shape},
        indent=2)
    for live, fresh in ((auto.TABLE, auto.load_table()), (auto.BY_SHAPE, auto.load_by_shape())):
        live.clear()
        live.update(fresh)


def run_kernels(args) -> dict:
    device = torch.device(args.device)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    rows: list[dict] = []

    def record(shape, density, backend, dtype, block, m, actual=1.0):
        # ``density`` is the nominal grid value; ``actual_density`` the layer's nnz / (in * out)
        # (slightly above: fan-in is rounded up) — the crossover is stated in actual density.
        row = {"device": device.type, "dtype": str(dtype).removeprefix("torch."), "shape": shape,
               "block": block, "density": density, "actual_density": actual, "backend": backend,
               **m}
        rows.append(row)
        print(f"{shape!s:>22} {row['dtype']:>8} {block or '-':>5} {density:>7.2%} {backend:>12} "
              f"{m['forward_ms']:>9.2f} {m['forward_backward_ms']:>9.2f} "
              f"{m['baseline_forward_ms'] / m['forward_ms']:>7.2f}x "
              f"{m['baseline_forward_backward_ms'] / m['forward_backward_ms']:>7.2f}x "
              f"{m['peak_forward_backward_bytes'] / 2**20:>9.1f} "
              f"{m['param_bytes'] / m['baseline_param_bytes']:>7.3f} "
              f"{m['eval_param_bytes'] / m['baseline_param_bytes']:>7.3f}", flush=True)

    def grid(only_auto: bool) -> None:
        """Time every (dtype, shape, block, density, backend) against ``nn.Linear``."""
        for dtype in dtypes:
            for batch, fin, fout in args.shapes:
                shape = (batch, fin, fout)
                torch.manual_seed(0)
                x = torch.randn(batch, fin, device=device, dtype=dtype)
                dense = nn.Linear(fin, fout, device=device, dtype=dtype)
                ref = _measure(dense, dense, x, args.repeats)
                if not only_auto:
                    record(shape, 1.0, "nn.Linear", dtype, 0, ref)
                peak = ref["peak_forward_backward_bytes"]
                for b in args.blocks:
                    block = (b, b) if b else None
                    if block and (fin % b or fout % b):
                        continue
                    names = ["auto"] if only_auto else [
                        n for n in available_backends(block, device)
                        if n != "auto" and (args.backends is None or n in args.backends)]
                    for density in args.densities:
                        torch.manual_seed(0)
                        probe = StructLearnedLinear(fin, fout, density=density, block=block)
                        for backend in names:
                            layer = StructLearnedLinear(fin, fout, connectivity=probe.connectivity,
                                                        block=block, backend=backend,
                                                        device=device, dtype=dtype)
                            record(shape, density, backend, dtype, b,
                                   _measure(layer, dense, x, args.repeats, peak), layer.density)

    print(f"{'(batch, in, out)':>22} {'dtype':>8} {'block':>5} {'density':>8} {'backend':>12} "
          f"{'fwd ms':>9} {'fwd+bwd':>9} {'fwd x':>8} {'f+b x':>8} {'peak MiB':>9} {'bytes/dense':>7}")
    grid(only_auto=False)
    table, by_shape = update_tables(rows, auto.TABLE, auto.BY_SHAPE)
    if args.write_crossover:
        write_tables(table, by_shape, _command(args))
    # 'auto' with the (possibly new) table, measured in the same run as its baseline.
    if args.backends is None or "auto" in args.backends:
        grid(only_auto=True)
    return {"benchmark": "kernels", "machine": machine(), "repeats": args.repeats,
            "command": _command(args),
            "crossover": table, "by_shape": by_shape, "rows": rows}


def markdown(result: dict) -> str:
    """The BENCHMARKS.md section for one ``kernels`` result."""
    rows = result["rows"]
    lines = [*_header(result, True, f"median of {result['repeats']} runs"),
             f"Crossover for `auto` (smallest over shapes): `{json.dumps(result['crossover'])}`; "
             f"per shape: `{json.dumps(result.get('by_shape', {}))}`", "",
             "Speedups are against `nn.Linear` timed interleaved with each row (same input, "
             "same run).", "",
             "Memory: peak = bytes the torch allocator held above the start during one "
             "forward+backward (vs `nn.Linear`'s in the same run); stored = parameters + every "
             "buffer as a fraction of `nn.Linear`'s, in training mode (structure and the cached "
             "transpose) / in eval mode (structure only).", "",
             "| device | dtype | (batch, in, out) | block | density | backend | fwd ms | fwd+bwd ms "
             "| fwd speedup | fwd+bwd speedup | peak MiB (fwd+bwd) | peak / dense "
             "| stored / dense: train / eval |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base_peak = r.get("baseline_peak_forward_backward_bytes")
        lines.append(
            f"| {r['device']} | {r['dtype']} | {tuple(r['shape'])} | {r.get('block') or '-'} | "
            f"{'dense' if r['backend'] == 'nn.Linear' else format(r['density'], '.0%')} | "
            f"{r['backend']} | {r['forward_ms']:.2f} | {r['forward_backward_ms']:.2f} | "
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


def update_markdown(path: Path, key: str, body: str) -> None:
    """Replace the block between ``<!-- bench:key -->`` and ``<!-- /bench:key -->``."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    _write_atomic(path, text.encode())


def run_coding(args) -> dict:
    """Our dictionary learning against scikit-learn's MiniBatchDictionaryLearning on the same
    MNIST images, atoms, λ, batch size and passes; both dictionaries are scored with the same
    encoder (FISTA run to convergence) on the same objective ½‖x − Da‖² + λ‖a‖₁ (mean/sample)."""
    import numpy as np
    from sklearn.decomposition import MiniBatchDictionaryLearning
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

    from .coding import DictionaryLearner, fista, objective
    from .datasets import load_dataset

    X, _ = load_dataset("mnist", "train", args.data_root, args.n)
    X = X.reshape(len(X), -1)
    X = X - X.mean(0)  # centred pixels, as scikit-learn's examples do
    device = torch.device(args.device)

    def final_objective(D: torch.Tensor) -> float:
        Dd = D.to(device, torch.float32)
        Xd = X.to(device)
        total = 0.0
        for i in range(0, len(Xd), 2000):
            A = fista(Xd[i : i + 2000], Dd, lam1=args.lam, max_iter=1000, tol=1e-7)
            total += float(objective(Xd[i : i + 2000], Dd, A, args.lam).sum())
        return total / len(Xd)

    rows = []
    t0 = time.perf_counter()
    ours = DictionaryLearner(args.atoms, lam1=args.lam, epochs=args.passes, seed=0,
                             device=device, verbose=False)
    # batches indexed in one go (a BatchSampler), not 256 single-item lookups per batch
    batched = DataLoader(TensorDataset(X), batch_size=None,
                         sampler=BatchSampler(SequentialSampler(range(len(X))), args.batch_size, False))
    ours.fit(batched)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t0
    rows.append({"method": "torch_structlearn DictionaryLearner", "seconds": t_ours,
                 "objective": final_objective(ours.dictionary_),
                 "active_fraction": float(ours.usage_.mean())})
    print(f"ours: {t_ours:.1f} s, objective {rows[-1]['objective']:.4f}", flush=True)
    if not args.skip_sklearn:
        t0 = time.perf_counter()
        sk = MiniBatchDictionaryLearning(n_components=args.atoms, alpha=args.lam,
                                         batch_size=args.batch_size, max_iter=args.passes,
                                         shuffle=False, random_state=0, fit_algorithm="cd",
                                         transform_algorithm="lasso_cd")
        sk.fit(X.numpy().astype(np.float64))
        t_sk = time.perf_counter() - t0
        D_sk = torch.from_numpy(sk.components_).float().T
        rows.append({"method": "sklearn MiniBatchDictionaryLearning (fit_algorithm='cd')",
                     "seconds": t_sk, "objective": final_objective(D_sk / D_sk.norm(dim=0).clamp_min(1e-12))})
        print(f"sklearn: {t_sk:.1f} s, objective {rows[-1]['objective']:.4f}", flush=True)
        rows[0]["speedup"] = t_sk / t_ours
    return {"benchmark": "coding", "machine": machine(), "device": device.type,
            "command": _command(args),
            "n": len(X), "atoms": args.atoms, "lam": args.lam, "passes": args.passes,
            "batch_size": args.batch_size, "rows": rows}


def coding_markdown(result: dict) -> str:
    lines = [*_header(result, result["device"] == "cuda", f"device {result['device']}"),
             f"{result['n']} MNIST training images (centred pixels), {result['atoms']} atoms, "
             f"λ = {result['lam']}, batch {result['batch_size']}, {result['passes']} passes. "
             "Objective = mean over the images of ½‖x − Da‖² + λ‖a‖₁ with codes from the same "
             "FISTA encoder run to convergence for both dictionaries.", "",
             "| method | wall time (s) | final objective | speedup |", "|---|---|---|---|"]
    for r in result["rows"]:
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else "1.0x"
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r['objective']:.4f} | {sp} |")
    return "\n".join(lines)


def _mlp(sizes: list[int], density: float | None, block: int, backend: str, device, dtype) -> nn.Module:
    """``sizes[0] -> ... -> sizes[-1]`` with ReLU; hidden layers sparse unless ``density`` is
    None; the classifier head is ``nn.Linear`` in every variant."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        if density is None or i == len(sizes) - 2:
            layers.append(nn.Linear(a, b, device=device, dtype=dtype))
        else:
            layers.append(StructLearnedLinear(a, b, density=density, block=(block, block) if block else None,
                                              backend=backend, device=device, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _hub_variants(name: str, backend: str, device, dtype):
    """The hub entry's model (its learned structure) and the same model with ``nn.Linear``
    layers in place of the sparse ones; plus the input shape and number of classes."""
    from . import hub
    from .convert import _set_module

    model = hub.load(name)
    card = hub.card(name)
    if "timm_model" in card:
        size = card.get("timm_kwargs", {}).get("img_size", 224)
        shape = (card.get("timm_kwargs", {}).get("in_chans", 3), size, size)
    else:
        shape = tuple(model.input_shape)
    dense = copy.deepcopy(model)
    for n, m in list(dense.named_modules()):
        if isinstance(m, StructLearnedLinear):
            _set_module(dense, n, nn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
    sparse = [m for m in model.modules() if isinstance(m, StructLearnedLinear)]
    for m in sparse:
        m.backend = backend
    density = sum(m.nnz for m in sparse) / sum(m.in_features * m.out_features for m in sparse)
    variants = [("nn.Linear", None, 0, lambda: dense.to(device, dtype)),
                (f"{name} ({density:.0%})", density, 0, lambda: model.to(device, dtype))]
    return variants, shape, model.num_classes


def run_mlp(args) -> dict:
    """One training epoch (SGD, cross-entropy on synthetic data), sparse vs dense: of an MLP,
    or (``--hub NAME``) of a hub entry's model against the same model with ``nn.Linear``."""
    device, dtype = torch.device(args.device), torch.float32
    if args.hub:
        variants, shape, classes = _hub_variants(args.hub, args.backend, device, dtype)
    else:
        shape, classes = (args.sizes[0],), args.sizes[-1]
        variants = [(None, 0)] + [(d, b) for b in args.blocks for d in args.densities]
        variants = [("nn.Linear" if d is None else f"{d:.0%}" + (f" block {b}" if b else ""), d, b,
                     lambda d=d, b=b: _mlp(args.sizes, d, b, args.backend, device, dtype))
                    for d, b in variants]
    g = torch.Generator().manual_seed(0)
    X = torch.rand(args.n, *shape, generator=g).to(device, dtype)
    y = torch.randint(0, classes, (args.n,), generator=g).to(device)
    rows = []
    print(f"{'variant':>22} {'epoch s':>9} {'speedup':>8} {'step MiB':>9} {'total MiB':>9} "
          f"{'total/dense':>10}")
    for name, density, block, build in variants:
        torch.manual_seed(0)
        model = build()
        model.train()
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01,
                              momentum=0.9)

        def step(i0, model=model, opt=opt):
            xb, yb = X[i0:i0 + args.batch_size], y[i0:i0 + args.batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()

        step(0)  # warm-up (allocations, caches, optimizer state)
        peak = _peak_of_step(lambda: step(0), lambda o=opt: o.zero_grad(set_to_none=True), device)
        held = _state_bytes(model) + sum(  # parameters, buffers and optimizer state
            t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
            if isinstance(t, torch.Tensor))
        _sync(device)
        t0 = time.perf_counter()
        for i0 in range(0, args.n, args.batch_size):
            step(i0)
        _sync(device)
        seconds = time.perf_counter() - t0
        rows.append({"variant": name, "density": density, "block": block, "epoch_seconds": seconds,
                     "peak_step_bytes": peak, "held_bytes": held})
        base = rows[0]
        total, base_total = held + peak, base["held_bytes"] + base["peak_step_bytes"]
        print(f"{name:>22} {seconds:>9.2f} {base['epoch_seconds'] / seconds:>7.2f}x "
              f"{peak / 2**20:>9.1f} {total / 2**20:>9.1f} {total / base_total:>10.2f}", flush=True)
        del model, opt
    return {"benchmark": "mlp", "machine": machine(), "device": device.type,
            "command": _command(args), "backend": args.backend, "hub": args.hub,
            "sizes": None if args.hub else args.sizes, "input_shape": list(shape),
            "n": args.n, "batch_size": args.batch_size, "rows": rows}


def mlp_markdown(result: dict) -> str:
    backend = f"`backend='{result.get('backend', 'auto')}'`"
    what = (f"Hub entry `{result['hub']}` (its learned sparse layers with {backend}) against the "
            "same model with `nn.Linear` in their place" if result.get("hub") else
            f"MLP {' → '.join(map(str, result['sizes']))} (ReLU; hidden layers sparse with "
            f"{backend}, the head dense)")
    lines = [*_header(result, result["device"] == "cuda", f"device {result['device']}"),
             f"{what}, one epoch of {result['n']} synthetic samples, "
             f"batch {result['batch_size']}, SGD with momentum. Step peak = torch allocator "
             "bytes above the start during one step (gradients dropped before it); training "
             "peak = that plus what the model and optimizer hold (parameters, buffers such as "
             "the structure and cached transposes, momentum).", "",
             "| hidden layers | epoch s | speedup vs nn.Linear | step peak MiB | training peak MiB "
             "| training peak / dense |",
             "|---|---|---|---|---|---|"]
    base = result["rows"][0]
    base_total = base["held_bytes"] + base["peak_step_bytes"]
    for r in result["rows"]:
        total = r["held_bytes"] + r["peak_step_bytes"]
        lines.append(f"| {r['variant']} | {r['epoch_seconds']:.2f} | "
                     f"{base['epoch_seconds'] / r['epoch_seconds']:.2f}x | "
                     f"{r['peak_step_bytes'] / 2**20:.1f} | {total / 2**20:.1f} | "
                     f"{total / base_total:.2f} |")
    return "\n".join(lines)


def _shape(s: str) -> tuple[int, int, int]:
    try:
        b, i, o = (int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be 'batch,in,out', got {s!r}") from None
    if min(b, i, o) < 1:
        raise argparse.ArgumentTypeError(f"shape must be three positive ints 'batch,in,out', got {s!r}")
    return b, i, o


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m torch_structlearn.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what")
    k = sub.add_parser("kernels", help="sparse vs dense linear layers (default)")
    for q in (p, k):
        q.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        q.add_argument("--shapes", type=_shape, nargs="+", default=None, metavar="B,IN,OUT",
                       help="default: the CPU or GPU grid of the device")
        q.add_argument("--densities", type=_density, nargs="+", default=None)
        q.add_argument("--blocks", type=int, nargs="+", default=None,
                       help="block sizes b (b x b blocks); 0 = unstructured (default: 0 32 on "
                            "cpu, 0 16 32 64 on cuda)")
        q.add_argument("--repeats", type=_positive(int), default=5)
        q.add_argument("--json", type=Path, default=Path("runs/bench/kernels.json"))
        q.add_argument("--markdown", type=Path, default=None, help="update this BENCHMARKS.md")
        q.add_argument("--write-crossover", action="store_true",
                       help="rewrite the crossover table that backend='auto' ships with")
        q.add_argument("--backends", nargs="+", default=None,
                       help="only these backends (default: every available one, then auto)")
        q.add_argument("--tag", default="", help="suffix of the BENCHMARKS.md section key")
    mp = sub.add_parser("mlp", help="one training epoch of a sparse MLP vs nn.Linear")
    mp.add_argument("--device", default="cpu")
    mp.add_argument("--sizes", type=_positive(int), nargs="+", default=[3072, 4096, 4096, 10])
    mp.add_argument("--densities", type=_density, nargs="+", default=[0.01, 0.05, 0.10, 0.25])
    mp.add_argument("--blocks", type=int, nargs="+", default=[0, 32])
    mp.add_argument("--backend", default="auto", choices=BACKENDS, help="backend of the sparse layers (default auto)")
    mp.add_argument("--n", type=_positive(int), default=10240, help="samples in the epoch")
    mp.add_argument("--batch-size", type=_positive(int), default=256)
    mp.add_argument("--hub", default=None, metavar="NAME",
                    help="time this hub entry's model against itself with nn.Linear layers "
                         "instead of the MLP (--sizes, --densities, --blocks unused)")
    mp.add_argument("--json", type=Path, default=Path("runs/bench/mlp.json"))
    mp.add_argument("--markdown", type=Path, default=None, help="update this BENCHMARKS.md")
    x = sub.add_parser("crossover", help="rewrite auto's crossover table from kernels JSON files")
    x.add_argument("files", type=Path, nargs="+",
                   help="JSON written by `bench kernels`; later files win for the same entry")
    c = sub.add_parser("coding", help="dictionary learning vs scikit-learn on MNIST")
    c.add_argument("--device", default="cpu")
    c.add_argument("--n", type=_positive(int), default=20000, help="MNIST training images")
    c.add_argument("--atoms", type=_positive(int), default=256)
    c.add_argument("--lam", type=_nonnegative, default=0.1)
    c.add_argument("--passes", type=_positive(int), default=3)
    c.add_argument("--batch-size", type=_positive(int), default=256)
    c.add_argument("--data-root", default=None)
    c.add_argument("--skip-sklearn", action="store_true", help="time ours only (e.g. on a GPU)")
    c.add_argument("--json", type=Path, default=Path("runs/bench/coding.json"))
    c.add_argument("--markdown", type=Path, default=None, help="update this BENCHMARKS.md")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.what == "crossover":
        table, by_shape = auto.TABLE, auto.BY_SHAPE
        for f in args.files:
            try:
                rows = json.loads(f.read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                p.error(f"{f}: not a `bench kernels` JSON file ({e})")
            table, by_shape = update_tables(rows, table, by_shape)
        write_tables(table, by_shape, _command(args))
        print(json.dumps({"crossover": table, "by_shape": by_shape}, indent=1))
        print(f"wrote {auto.TABLE_PATH}")
        return 0
    if args.what == "coding":
        result, key, md = run_coding(args), f"coding-lam{args.lam:g}", coding_markdown
    elif args.what == "mlp":
        if len(args.sizes) < 3:
            p.error(f"--sizes needs at least 3 sizes (in, hidden..., out), got {args.sizes}")
        if args.hub is not None:
            from . import hub

            if args.hub not in hub.list():
                p.error(f"--hub {args.hub!r}: no such entry; available: {hub.list()}")
        result, md = run_mlp(args), mlp_markdown
        key = ("mlp" if args.hub is None else f"epoch-{args.hub}") + (
            "" if args.backend == "auto" else f"-{args.backend}")
    else:
        gpu = args.device.startswith("cuda")
        args.shapes = args.shapes or (GPU_SHAPES if gpu else CPU_SHAPES)
        args.densities = args.densities or (GPU_DENSITIES if gpu else DENSITIES)
        args.blocks = args.blocks if args.blocks is not None else ([0, 16, 32, 64] if gpu else [0, 32])
        if any(b < 0 for b in args.blocks):
            p.error(f"--blocks must be >= 0, got {args.blocks}")
        result, key, md = run_kernels(args), "kernels" + (f"-{args.tag}" if args.tag else ""), markdown
    key = f"{key}-{torch.device(args.device).type}"
    _write_json(args.json, result)
    print(f"wrote {args.json}")
    if args.markdown:
        update_markdown(args.markdown, key, md(result))
        print(f"updated {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
