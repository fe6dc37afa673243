"""The sparse linear kernel: ``y = x Wᵀ + b`` for a CSR weight, as a ``torch.library`` custom op.

``structlearn::sparse_linear`` and its backward ``structlearn::sparse_linear_backward`` are
registered with fake (meta) implementations and ``register_autograd``, so the op works under
``torch.compile(fullgraph=True)`` without graph breaks, and gradients flow to the input, the
nonzero values and the bias. Each backend is one module of this package:

* ``csr``          torch native sparse CSR (MKL / cuSPARSE); values grad by sampled product
* ``torch_sparse`` the optional torch-sparse package
* ``dense``        masked dense weight + ``F.linear`` in plain differentiable torch ops (no custom
  op is needed for it; it is traced by torch.compile like any torch code)
* ``auto``         per device/dtype/density from the crossover table the benchmark measured
"""


import torch
from torch import Tensor

from ..connectivity import csr_transpose
from . import auto, csr, dense
from . import torch_sparse as torch_sparse_backend

__all__ = ["sparse_linear", "BACKENDS", "available_backends", "check_backend"]

_IMPL = {"csr": csr, "torch_sparse": torch_sparse_backend}
BACKENDS = ("auto", "csr", "dense", "torch_sparse")


def check_backend(backend: str) -> str:
    """``backend`` if it names a backend usable here, else ``ValueError`` saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch_sparse" and not torch_sparse_backend.AVAILABLE:
        raise ValueError("backend='torch_sparse' needs the torch-sparse package: pip install '.[torch-sparse]'")
    return backend


def available_backends() -> list[str]:
    """Backends usable in this environment (``torch_sparse`` only when installed)."""
    return [b for b in BACKENDS if b != "torch_sparse" or torch_sparse_backend.AVAILABLE]


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
    # The inputs were already cast by the wrapper; autocast must not re-cast the inner matmuls.
    with torch.autocast(x.device.type, enabled=False):
        y = _IMPL[backend].forward(x.contiguous(), values, crow, col, (crow_t, col_t, perm))
    if bias is not None:
        y = y + bias
    return y


@_sparse_linear.register_fake
def _(x, values, crow, col, crow_t, col_t, perm, bias, backend):
    return x.new_empty(x.shape[0], crow.shape[0] - 1)


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
) -> tuple[Tensor, Tensor]:
    with torch.autocast(x.device.type, enabled=False):
        gx, gv = _IMPL[backend].backward(
            gy.contiguous(), x.contiguous(), values, crow, col, (crow_t, col_t, perm),
            need_input, need_values,
        )
    return (gx if need_input else x.new_empty(0)), (gv if need_values else values.new_empty(0))


@_sparse_linear_backward.register_fake
def _(gy, x, values, crow, col, crow_t, col_t, perm, backend, need_input, need_values):
    gx = torch.empty_like(x) if need_input else x.new_empty(0)
    gv = torch.empty_like(values) if need_values else values.new_empty(0)
    return gx, gv


def _setup_context(ctx, inputs, output):
    x, values, crow, col, crow_t, col_t, perm, bias, backend = inputs
    ctx.save_for_backward(x, values, crow, col, crow_t, col_t, perm)
    ctx.backend = backend


def _backward(ctx, gy):
    x, values, crow, col, crow_t, col_t, perm = ctx.saved_tensors
    need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.needs_input_grad[7]
    gx = gv = gb = None
    if need_x or need_v:
        gx, gv = _sparse_linear_backward(
            gy, x, values, crow, col, crow_t, col_t, perm, ctx.backend, need_x, need_v
        )
        gx = gx if need_x else None
        gv = gv if need_v else None
    if need_b:
        gb = gy.sum(0)
    return gx, gv, None, None, None, None, None, gb, None


_sparse_linear.register_autograd(_backward, setup_context=_setup_context)


def _check(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, bias: Tensor | None) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (*, in_features)")
    if values.dim() != 1 or values.shape[0] != col.shape[0]:
        raise ValueError(
            f"values must be 1-D with nnz = len(col) = {col.shape[0]} entries, "
            f"got shape {tuple(values.shape)}"
        )
    if values.dtype != x.dtype:
        raise TypeError(f"x and values must have the same dtype, got {x.dtype} and {values.dtype}")
    if bias is not None and (bias.dtype != x.dtype or bias.shape != (crow.shape[0] - 1,)):
        raise ValueError(
            f"bias must have shape ({crow.shape[0] - 1},) and dtype {x.dtype}, "
            f"got {tuple(bias.shape)} {bias.dtype}"
        )
    if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"crow and col must share an integer dtype, got {crow.dtype} and {col.dtype}")


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
) -> Tensor:
    """``y = x Wᵀ + b`` where ``W`` is the ``(out, in)`` CSR matrix ``(crow, col, values)``.

    Args:
        x: ``(*, in_features)`` input.
        values: ``(nnz,)`` nonzero weights, in CSR order.
        crow: ``(out_features + 1,)`` row pointers; col: ``(nnz,)`` column indices (int32/int64).
        bias: optional ``(out_features,)``.
        backend: ``'auto'``, ``'csr'``, ``'dense'`` or ``'torch_sparse'``.
        transpose: the cached ``csr_transpose(crow, col, in_features)`` for the sparse
            backends; computed when omitted (or empty).
        dense_index: the cached ``ops.dense.flat_index(crow, col, in_features)`` for the dense
            backend; computed when omitted (or empty).
    Returns:
        ``(*, out_features)``. Under autocast, inputs are cast to the autocast dtype (like
        ``nn.Linear``).
    """
    check_backend(backend)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        x, values = x.to(dt), values.to(dt)
        bias = bias.to(dt) if bias is not None else None
    _check(x, values, crow, col, bias)
    in_features, out_features = x.shape[-1], crow.shape[0] - 1
    if backend == "auto":
        density = col.shape[0] / max(1, in_features * out_features)
        backend = auto.choose(x.device, x.dtype, density)
    if backend == "dense":
        return dense.linear(x, values, crow, col, bias, dense_index)
    if transpose is None or transpose[0].numel() != in_features + 1:  # missing / empty cache
        transpose = csr_transpose(crow, col, in_features)
    lead = x.shape[:-1]
    y = _sparse_linear(
        x.reshape(-1, in_features), values, crow, col, *transpose, bias, backend
    )
    return y.reshape(*lead, out_features)
