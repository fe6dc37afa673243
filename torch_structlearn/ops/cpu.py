"""``cpu`` backend: fused CSR kernels for row-major activations (``cpu_kernel.cpp``).

torch's CSR product (MKL) wants the batch as columns, so the ``csr`` backend transposes every
activation chunk in and out. The kernels in ``cpu_kernel.cpp`` transpose tiles of batch rows in
cache and compute all three products — forward, input gradient, values gradient — on them; the
input gradient scatters through ``W``'s rows, so this backend needs no transposed structure.

**Builds per instruction set.** The C++ source is compiled at first use with the system's C++
compiler (``$CXX``, else ``g++``) for one *variant*, chosen by ``$STRUCTLEARN_CPU_ISA``:

* ``native`` (default): ``-march=native``, i.e. this CPU's widest vectors (AVX-512, AVX2,
  NEON, ...); if the compiler refuses ``-march=native``, its default target;
* ``avx512`` (``-march=x86-64-v4``), ``avx2`` (``-march=x86-64-v3``: AVX2 + FMA — what most
  x86 laptops and cloud VMs have): to build and measure one instruction set on a CPU that has
  more (``STRUCTLEARN_CPU_ISA=avx2`` on an AVX-512 machine measures the AVX2 build); refused
  on a CPU that lacks it;
* ``generic``: the architecture's baseline (SSE2 on x86-64, NEON on aarch64).

The vector width, tile height and register blocking follow the target at compile time (see
``cpu_kernel.cpp``); :func:`info` says what the loaded build is. Libraries are kept in
:func:`~torch_structlearn.filesystem.cache_dir`, keyed by the source, flags, compiler, CPU and
torch version, written atomically under a lock (processes starting together compile once);
later processes load the cached library in milliseconds. Without a compiler the backend is
unavailable (``available()`` is False, ``error()`` says why) and ``auto`` does without it.
float32 and float64 are computed natively; bf16/fp16 in float32 (as ``csr`` does).

Block layers (``values (nblocks, bo, bi)``, block-level ``crow``/``col``) run on the same tiles
with register-blocked dense products per block (any block shape).
Shapes: ``x (N, in)``, ``values (nnz,)`` or ``(nblocks, bo, bi)``, ``crow (out / bo + 1,)``,
``col (nnz,)`` or ``(nblocks,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..connectivity import validate_csr
from ..filesystem import cache_dir, file_lock, write_atomic
from .csr import _compute_dtype
from .operands import check as check_operands

# fix_rows(x, y, values, crow, col, bias) -> y: what a forward gives the rows of x holding an
# inf or NaN (ops/dense.py's nonfinite_rows; this module cannot import it)
FixRows = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]

__all__ = ["VARIANTS", "Kernels", "available", "build", "compiler", "cpu_flags", "cpu_isa", "cpu_model",
           "error", "isa_flags",
           "info", "variant"]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
COMMON_FLAGS = ["-O3", "-fopenmp", "-std=c++17", "-shared", "-fPIC"]
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
_ARM64 = platform.machine().lower() in ("aarch64", "arm64")
# variant -> the target flags to try, in order (the first that compiles wins)
VARIANTS: dict[str, list[list[str]]] = {
    "native": [["-march=native"], []],
    "avx512": [["-march=x86-64-v4", "-mtune=native"]],
    "avx2": [["-march=x86-64-v3", "-mtune=native"]],
    "generic": [["-march=x86-64"] if _X86 else ["-march=armv8-a"] if _ARM64 else []],
}
# what the CPU must have to run a variant (Linux /proc/cpuinfo flag names)
REQUIRES = {"avx512": {"avx512f", "avx2", "fma"}, "avx2": {"avx2", "fma"}}
_NAMES = {(torch.float32, torch.int32): "f32_i32", (torch.float32, torch.int64): "f32_i64",
          (torch.float64, torch.int32): "f64_i32", (torch.float64, torch.int64): "f64_i64"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa_flags() -> list[str]:
    """The CPU's vector-ISA flags that matter here (what benchmark tables print)."""
    return sorted(cpu_flags() & {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                 "avx512_bf16", "amx_tile", "asimd", "sve", "sse2"})


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@torch.compiler.assume_constant_result
def cpu_isa() -> str:
    """The instruction set the ``cpu`` kernels run with (``avx512``, ``avx2``, ``sse2``,
    ``neon``, ...); where they did not build, the CPU's own (a constant inside a
    ``torch.compile`` trace, like :func:`available`)."""
    if available():
        return _kernels.isa
    flags = cpu_flags()
    if _X86:
        return "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else "sse2"
    return "neon" if _ARM64 else platform.machine().lower() or "unknown"


