"""``torch_sparse`` backend: the optional torch-sparse package (``pip install .[torch-sparse]``).

* forward / input grad: torch-sparse's CSR SpMM (``torch.ops.torch_sparse.spmm_sum``, what
  ``SparseTensor @ dense`` runs; the COO ``torch_sparse.spmm`` gathers one dense row per nonzero
  and was 10-30x slower), and the same on the cached transpose.
* values grad: torch-sparse's own autograd of that product (its C++ value-backward kernel);
  a gather-and-dot in Python was 5x slower.
Shapes: ``x (N, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..connectivity import row_of_entries

AVAILABLE = importlib.util.find_spec("torch_sparse") is not None


def _spmm(crow: Tensor, col: Tensor, values: Tensor, dense: Tensor) -> Tensor:
    """``dense @ Wᵀ`` for the CSR ``W`` — torch-sparse's CSR SpMM kernel (the one behind
    ``SparseTensor @ dense``) on ``W @ denseᵀ``."""
    import torch_sparse  # noqa: F401  (registers torch.ops.torch_sparse)

    # detached: the kernel's own autograd wrapper would want the COO rows for a values grad,
    # and this op's gradients come from backward() below
    out = torch.ops.torch_sparse.spmm_sum(None, crow.long(), col.long(), values.detach(), None,
                                          None, dense.detach().T.contiguous())
    return out.T.contiguous()  # the op promises (and its fake returns) a contiguous result


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t) -> Tensor:
    return _spmm(crow, col, values, x)


def _grad_values(gy: Tensor, x: Tensor, crow: Tensor, col: Tensor, values: Tensor) -> Tensor:
    """The values gradient from torch-sparse's own autograd of its CSR SpMM (its C++
    value-backward kernel; it recomputes the product)."""
    import torch_sparse  # noqa: F401

    rowptr, col = crow.long(), col.long()
    with torch.enable_grad():
        v = values.detach().requires_grad_()
        out = torch.ops.torch_sparse.spmm_sum(row_of_entries(rowptr, col.numel()), rowptr, col, v,
                                              None, None, x.detach().T.contiguous())
        (gv,) = torch.autograd.grad(out, v, gy.T.contiguous())
    return gv


def backward(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
             need_input: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    crow_t, col_t, perm = t
    gx = _spmm(crow_t, col_t, values[perm], gy) if need_input else None
    gv = _grad_values(gy, x, crow, col, values) if need_values else None
    return gx, gv
