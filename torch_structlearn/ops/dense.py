"""``dense`` backend: scatter the values into a dense weight and use dense matmuls.

The reference for every other backend, and the fast path at high density.
Shapes: ``x (N, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rows(crow: Tensor) -> Tensor:
    counts = crow.diff().long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device), counts)


def dense_weight(values: Tensor, crow: Tensor, col: Tensor, in_features: int) -> Tensor:
    """``(out, in)`` dense weight with ``values`` at the CSR positions and zeros elsewhere."""
    out_features = crow.numel() - 1
    w = values.new_zeros(out_features, in_features)
    return w.index_put((_rows(crow), col.long()), values)


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t) -> Tensor:
    return x @ dense_weight(values, crow, col, x.shape[1]).T


def grad_input(gy: Tensor, values: Tensor, crow: Tensor, col: Tensor, t, in_features: int) -> Tensor:
    return gy @ dense_weight(values, crow, col, in_features)


def grad_values(gy: Tensor, x: Tensor, crow: Tensor, col: Tensor) -> Tensor:
    return (gy.T @ x)[_rows(crow), col.long()]
