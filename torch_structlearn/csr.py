"""CSR (and block-CSR) index structures without values: the invariants every kernel relies
on and their checks, and the index transforms the kernels and layers share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["validate_csr", "check_csr_bounds", "row_of_entries", "csr_transpose", "bsr_to_csr"]

_INT_DTYPES = (torch.int32, torch.int64)
_MAX_SIZE = 2**31 - 1  # rows and columns of a structure (far beyond any layer)


def _as_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise ValueError(f"{name} must be a pair (out_features, in_features), got {shape!r}")
    rows, cols = shape
    for what, v in (("out_features", rows), ("in_features", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_SIZE:
            raise ValueError(f"{name}: {what} must be an int in [0, 2**31 - 1], got {v!r}")
    return int(rows), int(cols)


def validate_csr(crow_indices: Tensor, col_indices: Tensor, shape: Sequence[int]) -> None:
    """Check every CSR invariant; raise ``ValueError``/``TypeError`` naming the one that is broken.

    Invariants: both index tensors are 1-D integer tensors; ``crow_indices`` has ``rows + 1``
    entries, starts at 0, never decreases and ends at ``nnz = len(col_indices)``; every column
    lies in ``[0, cols)``; within each row the columns are strictly increasing (sorted, unique).
    """
    rows, cols = _as_shape(shape)
    for name, t in (("crow_indices", crow_indices), ("col_indices", col_indices)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"{name} must have an integer dtype (int32 or int64), got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    nnz = col_indices.numel()
    if crow_indices.numel() != rows + 1:
        raise ValueError(
            f"crow_indices must have out_features + 1 = {rows + 1} entries, "
            f"got {crow_indices.numel()}"
        )
    crow = crow_indices.to("cpu", torch.int64)
    col = col_indices.to("cpu", torch.int64)
    if int(crow[0]) != 0:
        raise ValueError(f"crow_indices must start at 0, got {int(crow[0])}")
    if int(crow[-1]) != nnz:
        raise ValueError(
            f"crow_indices must end at nnz = len(col_indices) = {nnz}, got {int(crow[-1])}"
        )
    steps = crow.diff()
    if rows and bool((steps < 0).any()):
        row = int((steps < 0).nonzero()[0])
        raise ValueError(f"crow_indices must be non-decreasing (monotone); it decreases at row {row}")
    if nnz:
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi >= cols:
            bad = lo if lo < 0 else hi
            raise ValueError(f"col_indices must lie in [0, in_features={cols}), found {bad}")
        # Strictly increasing inside each row: a non-increase is only allowed where a row starts.
        bad = col[1:] <= col[:-1]
        if bool(bad.any()):
            row_start = torch.zeros(nnz, dtype=torch.bool)
            row_start[crow[1:-1][crow[1:-1] < nnz]] = True
            bad &= ~row_start[1:]
            if bool(bad.any()):
                pos = int(bad.nonzero()[0]) + 1
                row = int(torch.searchsorted(crow, pos, right=True)) - 1
                kind = "unique" if int(col[pos]) == int(col[pos - 1]) else "sorted"
                raise ValueError(
                    f"col_indices must be {kind} within each row: row {row} has "
                    f"{int(col[pos - 1])} followed by {int(col[pos])}"
                )


def check_csr_bounds(crow: Tensor, col: Tensor, shape: Sequence[int], what: str = "structure") -> None:
    """The part of :func:`validate_csr` that keeps a kernel's reads in bounds, cheap enough for
    every call (O(rows + nnz), vectorised): ``crow`` starts at 0, never decreases and ends at
    ``len(col)``; every column lies in ``[0, cols)``. ``ValueError`` naming ``what`` and the
    broken invariant; on CUDA the checks are asynchronous device asserts (no synchronisation;
    a broken structure stops the stream with a device-side assertion instead of reading out of
    bounds)."""
    rows, cols = _as_shape(shape)
    if crow.dim() != 1 or col.dim() != 1 or crow.numel() != rows + 1:
        raise ValueError(f"{what}: crow must be 1-D with rows + 1 = {rows + 1} entries and col "
                         f"1-D, got shapes {tuple(crow.shape)} and {tuple(col.shape)}")
    nnz = col.numel()
    if crow.device.type != "cpu":
        torch._assert_async(crow[0] == 0, f"{what}: crow must start at 0")
        torch._assert_async(crow[-1] == nnz, f"{what}: crow must end at len(col)")
        if rows:
            torch._assert_async((crow.diff() >= 0).all(), f"{what}: crow must not decrease")
        if nnz:
            lo, hi = torch.aminmax(col)
            torch._assert_async((lo >= 0) & (hi < cols), f"{what}: col out of range")
        return
    first, last = int(crow[0]), int(crow[-1])
    if first != 0 or last != nnz:
        raise ValueError(f"{what}: crow must start at 0 and end at len(col) = {nnz}, got "
                         f"{first} ... {last}")
    if rows and bool((crow.diff() < 0).any()):
        raise ValueError(f"{what}: crow must be non-decreasing (monotone)")
    if nnz:
        lo, hi = (int(v) for v in torch.aminmax(col))
        if lo < 0 or hi >= cols:
            raise ValueError(f"{what}: columns must lie in [0, {cols}), found "
                             f"{lo if lo < 0 else hi}")


def row_of_entries(crow: Tensor, nnz: int | None = None) -> Tensor:
    """``(nnz,)`` int64 row of every entry of a CSR structure (of every block, for BSR), on
    ``crow``'s device. Pass ``nnz`` when known to spare CUDA a synchronisation."""
    counts = crow.diff().long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device), counts,
                                   output_size=nnz)


