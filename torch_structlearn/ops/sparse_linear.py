"""The sparse linear kernel: ``y = x Wᵀ + b`` for a CSR weight, as a ``torch.library`` custom op.

``structlearn::sparse_linear`` and its backward ``structlearn::sparse_linear_backward`` are
registered with fake (meta) implementations and ``register_autograd``, so the op works under
``torch.compile(fullgraph=True)`` without graph breaks, and gradients flow to the input, the
nonzero values and the bias. Each backend is one module of this package:

* ``csr``          torch native sparse CSR (MKL / cuSPARSE); values grad by sampled product
* ``cpu``          fused C++ kernels on the CPU (unstructured and block layers), compiled at first
  use (``ops/cpu_kernel.cpp``); the fastest CPU path, and ``auto``'s there when a compiler exists
* ``triton``       Triton kernels for block layers (BSR) on CUDA (``ops/triton_bsr.py``)
* ``torch_sparse`` the optional torch-sparse package
* ``dense``        masked dense weight + ``F.linear`` in plain differentiable torch ops (no custom
  op is needed for it; it is traced by torch.compile like any torch code)
* ``auto``         per device/dtype/density from the crossover table the benchmark measured
"""


import contextlib

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.fx.experimental.symbolic_shapes import has_static_value

from ..checks import choice
from ..connectivity import check_csr_bounds, csr_transpose
from . import auto, calibrate, cpu, csr, dense, operands, triton_bsr
from . import torch_sparse as torch_sparse_backend

__all__ = ["sparse_linear", "resolve_backend", "BACKENDS", "available_backends", "check_backend"]

_IMPL = {"csr": csr, "cpu": cpu, "torch_sparse": torch_sparse_backend, "triton": triton_bsr}
BACKENDS = ("auto", "cpu", "csr", "dense", "torch_sparse", "triton")
# the backends whose input gradient reads the transposed structure (``cpu`` scatters instead)
NEEDS_TRANSPOSE = frozenset({"csr", "torch_sparse", "triton"})


def check_backend(backend: str) -> str:
    """``backend`` if it names a backend usable here, else ``ValueError`` saying why."""
    choice("backend", backend, BACKENDS)
    if backend == "torch_sparse" and not torch_sparse_backend.AVAILABLE:
        raise ValueError("backend='torch_sparse' needs the torch-sparse package: pip install '.[torch-sparse]'")
    if backend == "cpu" and not cpu.available():
        raise ValueError(f"backend='cpu' is unavailable here: {cpu.error()}")
    if backend == "triton" and not triton_bsr.AVAILABLE:
        raise ValueError("backend='triton' needs the triton package (it ships with torch's CUDA wheels)")
    return backend


def check_block_backend(backend: str, block: tuple[int, int] | None,
                        device: torch.device | None = None) -> None:
    """``ValueError`` when ``backend`` cannot serve a layer with this ``block`` (on ``device``,
    when given)."""
    if block is None and backend == "triton":
        raise ValueError("backend='triton' is for block layers (block=(bo, bi)); unstructured "
                         "layers use 'cpu', 'csr', 'dense' or 'torch_sparse'")
    if block is not None and backend == "torch_sparse":
        raise ValueError(f"backend={backend!r} does not handle block layers (block={block}); "
                         "use 'auto', 'cpu', 'csr', 'triton' or 'dense'")
    if backend == "cpu" and device is not None and device.type != "cpu":
        raise ValueError(f"backend='cpu' runs on CPU tensors, got device {device}")
    if block is not None and backend == "triton":
        if min(block) < triton_bsr.MIN_BLOCK:
            raise ValueError(f"backend='triton' needs blocks of at least {triton_bsr.MIN_BLOCK} "
                             f"on both sides, got block={block}")
        if device is not None and not triton_bsr.usable(device):
            raise ValueError(f"backend='triton' runs on CUDA tensors, got device {device}")


