"""Timing, memory and machine facts every benchmark shares.

Times are paired: a candidate and its baseline run interleaved (a, b, a, b, ...) on the same
input, so that a slow moment of a shared machine hits both. Peak memory is what the torch
allocator holds above the starting point during one step (CPU: from the profiler's allocation
events; CUDA: ``max_memory_allocated``); buffers MKL allocates internally are not seen.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from ..layers import StructLearnedLinear
from ..ops import cpu as cpu_backend

__all__ = ["command", "header", "machine", "measure", "paired_median_ms", "peak_bytes",
           "peak_of_step", "state_bytes", "steps", "sync"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_median_ms(fns, device, repeats: int) -> list[float]:
    """Median wall time of each function, run interleaved (a, b, a, b, ...) so that a slow
    moment of a shared machine hits the candidate and its baseline alike."""
    for fn in fns:
        fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=False):
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def peak_bytes(fn, device) -> int:
    """Bytes the torch allocator held above the start during ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler quiet
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def steps(module: nn.Module, x: torch.Tensor):
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


def peak_of_step(step, clear, device) -> int:
    """Peak bytes above the start of one ``step``, the gradients dropped *before* the start (so
    freeing the previous step's gradients inside the step cannot hide the new ones)."""
    clear()
    return peak_bytes(step, device)


def measure(module: nn.Module, baseline: nn.Module, x: torch.Tensor, repeats: int,
            baseline_peak: int | None = None) -> dict:
    """Times of ``module`` and, interleaved with it, of ``baseline`` on the same input."""
    device = x.device
    fwd, fwd_bwd, clear = steps(module, x)
    bfwd, bfwd_bwd, bclear = steps(baseline, x)
    f, bf = paired_median_ms([fwd, bfwd], device, repeats)
    fb, bfb = paired_median_ms([fwd_bwd, bfwd_bwd], device, repeats)
    return {
        "forward_ms": f, "forward_backward_ms": fb,
        "baseline_forward_ms": bf, "baseline_forward_backward_ms": bfb,
        "peak_forward_backward_bytes": peak_of_step(fwd_bwd, clear, device),
        "baseline_peak_forward_backward_bytes": baseline_peak or peak_of_step(bfwd_bwd, bclear, device),
        "param_bytes": state_bytes(module),
        "eval_param_bytes": state_bytes(module, training=False),
        "baseline_param_bytes": state_bytes(baseline),
    }


def state_bytes(module: nn.Module, training: bool = True) -> int:
    """Bytes the module keeps in training (or eval) mode: parameters, every buffer (structure
    and the caches that mode holds) and the dense weight a layer on the dense backend keeps."""
    was = module.training
    module.train(training)
    held = [*module.parameters(), *module.buffers()]
    held += [m._dense.weight for m in module.modules()
             if isinstance(m, StructLearnedLinear) and m._dense.weight is not None]
    module.train(was)
    return sum(t.numel() * t.element_size() for t in held)


def command(args) -> str:
    """The command line that ran this benchmark, as recorded next to its numbers."""
    return shlex.join(["python", "-m", "torch_structlearn.bench", *args.argv])


def machine() -> dict:
    """The machine a result was measured on: CPU model, its vector-ISA flags, the ``cpu``
    kernels' build, threads, versions (and the GPU)."""
    info = {"cpu": cpu_backend.cpu_model(), "cpu_flags": cpu_backend.isa_flags(),
            "isa": cpu_backend.cpu_isa(), "kernels": cpu_backend.info(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(m: dict) -> str:
    """One line naming a :func:`machine`: CPU, its vector-ISA flags, threads, torch."""
    return f"{m['cpu']} ({' '.join(m['cpu_flags'])}), {m['threads']} threads, torch {m['torch']}"


def run_child(tool: str, cfg: dict, what: str, env: dict | None = None) -> dict:
    """``structlearn bench TOOL --child CFG`` in a fresh process (nothing compiled, calibrated
    or allocated before it); its result, the JSON of its last output line. A failed child
    shows the end of its stderr and stops the benchmark with ``SystemExit`` naming ``what``."""
    r = subprocess.run([sys.executable, "-m", "torch_structlearn.bench", tool, "--child",
                        json.dumps(cfg)], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"{what} failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


def header(result: dict, show_gpu: bool, tail: str) -> list[str]:
    """The ``Command:`` and ``Machine:`` lines every BENCHMARKS.md section starts with: CPU
    flags and the kernels' build included, since a CPU result holds for that instruction set."""
    m = result["machine"]
    lines = [f"Command: `{result['command']}`  ",
             f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}"
             + (f", GPU {m['gpu']}" if show_gpu and "gpu" in m else "") + f"; {tail}.  "]
    if "cpu_flags" in m:
        k = m.get("kernels", {})
        build = (f"`{k['isa']}` build ({k['vector_bytes']}-byte vectors, {k['tile_rows']}-row "
                 f"register tile; `{k['flags']}`)" if "isa" in k else
                 f"unavailable ({k.get('error')})")
        lines.append(f"CPU flags: {' '.join(m['cpu_flags']) or '-'}; "
                     f"`cpu` kernels: {build}.  ")
    return lines