def csr_transpose(crow: Tensor, col: Tensor, n_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """Transpose a CSR structure without values.

    Args:
        crow: ``(rows + 1,)`` row pointers.  col: ``(nnz,)`` column indices.  n_cols: columns.
    Returns:
        ``(crow_t, col_t, perm)``: the CSR structure of the transpose, shape ``(n_cols, rows)``,
        in the dtype and device of ``crow``, and ``perm`` ``(nnz,)`` int64 such that
        ``values_t = values[perm]``.
    """
    row_of = row_of_entries(crow, col.numel())
    # Stable sort by column keeps rows ascending inside each column (i.e. sorted col_t).
    perm = torch.sort(col.long(), stable=True).indices
    col_t = row_of[perm].to(crow.dtype)
    crow_t = torch.zeros(n_cols + 1, dtype=torch.int64, device=crow.device)
    crow_t[1:] = torch.bincount(col.long(), minlength=n_cols).cumsum(0)
    return crow_t.to(crow.dtype), col_t, perm


def bsr_to_csr(crow: Tensor, col: Tensor, block: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Expand a BSR structure of ``(bo, bi)`` blocks to its element CSR structure.

    Args:
        crow: ``(R + 1,)`` block-row pointers.  col: ``(nblocks,)`` block columns (a BSR
        structure, as :meth:`Connectivity.block_structure` returns).  block: ``(bo, bi)``.
    Returns:
        ``(crow_e (R * bo + 1,), col_e (nblocks * bo * bi,), index)``: the element CSR in
        ``crow``'s dtype, and the int64 ``index`` such that
        ``csr_values = bsr_values.reshape(-1)[index]`` for ``bsr_values (nblocks, bo, bi)``.
    """
    bo, bi = block
    nblk = col.numel()
    dev = crow.device
    # element row of every (block, a, c) entry, enumerated block-major; a stable sort by row
    # keeps blocks (hence columns) ascending within each element row.
    row = (row_of_entries(crow, nblk) * bo)[:, None, None] + torch.arange(bo, device=dev)[None, :, None]
    index = torch.sort(row.expand(nblk, bo, bi).reshape(-1), stable=True).indices
    crow_e = crow.new_zeros((crow.numel() - 1) * bo + 1)
    crow_e[1:] = (crow.diff() * bi).repeat_interleave(bo).cumsum(0)
    col_e = col.long().repeat_interleave(bo * bi) * bi + torch.arange(bi, device=dev).repeat(nblk * bo)
    return crow_e, col_e[index].to(crow.dtype), index