def available_backends(block: tuple[int, int] | None = None, device="cpu") -> list[str]:
    """Backends usable here for an unstructured layer (``block=None``) or a layer of
    ``(bo, bi)`` blocks on ``device``."""
    usable = []
    for b in BACKENDS:
        try:
            check_block_backend(check_backend(b), block, torch.device(device))
        except ValueError:
            continue
        usable.append(b)
    return usable


@torch.library.custom_op("structlearn::sparse_linear", mutates_args=())
def _sparse_linear(
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    crow_t: Tensor,
    col_t: Tensor,
    perm: Tensor,
    bias: Tensor | None,
    backend: str,
) -> Tensor:
    return _forward(x, values, crow, col, (crow_t, col_t, perm), bias, backend)


def _check_operands(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, backend: str,
                    t=None, gy: Tensor | None = None) -> None:
    """What must hold before a backend reads through the indices (every call, also a direct
    ``torch.ops.structlearn`` call): index dtypes, sizes, and — except for ``cpu``, whose C++
    checks the structure itself in its first pass — the structure's bounds
    (:func:`~torch_structlearn.connectivity.check_csr_bounds`), and the transposed
    structure's when one is given. ``TypeError``/``ValueError``; never an out-of-bounds read."""
    bo, bi = operands.check(x, values, crow, col)
    rows, n_cols = crow.numel() - 1, x.shape[1] // bi
    if gy is not None and tuple(gy.shape) != (x.shape[0], rows * bo):
        raise ValueError(f"gy must have shape (N, out_features) = ({x.shape[0]}, {rows * bo}), "
                         f"got {tuple(gy.shape)}")
    if backend == "cpu":
        return
    check_csr_bounds(crow, col, (rows, n_cols))
    if t is not None and t[0].numel():
        crow_t, col_t, perm = t
        if crow_t.dtype != crow.dtype or col_t.dtype != crow.dtype or perm.shape != col.shape:
            raise ValueError(f"the transposed structure must have crow's dtype and one perm entry "
                             f"per nonzero, got {crow_t.dtype}/{col_t.dtype} and perm "
                             f"{tuple(perm.shape)}")
        check_csr_bounds(crow_t, col_t, (n_cols, rows), "transposed structure")
        if perm.numel():
            lo, hi = torch.aminmax(perm)
            if perm.device.type != "cpu":
                torch._assert_async((lo >= 0) & (hi < perm.numel()), "perm out of range")
            elif int(lo) < 0 or int(hi) >= perm.numel():
                raise ValueError(f"transposed structure: perm must lie in [0, {perm.numel()})")


def _transpose_for(backend: str, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t):
    """``t``, or the transposed structure computed here when ``backend`` reads it and ``t`` is
    empty (a direct op call)."""
    if backend not in NEEDS_TRANSPOSE or t[0].numel():
        return t
    bi = 1 if values.dim() == 1 else values.shape[2]
    crow_t, col_t, perm = csr_transpose(crow, col, x.shape[1] // bi)
    return crow_t, col_t, perm.to(col_t.dtype)


def _forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t, bias: Tensor | None,
             backend: str) -> Tensor:
    """The op's body: ``(N, out)`` from ``x (N, in)`` on ``backend``."""
    _check_operands(x, values, crow, col, backend)
    impl = _IMPL[backend]
    fused = getattr(impl, "FUSES_BIAS", False)
    # The inputs were already cast by the wrapper; autocast must not re-cast the inner matmuls.
    with _no_autocast(x.device.type):
        if impl is cpu:  # (its kernels find inf/NaN inputs themselves, in C++)
            return cpu.forward(x.contiguous(), values, crow, col, t, bias, dense.nonfinite_rows)
        y = impl.forward(x.contiguous(), values, crow, col, t, *((bias,) if fused else ()))
    if bias is not None and not fused:
        y.add_(bias)  # y is this op's fresh output: in place saves a second (N, out) buffer
    return dense.nonfinite_rows(x, y, values, crow, col, bias)


