"""``dense`` backend: scatter the values into a dense weight and call ``F.linear``.

Plain differentiable torch ops (no custom op needed): autograd keeps the dense weight from the
forward pass for the input gradient, and the values gradient is the dense ``gyᵀ x`` gathered at
the nonzeros (the backward of ``scatter``). It is the fast path at high density, where the cost
over ``nn.Linear`` is one scatter and one gather of ``out * in`` elements per step.
Shapes: ``x (*, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``; for block layers
``values (nblocks, bo, bi)`` on the BSR structure ``crow (out / bo + 1,)``, ``col (nblocks,)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..connectivity import row_of_entries


def flat_index(crow: Tensor, col: Tensor, in_features: int) -> Tensor:
    """``(nnz,)`` int64 position ``row * in_features + col`` of every nonzero in the flattened
    dense weight. Building it costs as much as the scatter itself (measured: ~60 ms for 6 M
    nonzeros on the 2-core CPU), so ``StructLearnedLinear`` caches it when it may use dense."""
    return row_of_entries(crow, col.numel()).mul_(in_features).add_(col)


def dense_weight(values: Tensor, crow: Tensor, col: Tensor, in_features: int,
                 index: Tensor | None = None) -> Tensor:
    """``(out, in)`` dense weight with ``values`` at the CSR positions, zeros elsewhere
    (differentiable with respect to ``values``). ``index``: cached :func:`flat_index`
    (unused for block values, which are placed block by block)."""
    if values.dim() == 3:
        bo, bi = values.shape[1:]
        blocks = values.new_zeros(crow.numel() - 1, in_features // bi, bo, bi)
        blocks.index_put_((row_of_entries(crow, col.numel()), col.long()), values)
        return blocks.permute(0, 2, 1, 3).reshape(-1, in_features)
    out_features = crow.numel() - 1
    if index is None or index.numel() != col.numel():
        index = flat_index(crow, col, in_features)
    # in place into the fresh zeros: the out-of-place scatter would copy all out * in zeros
    # first (measured: ~30 ms of a 4096 x 3072 step at 50 % on the 2-core CPU)
    w = values.new_zeros(out_features * in_features).scatter_(0, index, values)
    return w.view(out_features, in_features)


def linear(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, bias: Tensor | None,
           index: Tensor | None = None) -> Tensor:
    """``(*, in) -> (*, out)``: ``F.linear`` with the masked dense weight."""
    return F.linear(x, dense_weight(values, crow, col, x.shape[-1], index), bias)
