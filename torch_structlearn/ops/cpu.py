"""``cpu`` backend: fused CSR kernels for row-major activations (``cpu_kernel.cpp``).

torch's CSR product (MKL) wants the batch as columns, so the ``csr`` backend transposes every
activation chunk in and out; at batch 4096 those copies cost as much as the products (see
BENCHMARKS.md). The kernels in ``cpu_kernel.cpp`` transpose tiles of 32 batch rows in cache
and compute all three products — forward, input gradient, values gradient — on them; the input
gradient scatters through ``W``'s rows, so this backend needs no transposed structure.

The C++ source is compiled at first use with the system's C++ compiler (``$CXX``, else
``g++``; ``-O3 -march=native -fopenmp``) into a cache directory (``$STRUCTLEARN_CACHE``, else
``~/.cache/torch_structlearn``), keyed by the source, flags, compiler and CPU, and written
atomically; later processes load the cached library in milliseconds. Without a compiler the
backend is unavailable (``available()`` is False, ``error()`` says why) and ``auto`` uses
``csr`` at ``csr``'s own measured crossover. float32 and float64 are computed natively;
bf16/fp16 in float32 (as ``csr`` does).

Block layers (``values (nblocks, bo, bi)``, block-level ``crow``/``col``) run on the same tiles
with register-blocked dense products per block (any block shape).
Shapes: ``x (N, in)``, ``values (nnz,)`` or ``(nblocks, bo, bi)``, ``crow (out / bo + 1,)``,
``col (nnz,)`` or ``(nblocks,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .csr import _compute_dtype

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC"]
_NAMES = {(torch.float32, torch.int32): "f32_i32", (torch.float32, torch.int64): "f32_i64",
          (torch.float64, torch.int32): "f64_i32", (torch.float64, torch.int64): "f64_i64"}

_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False
_ok = False  # a plain bool, so that torch.compile traces ``available()`` without ctypes


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$STRUCTLEARN_CACHE`` or ``~/.cache/torch_structlearn``."""
    env = os.environ.get("STRUCTLEARN_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch_structlearn"


def _cpu_id() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    tag = hashlib.sha256("\0".join(
        [SOURCE.read_text(), " ".join(FLAGS), version, _cpu_id(), torch.__version__]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"cpu_kernel-{tag}.so"
    digest = target.with_suffix(".sha256")  # written after the library: a check of it
    if target.exists() and digest.exists() and digest.read_text() == _sha256(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling %s with %s (first use; a few seconds) into %s", SOURCE.name, cxx, target)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{cxx} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees no half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    from ..io import _write_atomic  # not at import: io imports the layers, which import ops

    _write_atomic(digest, _sha256(target).encode())
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiler() -> str:
    """The C++ compiler the kernels are built with: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX") or "g++"


def _load() -> None:
    global _lib, _error, _tried, _ok
    _tried = True
    cxx = compiler()
    if shutil.which(cxx) is None:
        _error = f"no C++ compiler: {cxx!r} is not on PATH (set $CXX)"
        return
    try:
        lib = ctypes.CDLL(str(_compile(cxx)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _error = f"could not build {SOURCE.name}: {e}"
        return
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for name in _NAMES.values():
        fwd, bwd = getattr(lib, f"{name}_forward"), getattr(lib, f"{name}_backward")
        fwd.argtypes = [p, i64, i64, p, p, p, i64, i64, i64, p, c_int]
        bwd.argtypes = [p, p, i64, i64, i64, p, p, p, i64, i64, p, p, c_int]
        fwd.restype = bwd.restype = c_int
    _lib, _ok = lib, True


def available() -> bool:
    """Whether the kernels are compiled and loaded (compiles them on the first call)."""
    if not _tried:
        _load()
    return _ok


def error() -> str | None:
    """Why the backend is unavailable, or None."""
    available()
    return _error


def _ok_or_raise(rc: int) -> None:
    if rc:
        raise MemoryError("backend='cpu': the kernel could not allocate its workspace "
                          "(tiles of 32 rows per thread)")


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_structure(crow: Tensor, col: Tensor, in_features: int) -> None:
    """The kernels index memory with ``crow`` and ``col`` unchecked: a malformed structure
    must be a ``ValueError`` here, not a crash there (O(nnz) per call, ~µs). For a block layer
    ``in_features`` counts block columns."""
    nnz = col.numel()
    if crow.numel() < 1 or int(crow[0]) != 0 or int(crow[-1]) != nnz:
        raise ValueError(f"crow must start at 0 and end at len(col) = {nnz}, got "
                         f"{crow[:1].tolist()} … {crow[-1:].tolist()}")
    if crow.numel() > 1 and bool((crow[1:] < crow[:-1]).any()):
        raise ValueError("crow must be non-decreasing")
    if nnz and (int(col.min()) < 0 or int(col.max()) >= in_features):
        raise ValueError(f"col must lie in [0, in_features = {in_features}), got "
                         f"[{int(col.min())}, {int(col.max())}]")


def _block(values: Tensor) -> tuple[int, int]:
    return (1, 1) if values.dim() == 1 else (values.shape[1], values.shape[2])


def _prepare(x: Tensor, values: Tensor, crow: Tensor, col: Tensor):
    if not available():
        raise RuntimeError(f"backend='cpu' is unavailable: {_error}")
    _check_structure(crow, col, x.shape[1] // _block(values)[1])
    dt = _compute_dtype(x)  # bf16/fp16 in float32, as for csr
    name = _NAMES[(dt, crow.dtype)]
    return dt, name, values.to(dt).contiguous(), crow.contiguous(), col.contiguous()


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t=None) -> Tensor:
    dt, name, v, crow, col = _prepare(x, values, crow, col)
    xc = x.to(dt).contiguous()
    bo, bi = _block(v)
    n, out = xc.shape[0], (crow.numel() - 1) * bo
    y = xc.new_empty(n, out)
    if n and out:
        _ok_or_raise(getattr(_lib, f"{name}_forward")(
            _ptr(xc), n, xc.shape[1], _ptr(v), _ptr(crow), _ptr(col), out, bo, bi, _ptr(y),
            torch.get_num_threads()))
    return y.to(x.dtype)


def backward(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
             need_input: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    dt, name, v, crow, col = _prepare(x, values, crow, col)
    xc, gyc = x.to(dt).contiguous(), gy.to(dt).contiguous()
    bo, bi = _block(v)
    n, in_features = xc.shape
    out = (crow.numel() - 1) * bo
    gx = xc.new_empty(n, in_features) if need_input else None  # the kernel writes all of it
    gv = v.new_empty(v.shape) if need_values else None
    if n and out and (need_input or need_values):
        _ok_or_raise(getattr(_lib, f"{name}_backward")(
            _ptr(gyc), _ptr(xc), n, in_features, out, _ptr(v), _ptr(crow), _ptr(col), bo, bi,
            _ptr(gx), _ptr(gv), torch.get_num_threads()))
    else:  # nothing flows: zero gradients
        gx = gx.zero_() if need_input else None
        gv = gv.zero_() if need_values else None
    return (gx.to(x.dtype) if need_input else None), (gv.to(x.dtype) if need_values else None)