def _no_autocast(device_type: str):
    """Autocast off for the body (a no-op context where it is off already: entering autocast
    costs ~10 µs, a measurable share of a batch-1 call)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


_PLAIN = (Tensor, torch.nn.Parameter)


def _plain_no_grad(x: Tensor, values: Tensor, bias: Tensor | None) -> bool:
    """Whether a call may run the op's body directly: eager (no trace), no gradient can flow,
    and plain tensors (no FakeTensor, DTensor or functorch wrapper, which the op handles)."""
    if torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return (type(x) in _PLAIN and type(values) in _PLAIN and x.device.type in ("cpu", "cuda")
            and (bias is None or type(bias) in _PLAIN) and not wrapped(x) and not wrapped(values))


@_sparse_linear.register_fake
def _(x, values, crow, col, crow_t, col_t, perm, bias, backend):
    return x.new_empty(x.shape[0], _out_features(values, crow))


@torch.library.custom_op("structlearn::sparse_linear_backward", mutates_args=())
def _sparse_linear_backward(
    gy: Tensor,
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    crow_t: Tensor,
    col_t: Tensor,
    perm: Tensor,
    backend: str,
    need_input: bool,
    need_values: bool,
    need_bias: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_body(gy, x, values, crow, col, (crow_t, col_t, perm), backend, need_input,
                          need_values, need_bias)


def _backward_body(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
                   backend: str, need_input: bool, need_values: bool, need_bias: bool,
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The backward op's body: ``(gx, gv, gb)``, an empty tensor for each not needed."""
    impl = _IMPL[backend]
    _check_operands(x, values, crow, col, backend, t if need_input else None, gy)
    gy = gy.contiguous()
    if need_input:
        t = _transpose_for(backend, x, values, crow, col, t)
    with _no_autocast(x.device.type):
        if getattr(impl, "FUSES_BIAS", False):
            gx, gv, gb = impl.backward(gy, x.contiguous(), values, crow, col, t, need_input,
                                       need_values, need_bias)
        else:
            gx = gv = None
            if need_input or need_values:
                gx, gv = impl.backward(gy, x.contiguous(), values, crow, col, t, need_input,
                                       need_values)
            gb = gy.sum(0) if need_bias else None
    return ((gx if need_input else x.new_empty(0)), (gv if need_values else values.new_empty(0)),
            (gb if need_bias else x.new_empty(0)))


@_sparse_linear_backward.register_fake
def _(gy, x, values, crow, col, crow_t, col_t, perm, backend, need_input, need_values,
      need_bias=False):
    gx = torch.empty_like(x) if need_input else x.new_empty(0)
    gv = torch.empty_like(values) if need_values else values.new_empty(0)
    gb = gy.new_empty(gy.shape[1]) if need_bias else x.new_empty(0)
    return gx, gv, gb


def _setup_context(ctx, inputs, output):
    x, values, crow, col, crow_t, col_t, perm, bias, backend = inputs
    ctx.save_for_backward(x, values, crow, col, crow_t, col_t, perm)
    ctx.backend = backend


def _backward(ctx, gy):
    x, values, crow, col, crow_t, col_t, perm = ctx.saved_tensors
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.needs_input_grad[7]
    gx = gv = gb = None
    if need_x or need_v or need_b:
        gx, gv, gb = _sparse_linear_backward(
            gy, x, values, crow, col, crow_t, col_t, perm, ctx.backend, need_x, need_v, need_b
        )
        gx, gv, gb = (gx if need_x else None), (gv if need_v else None), (gb if need_b else None)
    return gx, gv, None, None, None, None, None, gb, None


