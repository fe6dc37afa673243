"""The O(1) checks every kernel entry makes before any backend reads through the indices
(a leaf module: the op in ``sparse_linear`` and the ``cpu`` kernels' own entry points share it)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check", "csr_shaped", "version"]


def check(x: Tensor, values: Tensor, crow: Tensor, col: Tensor) -> tuple[int, int]:
    """``(bo, bi)`` of a call ``x (N, in)``, ``values (nnz,)`` or ``(nblocks, bo, bi)``,
    ``crow``, ``col``, after checking dtypes, ranks and sizes (``(1, 1)`` when unstructured);
    ``TypeError``/``ValueError`` naming what is wrong."""
    if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"crow and col must share an integer dtype (int32 or int64), got "
                        f"{crow.dtype} and {col.dtype}")
    if crow.dim() != 1 or col.dim() != 1 or crow.numel() < 1:
        raise ValueError(f"crow and col must be 1-D (crow non-empty), got shapes "
                         f"{tuple(crow.shape)} and {tuple(col.shape)}")
    if x.dim() != 2 or values.dim() not in (1, 3) or values.shape[0] != col.numel():
        raise ValueError(f"x must be (N, in) and values (len(col) = {col.numel()},) or "
                         f"(len(col), bo, bi), got {tuple(x.shape)} and {tuple(values.shape)}")
    bo, bi = (1, 1) if values.dim() == 1 else (values.shape[1], values.shape[2])
    if x.shape[1] % bi:
        raise ValueError(f"in_features = {x.shape[1]} is not a multiple of the block width {bi}")
    return bo, bi


def csr_shaped(values: Tensor) -> Tensor:
    """A layer's ``(nnz, 1)`` values as the ``(nnz,)`` the kernels take (a view); other shapes
    (``(nnz,)``, blocks ``(nblocks, bo, bi)``) as they are."""
    shaped = isinstance(values, Tensor) and values.dim() == 2 and values.shape[1] == 1
    return values.view(-1) if shaped else values


def version(t: Tensor) -> int:
    """``t``'s version counter (bumped by every in-place change); -1 for an inference tensor,
    which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return -1
