"""``torch_sparse`` backend: the optional torch-sparse package (``pip install .[torch-sparse]``).

* forward / input grad: ``torch_sparse.spmm`` on the COO view (and on the cached transpose).
* values grad: torch-sparse has no sampled product, so it is a row-chunked gather-and-dot.
Shapes: ``x (N, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..connectivity import row_of_entries

AVAILABLE = importlib.util.find_spec("torch_sparse") is not None


def _spmm(crow: Tensor, col: Tensor, values: Tensor, n_cols: int, dense: Tensor) -> Tensor:
    import torch_sparse

    index = torch.stack([row_of_entries(crow, col.numel()), col.long()])
    # spmm computes (rows x n_cols sparse) @ (n_cols x N dense).
    out = torch_sparse.spmm(index, values, crow.numel() - 1, n_cols, dense.T.contiguous())
    return out.T.contiguous()  # the op promises (and its fake returns) a contiguous result


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t) -> Tensor:
    return _spmm(crow, col, values, x.shape[1], x)


def _grad_values(gy: Tensor, x: Tensor, crow: Tensor, col: Tensor, chunk: int = 1 << 16) -> Tensor:
    rows, col = row_of_entries(crow, col.numel()), col.long()
    gyt, xt = gy.T.contiguous(), x.T.contiguous()
    out = x.new_empty(col.numel())
    for s in range(0, col.numel(), chunk):
        e = s + chunk
        out[s:e] = (gyt[rows[s:e]] * xt[col[s:e]]).sum(1)
    return out


def backward(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
             need_input: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    crow_t, col_t, perm = t
    gx = _spmm(crow_t, col_t, values[perm], gy.shape[1], gy) if need_input else None
    gv = _grad_values(gy, x, crow, col) if need_values else None
    return gx, gv