_sparse_linear.register_autograd(_backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The op's forward and backward bodies as a plain ``autograd.Function``, for eager calls
    on plain tensors: the custom op's dispatch (what traces, FakeTensors and subclasses need)
    costs tens of microseconds per call, this a few. Same kernels, same checks."""

    @staticmethod
    def forward(ctx, x, values, bias, crow, col, t, backend, run):
        ctx.save_for_backward(x, values, crow, col, *t)
        ctx.backend = backend
        return run(x) if run is not None else _forward(x, values, crow, col, t, bias, backend)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, values, crow, col, *t = ctx.saved_tensors
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        if not (need_x or need_v or need_b):
            return (None,) * 8
        gx, gv, gb = _backward_body(gy, x, values, crow, col, tuple(t), ctx.backend, need_x,
                                    need_v, need_b)
        return (gx if need_x else None), (gv if need_v else None), (gb if need_b else None), \
            None, None, None, None, None


def eager_call(x: Tensor, values: Tensor, bias: Tensor | None, crow: Tensor, col: Tensor, t,
               backend: str, run=None) -> Tensor:
    """``(N, out)`` for ``x (N, in)`` on a resolved sparse ``backend`` (not ``dense``), eager:
    the op's body directly when no gradient flows, else through :class:`_Eager`. The caller
    checked the operands' shapes and dtypes and that the tensors are plain (a layer's call
    plan); ``t``: the transposed structure (empty tensors where not needed); ``run``: the
    forward on these operands with its checks made (``cpu``'s ``forward_runner``), if any."""
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _Eager.apply(x, values, bias, crow, col, t, backend, run)
    return run(x) if run is not None else _forward(x, values, crow, col, t, bias, backend)


def _out_features(values: Tensor, crow: Tensor) -> int:
    return (crow.shape[0] - 1) * (values.shape[1] if values.dim() == 3 else 1)


def _check(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, bias: Tensor | None) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (*, in_features)")
    if values.dim() not in (1, 3) or values.shape[0] != col.shape[0]:
        raise ValueError(
            f"values must be (nnz,) or block values (nblocks, bo, bi) with len(col) = "
            f"{col.shape[0]} entries, got shape {tuple(values.shape)}"
        )
    if values.dim() == 3 and x.shape[-1] % values.shape[2]:
        raise ValueError(f"in_features={x.shape[-1]} is not a multiple of the block width "
                         f"{values.shape[2]}")
    if values.dtype != x.dtype:
        raise TypeError(f"x and values must have the same dtype, got {x.dtype} and {values.dtype}")
    out = _out_features(values, crow)
    if bias is not None and (bias.dtype != x.dtype or bias.shape != (out,)):
        raise ValueError(
            f"bias must have shape ({out},) and dtype {x.dtype}, "
            f"got {tuple(bias.shape)} {bias.dtype}"
        )
    if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"crow and col must share an integer dtype, got {crow.dtype} and {col.dtype}")


def _shape_of(x: Tensor, values: Tensor, crow: Tensor):
    """``(in_features, out_features, block, density, (batch, in, out) or None)`` of a call."""
    in_features, out_features = x.shape[-1], _out_features(values, crow)
    block = tuple(values.shape[1:]) if values.dim() == 3 else None
    density = values.numel() / max(1, in_features * out_features)
    batch = x.numel() // max(1, in_features)
    # None where a size is symbolic. Under torch.compile isinstance(s, int) holds for a SymInt
    # too, so ask torch's shape utility there (dynamo answers it while tracing); eager calls,
    # the hot path, keep the plain type check
    if torch.compiler.is_compiling():
        sizes = (batch, in_features, out_features, values.numel())
        static = all(has_static_value(s) for s in sizes)
    else:
        static = isinstance(batch, int)
    shape = (batch, in_features, out_features) if static else None
    return in_features, out_features, block, density, shape


def resolve_backend(x: Tensor, values: Tensor, crow: Tensor, col: Tensor,
                    backend: str = "auto") -> str:
    """The backend a call of :func:`sparse_linear` with these arguments runs: ``backend``
    itself, or what ``'auto'`` picks — the fastest measured on this machine for such a call
    (training when a gradient will flow, else inference; see
    :mod:`~torch_structlearn.ops.calibrate`), or the shipped prior."""
    if backend != "auto":
        return backend
    values = operands.csr_shaped(values)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = x.dtype
    _, _, block, density, shape = _shape_of(x, values, crow)
    training = torch.is_grad_enabled() and (x.requires_grad or values.requires_grad)
    if (torch.compiler.is_compiling() and shape is not None and calibrate.enabled()
            and not torch.compiler.is_exporting()):
        return _choice_in_trace(x.device, dtype, density, block, shape, training)
    # (torch.export traces with fake tensors, where nothing can be timed: auto.choose gives
    # the decision this process made before tracing, else the shipped prior)

    def candidates() -> list[str]:
        return [b for b in available_backends(block, x.device) if b != "auto"]

    def runs(names: list[str]) -> dict:
        return _calibration_runs(shape, values.detach().to(dtype), crow, col, training, names)

    return auto.choose(x.device, dtype, density, block, shape, training=training,
                       candidates=candidates, make_runs=runs)