def _cpu_id() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def compiler() -> str:
    """The C++ compiler the kernels are built with: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX") or "g++"


def variant() -> str:
    """The variant this process uses: ``$STRUCTLEARN_CPU_ISA``, default ``native``."""
    return os.environ.get("STRUCTLEARN_CPU_ISA", "").strip() or "native"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(cxx: str, flags: list[str]) -> Path:
    """The library for ``flags``, compiled into the cache unless a checked copy is there."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    tag = hashlib.sha256("\0".join(
        [SOURCE.read_text(), " ".join(flags), version, _cpu_id(), torch.__version__]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"cpu_kernel-{tag}.so"
    digest = target.with_suffix(".sha256")  # written after the library: a check of it

    def cached() -> bool:
        return target.exists() and digest.exists() and digest.read_text() == _sha256(target)

    if cached():
        return target
    with file_lock(target.with_suffix(".lock")):  # one process compiles, the others wait
        if cached():
            return target
        log.info("compiling %s with %s %s (first use; a few seconds) into %s", SOURCE.name, cxx,
                 " ".join(flags), target)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cxx, *flags, str(SOURCE), "-o", tmp], capture_output=True,
                                  text=True)
            if proc.returncode:
                raise RuntimeError(f"{cxx} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
            os.replace(tmp, target)  # atomic: a concurrent reader sees no half-written library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        write_atomic(digest, _sha256(target).encode())
    return target


class Kernels:
    """One loaded build of ``cpu_kernel.cpp``: :meth:`forward` and :meth:`backward` on tensors.

    Attributes: ``variant`` (as asked), ``isa`` (what the build targets: ``avx512``, ``avx2``,
    ``sse2``, ``neon``, ...), ``vector_bytes``, ``tile_rows`` (the largest tile), ``flags``,
    ``path`` (the library).
    """

    def __init__(self, path: Path, variant: str, flags: list[str]):
        lib = ctypes.CDLL(str(path))
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for name in _NAMES.values():
            fwd, bwd = getattr(lib, f"{name}_forward"), getattr(lib, f"{name}_backward")
            fwd.argtypes = [p, i64, i64, p, p, p, i64, p, i64, i64, i64, p, c_int]
            bwd.argtypes = [p, p, i64, i64, i64, p, p, p, i64, i64, i64, p, p, p, c_int]
            fwd.restype = bwd.restype = c_int
            for move in (getattr(lib, f"{name}_scatter"), getattr(lib, f"{name}_gather")):
                move.argtypes = [p, p, p, i64, i64, i64, i64, i64, p, c_int]
                move.restype = c_int
        lib.structlearn_isa.restype = ctypes.c_char_p
        self._lib, self.path, self.variant, self.flags = lib, path, variant, flags
        self.isa = lib.structlearn_isa().decode()
        self.vector_bytes = int(lib.structlearn_vector_bytes())
        self.tile_rows = int(lib.structlearn_tile_rows())

    def __repr__(self) -> str:
        return (f"Kernels(variant={self.variant!r}, isa={self.isa!r}, "
                f"vector_bytes={self.vector_bytes}, tile_rows={self.tile_rows})")

    def forward(self, x: Tensor, values: Tensor, crow: Tensor, col: Tensor,
                bias: Tensor | None = None, fix_rows: FixRows | None = None) -> Tensor:
        """``y (N, out) = x (N, in) Wᵀ + bias``. Where ``x`` holds an inf or NaN (the kernel
        scans for them) ``y = fix_rows(x, y, values, crow, col, bias)`` — the caller's rule for
        those rows (:func:`~torch_structlearn.ops.dense.nonfinite_rows`: the masked dense
        product's); None keeps the sparse sum's."""
        dt, name, v, crow, col = _prepare(x, values, crow, col)
        xc = x if x.dtype == dt and x.is_contiguous() else x.to(dt).contiguous()
        bo, bi = _block(v)
        n, out = xc.shape[0], (crow.numel() - 1) * bo
        b = _bias(bias, out, dt)
        y = xc.new_empty(n, out)
        if n and out:
            rc = getattr(self._lib, f"{name}_forward")(
                _ptr(xc), n, xc.shape[1], _ptr(v), _ptr(crow), _ptr(col), col.numel(), _ptr(b),
                out, bo, bi, _ptr(y), torch.get_num_threads())
            if rc == NONFINITE:
                y = y if fix_rows is None else fix_rows(xc, y, v, crow, col, b)
            else:
                _ok_or_raise(rc, crow, col, (out // bo, xc.shape[1] // bi))
        else:
            y.zero_()
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def forward_runner(self, values: Tensor, crow: Tensor, col: Tensor, bias: Tensor | None,
                       in_features: int, fix_rows: FixRows | None = None):
        """``run(x (N, in)) -> y (N, out)``: :meth:`forward` on these operands with its checks
        made once, here — what a layer's call plan runs. None where the operands need
        conversions (not float32/64, not contiguous, dtypes differ). ``run`` reads the
        operands' memory as it is now: the caller makes a new runner when a tensor is
        replaced, and passes ``x`` contiguous, on the CPU, of values' dtype."""
        values = values.view(-1) if values.dim() == 2 else values  # a layer's (nnz, 1)
        dt = values.dtype
        if (dt not in (torch.float32, torch.float64) or not values.is_contiguous()
                or not (crow.is_contiguous() and col.is_contiguous())
                or (bias is not None and (bias.dtype != dt or not bias.is_contiguous()))):
            return None
        bo, bi = check_operands(values.new_empty(0, in_features), values, crow, col)
        out = (crow.numel() - 1) * bo
        if bias is not None and bias.shape != (out,):
            return None
        fn = getattr(self._lib, f"{_NAMES[(dt, crow.dtype)]}_forward")
        ops = (_ptr(values), _ptr(crow), _ptr(col), col.numel(), _ptr(bias), out, bo, bi)
        threads = torch.get_num_threads

        def run(x: Tensor) -> Tensor:
            n = x.shape[0]
            y = x.new_empty(n, out)
            if not (n and out):
                return y.zero_()
            rc = fn(x.data_ptr(), n, in_features, *ops[:5], out, bo, bi, y.data_ptr(), threads())
            if rc == NONFINITE:
                return y if fix_rows is None else fix_rows(x, y, values, crow, col, bias)
            if rc:
                _ok_or_raise(rc, crow, col, (out // bo, in_features // bi))
            return y

        return run

    def scatter(self, values: Tensor, crow: Tensor, col: Tensor, weight: Tensor) -> None:
        """``weight[row, col[p]] = values[p]`` for every nonzero — or every ``(bo, bi)`` block
        for ``values (nblocks, bo, bi)`` — in place; ``weight (out, in)`` contiguous, of
        values' dtype (float32/64); other entries untouched."""
        self._move("scatter", values, crow, col, weight)

    def gather(self, weight: Tensor, crow: Tensor, col: Tensor, values: Tensor) -> None:
        """``values[p] = weight[row, col[p]]`` for every nonzero (or block), in place."""
        self._move("gather", values, crow, col, weight)

    def _move(self, what: str, values: Tensor, crow: Tensor, col: Tensor, weight: Tensor) -> None:
        if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"crow and col must share an integer dtype, got {crow.dtype} and "
                            f"{col.dtype}")
        bo, bi = _block(values)
        if (values.dtype != weight.dtype or values.dtype not in (torch.float32, torch.float64)
                or not (values.is_contiguous() and weight.is_contiguous())
                or values.shape[0] != col.numel() or weight.dim() != 2
                or crow.numel() * bo != weight.shape[0] + bo or weight.shape[1] % bi):
            raise ValueError(f"{what}: values ({tuple(values.shape)}, {values.dtype}) and weight "
                             f"({tuple(weight.shape)}, {weight.dtype}) do not fit the structure")
        name = _NAMES[(values.dtype, crow.dtype)]
        crow, col = crow.contiguous(), col.contiguous()
        out, in_features = weight.shape
        _ok_or_raise(getattr(self._lib, f"{name}_{what}")(
            _ptr(values) if what == "scatter" else _ptr(weight), _ptr(crow), _ptr(col),
            col.numel(), out, in_features, bo, bi,
            _ptr(weight) if what == "scatter" else _ptr(values), torch.get_num_threads()),
            crow, col, (out // bo, in_features // bi))

    def backward(self, gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor,
                 need_input: bool, need_values: bool, need_bias: bool = False,
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(gx (N, in), gv (values' shape), gb (out,))`` for ``gy (N, out)``; None where
        not needed."""
        dt, name, v, crow, col = _prepare(x, values, crow, col)
        bo, bi = _block(v)
        n, in_features = x.shape
        out = (crow.numel() - 1) * bo
        if tuple(gy.shape) != (n, out):
            raise ValueError(f"gy must have shape (N, out_features) = ({n}, {out}), got "
                             f"{tuple(gy.shape)}")
        xc, gyc = x.to(dt).contiguous(), gy.to(dt).contiguous()
        gx = xc.new_empty(n, in_features) if need_input else None  # the kernel writes all of it
        gv = v.new_empty(v.shape) if need_values else None
        gb = xc.new_empty(out) if need_bias else None
        if n and out and (need_input or need_values or need_bias):
            _ok_or_raise(getattr(self._lib, f"{name}_backward")(
                _ptr(gyc), _ptr(xc), n, in_features, out, _ptr(v), _ptr(crow), _ptr(col),
                col.numel(), bo, bi, _ptr(gx), _ptr(gv), _ptr(gb), torch.get_num_threads()),
                crow, col, (out // bo, in_features // bi))
        else:  # nothing flows: zero gradients
            for t in (gx, gv, gb):
                if t is not None:
                    t.zero_()
        return tuple(None if t is None else t.to(x.dtype) for t in (gx, gv, gb))


def build(name: str = "native", extra_flags: tuple[str, ...] = ()) -> Kernels:
    """Compile (or take from the cache) and load the kernels of variant ``name`` (one of
    :data:`VARIANTS`), with ``extra_flags`` appended (tests pass ``-DSL_VBYTES=64`` to run the
    AVX-512 code shape on an AVX2 CPU). ``ValueError`` for an unknown variant or one this CPU
    cannot run; ``RuntimeError`` when the compiler fails or is missing."""
    if name not in VARIANTS:
        raise ValueError(f"STRUCTLEARN_CPU_ISA / variant must be one of {sorted(VARIANTS)}, "
                         f"got {name!r}")
    missing = REQUIRES.get(name, set()) - cpu_flags()
    if missing and _X86:
        raise ValueError(f"variant {name!r} needs CPU features this CPU lacks: "
                         f"{', '.join(sorted(missing))}")
    if name in REQUIRES and not _X86:
        raise ValueError(f"variant {name!r} is for x86-64 CPUs; this is {platform.machine()}")
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler: {cxx!r} is not on PATH (set $CXX)")
    failure: Exception | None = None
    for target in VARIANTS[name]:
        flags = [*COMMON_FLAGS, *target, *extra_flags]
        try:
            return Kernels(_compile(cxx, flags), name, flags)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            failure = e
    raise RuntimeError(f"could not build {SOURCE.name}: {failure}")


_kernels: Kernels | None = None
_error: str | None = None
_tried = False
_ok = False  # a plain bool, so that torch.compile traces ``available()`` without ctypes


def _load() -> None:
    global _kernels, _error, _tried, _ok
    _tried = True
    try:
        _kernels = build(variant())
    except (ValueError, RuntimeError) as e:
        _error = str(e)
        return
    _ok = True


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernels are compiled and loaded (compiles them on the first call). Inside a
    ``torch.compile`` trace it runs for real and its answer is a constant of the graph, so a
    model compiled before any eager call traces without graph breaks (the build reads files,
    locks and hashes, which Dynamo cannot trace)."""
    if not _tried:
        _load()
    return _ok


def error() -> str | None:
    """Why the backend is unavailable, or None."""
    available()
    return _error


def info() -> dict:
    """What the loaded build is: ``{"variant", "isa", "vector_bytes", "tile_rows", "flags"}``,
    or ``{"variant", "error"}`` when it is unavailable."""
    if not available():
        return {"variant": variant(), "error": _error}
    k = _kernels
    return {"variant": k.variant, "isa": k.isa, "vector_bytes": k.vector_bytes,
            "tile_rows": k.tile_rows, "flags": " ".join(k.flags)}


NONFINITE = 3  # the forward's return code when x holds an inf or NaN


def _ok_or_raise(rc: int, crow: Tensor, col: Tensor, shape: tuple[int, int]) -> None:
    """Turn a kernel's return code into an exception; 2 (a malformed structure, found by the
    kernel's own check before any work) is diagnosed by ``validate_csr`` into a message that
    names the broken invariant. ``shape``: the structure's (rows, columns), in blocks for a
    block layer."""
    if rc == 1:
        raise MemoryError("backend='cpu': the kernel could not allocate its workspace "
                          "(one panel of the input per thread)")
    if rc == 2:
        try:
            validate_csr(crow, col, shape)
        except ValueError as e:
            raise ValueError(f"backend='cpu': malformed structure: {e}") from None
        raise ValueError("backend='cpu': malformed structure: crow must start at 0, never "
                         "decrease and end at len(col), and every col must lie in "
                         f"[0, {shape[1]})")
    if rc:
        raise RuntimeError(f"backend='cpu': the kernel returned {rc}")


def _bias(bias: Tensor | None, out: int, dt: torch.dtype) -> Tensor | None:
    if bias is None:
        return None
    if bias.shape != (out,):
        raise ValueError(f"bias must have shape (out_features,) = ({out},), got {tuple(bias.shape)}")
    return bias if bias.dtype == dt and bias.is_contiguous() else bias.to(dt).contiguous()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _block(values: Tensor) -> tuple[int, int]:
    return (1, 1) if values.dim() == 1 else (values.shape[1], values.shape[2])


def _prepare(x: Tensor, values: Tensor, crow: Tensor, col: Tensor):
    """Check what the kernels cannot (dtypes, ranks, sizes: O(1)); the kernels check the
    structure's content themselves, in one pass."""
    if not available():
        raise RuntimeError(f"backend='cpu' is unavailable: {_error}")
    check_operands(x, values, crow, col)
    dt = _compute_dtype(x)  # bf16/fp16 in float32, as for csr
    v = values if values.dtype == dt and values.is_contiguous() else values.to(dt).contiguous()
    return dt, _NAMES[(dt, crow.dtype)], v, crow.contiguous(), col.contiguous()


def kernels() -> Kernels:
    """The loaded build this process uses (``RuntimeError`` when unavailable)."""
    if not available():
        raise RuntimeError(f"backend='cpu' is unavailable: {_error}")
    return _kernels


# The backend interface of ops/sparse_linear.py (``t``: the transposed structure, unused here).
# This backend adds the bias in its forward and sums the bias gradient in its backward.
FUSES_BIAS = True


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t=None,
            bias: Tensor | None = None, fix_rows: FixRows | None = None) -> Tensor:
    return kernels().forward(x, values, crow, col, bias, fix_rows)


def backward(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
             need_input: bool, need_values: bool, need_bias: bool = False,
             ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    return kernels().backward(gy, x, values, crow, col, need_input, need_values, need_bias)