@torch.compiler.assume_constant_result
def _choice_in_trace(device: torch.device, dtype: torch.dtype, density: float,
                     block: tuple[int, int] | None, shape: tuple[int, int, int],
                     training: bool) -> str:
    """``auto``'s backend for a call met while ``torch.compile`` traces (static shapes): decided
    for real at trace time and a constant of the graph — the decision held in this process or
    in this machine's cache file, else a calibration as the first eager call would make, on a
    random structure of the same density (the trace has only fake indices; decisions are kept
    per density bucket, not per structure). So a model compiled before any eager call runs the
    backends an eager one would."""
    def candidates() -> list[str]:
        return [b for b in available_backends(block, device) if b != "auto"]

    made = calibrate.recall(device, dtype, block, shape, density, training, candidates)
    if made is not None:
        return made
    batch, in_features, out_features = shape
    bo, bi = block or (1, 1)
    rows, cols = out_features // bo, in_features // bi
    k = min(cols, max(1, round(density * cols)))
    g = torch.Generator().manual_seed(0)
    col = torch.rand(rows, cols, generator=g).argsort(1)[:, :k].sort(1).values.reshape(-1)
    crow = torch.arange(rows + 1) * k
    values = torch.randn(rows * k, *((bo, bi) if block else ()), generator=g).to(device, dtype)
    crow, col = crow.to(device), col.to(device)
    return calibrate.decide(
        device, dtype, block, shape, density, training, candidates,
        lambda names: _calibration_runs(shape, values, crow, col, training, names),
        lambda: auto.prior(device, dtype, density, block, shape))


def _calibration_runs(shape: tuple[int, int, int], values: Tensor, crow: Tensor, col: Tensor,
                      training: bool, names: list[str]) -> dict:
    """One call of each backend in ``names`` on this structure and random inputs of
    ``shape = (batch, in, out)``, made as a layer's call plan makes it: its caches built
    beforehand, the ``cpu`` kernels through their checked-once runner, the dense backend's
    weight kept between calls (and, where no gradient flows, not rewritten)."""
    batch, in_features, out_features = shape
    bi = values.shape[2] if values.dim() == 3 else 1
    check_csr_bounds(crow, col, (crow.numel() - 1, in_features // bi))  # before any backend reads it
    g = torch.Generator().manual_seed(0)
    dev, dt = values.device, values.dtype
    with torch.inference_mode(False):  # a layer's parameters are normal tensors (versioned)
        x = torch.randn(batch, in_features, generator=g).to(dev, dt).requires_grad_(training)
        v = values.detach().clone().requires_grad_(training)
        gy = torch.randn(batch, out_features, generator=g).to(dev, dt)
    block = tuple(values.shape[1:]) if values.dim() == 3 else None
    n_cols = in_features // (block[1] if block else 1)
    empty = (col.new_empty(0),) * 3
    runs = {}
    for name in names:
        transpose = csr_transpose(crow, col, n_cols) if name in NEEDS_TRANSPOSE and training else empty
        index = dense.flat_index(crow, col, in_features) if name == "dense" and not block else None
        cache = dense.DenseWeight() if name == "dense" else None  # (as a layer keeps it)
        runner = (cpu.kernels().forward_runner(v.detach(), crow, col, None, in_features,
                                               dense.nonfinite_rows)
                  if name == "cpu" and x.device.type == "cpu" else None)

        if name == "dense" and not training:  # the layer's inference plan
            runner = cache.inference(v.detach(), crow, col, in_features, index)

        def run(name=name, transpose=transpose, index=index, cache=cache, runner=runner):
            if name == "dense" and not training:
                return runner(x)
            with torch.set_grad_enabled(training):
                if name == "dense":
                    y = dense.linear(x, v, crow, col, None, index, cache)
                else:
                    y = eager_call(x, v, None, crow, col, transpose, name, runner)
                if training:
                    x.grad = v.grad = None
                    y.backward(gy)

        run.backend = name  # (what a test's injected timer reads)
        runs[name] = run
    return runs


def sparse_linear(
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    bias: Tensor | None = None,
    *,
    backend: str = "auto",
    transpose: tuple[Tensor, Tensor, Tensor] | None = None,
    dense_index: Tensor | None = None,
    dense_cache: dense.DenseWeight | None = None,
    structure_checked: bool = False,
) -> Tensor:
    """``y = x Wᵀ + b`` where ``W`` is the ``(out, in)`` CSR matrix ``(crow, col, values)``,
    or the BSR matrix of ``(bo, bi)`` blocks when ``values`` is 3-D.

    Args:
        x: ``(*, in_features)`` input.
        values: ``(nnz,)`` nonzero weights in CSR order (a layer's ``(nnz, 1)`` is read as
            that: :func:`~torch_structlearn.ops.operands.csr_shaped`), or ``(nblocks, bo, bi)`` blocks.
        crow: ``(out_features + 1,)`` row pointers (``(out_features / bo + 1,)`` block-row
            pointers for blocks); col: ``(nnz,)`` column indices or ``(nblocks,)`` block
            columns (int32/int64).
        bias: optional ``(out_features,)``.
        backend: ``'auto'`` (the fastest measured here: :func:`resolve_backend`), ``'cpu'``
            (CPU), ``'csr'``, ``'dense'``, ``'torch_sparse'`` (unstructured only) or
            ``'triton'`` (blocks on CUDA).
        transpose: the cached ``csr_transpose(crow, col, in_features / bi)`` for the input
            gradient of the backends in ``NEEDS_TRANSPOSE``; computed when omitted (or empty)
            and a gradient may be needed.
        dense_index: the cached ``ops.dense.flat_index(crow, col, in_features)`` for the dense
            backend; computed when omitted (or empty).
        dense_cache: a :class:`~torch_structlearn.ops.dense.DenseWeight` the dense backend
            keeps its weight in between calls (what a layer passes).
        structure_checked: the caller has validated ``crow``/``col`` against the shape (a
            layer does once per change of its buffers): the ``dense`` backend then skips its
            per-call bounds check (O(nnz)); the op's body still checks for the others.
    Returns:
        ``(*, out_features)``. Under autocast, inputs are cast to the autocast dtype (like
        ``nn.Linear``).
    """
    check_backend(backend)
    values = operands.csr_shaped(values)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        x, values = x.to(dt), values.to(dt)
        bias = bias.to(dt) if bias is not None else None
    _check(x, values, crow, col, bias)
    in_features, out_features, block, _, _ = _shape_of(x, values, crow)
    check_block_backend(backend, block, x.device)
    backend = resolve_backend(x, values, crow, col, backend)
    if backend == "dense":
        if not (structure_checked or torch.compiler.is_compiling()):  # (the op checks the others)
            _check_operands(x.reshape(-1, in_features), values, crow, col, backend)
        return dense.linear(x, values, crow, col, bias, dense_index, dense_cache)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if _plain_no_grad(x, values, bias):  # inference: the custom op's dispatch costs ~0.1 ms
        y = _forward(x2, values, crow, col, transpose, bias, backend)
        return y.reshape(*lead, out_features)
    n_cols = in_features // block[1] if block else in_features
    if transpose is None or transpose[0].numel() != n_cols + 1:  # missing / empty cache
        # only the input gradient reads the transpose: none for inference (no_grad, eval)
        grad = torch.is_grad_enabled() and (x.requires_grad or values.requires_grad)
        grad = grad and backend in NEEDS_TRANSPOSE
        transpose = csr_transpose(crow, col, n_cols) if grad else (col.new_empty(0),) * 3
    y = _sparse_linear(x2, values, crow, col, *transpose, bias, backend)
    return y.reshape(*lead, out_features)
