"""``Connectivity``: which inputs each output unit of a sparse layer reads, as validated CSR.

Row ``i`` of a connectivity of shape ``(out_features, in_features)`` lists, sorted and unique,
the input indices that unit ``i`` connects to. A unit with no inputs (an empty row) is legal.
The structure is immutable: every constructor validates it once, and every accessor hands out
a copy, so nothing a caller does can break the invariants afterwards.

The CSR helpers every part of the package shares live here too: :func:`validate_csr`,
:func:`check_csr_bounds`, :func:`csr_transpose`, :func:`row_of_entries`, :func:`bsr_to_csr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import block as _check_block
from .checks import choice
from .checks import density as _check_density
from .checks import seed as check_seed

__all__ = ["Connectivity", "validate_csr", "check_csr_bounds", "csr_transpose", "fan_in_for_density", "row_of_entries",
           "bsr_to_csr", "check_nm", "top_per_group"]


# ---------------------------------------------------------------- CSR helpers (the structure's invariants,
# transposes and block views: what every kernel and the layer share)
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

def fan_in_for_density(density: float, in_features: int) -> int:
    """The per-unit fan-in ``ceil(density * in_features)`` used by every ``per_unit`` read-off."""
    density = _check_density(density)
    # round() first so that e.g. 0.07 * 100 = 7.000000000000001 gives 7, not 8.
    return min(in_features, math.ceil(round(density * in_features, 9)))


_DENSE_DRAW = 2**24  # uniforms drawn at once by Connectivity.random (64 MiB)


def _distinct_draws(rows: int, cols: int, k: int, gen) -> Tensor:
    """``(rows, k)``: per row, the first ``k`` distinct values of a sequence of iid uniform
    draws from ``[0, cols)`` — a uniform random ``k``-subset, in O(rows * k) time and memory
    (for ``k <= cols / 8``, a row rarely needs more than ``k + k/2 + 16`` draws; rows that do
    are drawn again)."""
    m = k + k // 2 + 16
    out = torch.empty(rows, k, dtype=torch.int64)
    todo = torch.arange(rows)
    while todo.numel():
        step = max(1, _DENSE_DRAW // m)
        missing = []
        for s in range(0, todo.numel(), step):
            idx = todo[s : s + step]
            draws = torch.randint(cols, (idx.numel(), m), generator=gen)
            sorted_, order = draws.sort(dim=1, stable=True)  # equal values keep draw order
            first = torch.ones_like(draws, dtype=torch.bool)
            first[:, 1:] = sorted_[:, 1:] != sorted_[:, :-1]
            first = torch.zeros_like(first).scatter_(1, order, first)  # back in draw order
            keep = first & (first.cumsum(1) <= k)
            ok = keep.sum(1) == k
            out[idx[ok]] = draws[ok][keep[ok]].view(-1, k)
            missing.append(idx[~ok])
        todo = torch.cat(missing)
    return out


class Connectivity:
    """An immutable CSR connectivity pattern: row = output unit, columns = its inputs.

    Args:
        crow_indices: ``(out_features + 1,)`` integer row pointers.
        col_indices: ``(nnz,)`` integer column indices, sorted and unique within each row.
        shape: ``(out_features, in_features)``.

    Stored on the CPU as int64. Constructors: :meth:`from_mask`, :meth:`random`,
    :meth:`from_scores`, :meth:`blocks`.
    """

    __slots__ = ("_crow", "_col", "_shape")

    def __init__(self, crow_indices: Tensor, col_indices: Tensor, shape: Sequence[int]):
        validate_csr(crow_indices, col_indices, shape)
        object.__setattr__(self, "_crow", crow_indices.detach().to("cpu", torch.int64).clone())
        object.__setattr__(self, "_col", col_indices.detach().to("cpu", torch.int64).clone())
        object.__setattr__(self, "_shape", _as_shape(shape))

    def __setattr__(self, name, value):
        raise AttributeError("Connectivity is immutable")

    # ------------------------------------------------------------------ accessors
    @property
    def crow_indices(self) -> Tensor:
        """``(out_features + 1,)`` int64 row pointers (a copy)."""
        return self._crow.clone()

    @property
    def col_indices(self) -> Tensor:
        """``(nnz,)`` int64 column indices (a copy)."""
        return self._col.clone()

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return self._shape

    @property
    def nnz(self) -> int:
        """Number of connections (stored column indices)."""
        return self._col.numel()

    @property
    def density(self) -> float:
        """Fraction of the ``out_features * in_features`` possible connections that exist."""
        rows, cols = self._shape
        return self.nnz / (rows * cols) if rows * cols else 0.0

    @property
    def fan_in(self) -> Tensor:
        """``(out_features,)`` int64: number of inputs of each unit."""
        return self._crow.diff()

    def row_indices(self) -> Tensor:
        """``(nnz,)`` int64: the output unit of each connection (COO rows)."""
        return row_of_entries(self._crow, self.nnz)

    def to_mask(self) -> Tensor:
        """``(out_features, in_features)`` bool mask, True where a connection exists."""
        mask = torch.zeros(self._shape, dtype=torch.bool)
        mask[self.row_indices(), self._col] = True
        return mask

    def block_structure(self, block: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The block-CSR (BSR) structure of a connectivity made of whole ``bo x bi`` blocks.

        Returns ``(crow, col)`` int64: ``(out_features / bo + 1,)`` block-row pointers and the
        ``(nblocks,)`` block columns. Raises ``ValueError`` when ``block`` does not divide the
        shape or some block is only partly connected.
        """
        bo, bi = _check_block(block, self._shape)
        n_cols = self._shape[1] // bi
        # O(nnz): the block of every entry as one sorted key (entries are row-major)
        keys = (self.row_indices() // bo) * n_cols + self._col // bi
        blocks, counts = torch.unique(keys, return_counts=True)
        partial = counts != bo * bi
        if bool(partial.any()):
            k = int(partial.nonzero()[0])
            r, c = divmod(int(blocks[k]), n_cols)
            raise ValueError(
                f"connectivity is not made of whole {bo}x{bi} blocks: block ({r}, {c}) has "
                f"{int(counts[k])} of {bo * bi} connections"
            )
        crow = torch.zeros(self._shape[0] // bo + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(blocks // n_cols, minlength=self._shape[0] // bo).cumsum(0)
        return crow, blocks % n_cols

    def transpose(self) -> Connectivity:
        """The ``(in_features, out_features)`` structure: row = input, columns = units reading it."""
        crow_t, col_t, _ = csr_transpose(self._crow, self._col, self._shape[1])
        return Connectivity(crow_t, col_t, (self._shape[1], self._shape[0]))

    def overlap(self, other: Connectivity) -> float:
        """Mean over units of the Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of each unit's inputs
        here and in ``other`` (same shape): 1 for equal structures, about the density for
        independent random ones. How the learner's masks are compared between checks."""
        if not isinstance(other, Connectivity) or other.shape != self.shape:
            raise ValueError(f"other must be a Connectivity of shape {self.shape}, got "
                             f"{getattr(other, 'shape', type(other).__name__)}")
        a, b = self.to_mask(), other.to_mask()
        return float(((a & b).sum(1) / (a | b).sum(1).clamp_min(1)).double().mean())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Connectivity):
            return NotImplemented
        return (
            self._shape == other._shape
            and torch.equal(self._crow, other._crow)
            and torch.equal(self._col, other._col)
        )

    __hash__ = None  # mutable-looking tensors inside; equality is by value

    def __repr__(self) -> str:
        rows, cols = self._shape
        fi = self.fan_in
        fan = f"fan_in={int(fi.min())}..{int(fi.max())}" if rows else "fan_in=-"
        return (
            f"Connectivity(shape=({rows}, {cols}), nnz={self.nnz}, "
            f"density={self.density:.4g}, {fan})"
        )

    def __reduce__(self):
        return (Connectivity, (self._crow, self._col, self._shape))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_mask(cls, mask: Tensor) -> Connectivity:
        """From a dense ``(out_features, in_features)`` mask (bool, or numbers: nonzero = connected)."""
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() != 2:
            raise ValueError(f"mask must be 2-D (out_features, in_features), got shape {tuple(mask.shape)}")
        mask = mask.detach()
        if mask.is_floating_point() or mask.is_complex():
            if bool(torch.isnan(mask).any()):
                raise ValueError("mask contains NaN: connected or not is undefined there")
        rows, cols = _as_shape(tuple(mask.shape), "mask shape")
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        step = max(1, _DENSE_DRAW // max(cols, 1))  # row chunks: no (nnz, 2) index of the whole
        for r in range(0, rows, step):
            crow[r + 1 : r + 1 + min(step, rows - r)] = (mask[r : r + step] != 0).sum(1).cpu()
        crow[1:] = crow[1:].cumsum(0)
        col = torch.empty(int(crow[-1]), dtype=torch.int64)  # filled in place, chunk by chunk
        for r in range(0, rows, step):
            m = mask[r : r + step].to("cpu") != 0
            col[crow[r] : crow[min(r + step, rows)]] = m.nonzero()[:, 1]  # row-major: sorted
        return cls._owning(crow, col, (rows, cols))

    @classmethod
    def _owning(cls, crow: Tensor, col: Tensor, shape: tuple[int, int]) -> Connectivity:
        """A connectivity that takes over ``crow``/``col`` (fresh int64 CPU tensors this module
        just built, valid by construction): no check and no copy (a copy of a 50 % mask's
        indices of an 8 192 × 8 192 layer is 256 MiB)."""
        self = object.__new__(cls)
        object.__setattr__(self, "_crow", crow)
        object.__setattr__(self, "_col", col)
        object.__setattr__(self, "_shape", shape)
        return self

    @classmethod
    def _from_rows(cls, cols_per_row: Tensor, shape: tuple[int, int]) -> Connectivity:
        """From a ``(rows, f)`` tensor of column indices (any order inside a row, unique)."""
        rows, f = cols_per_row.shape
        col = cols_per_row.sort(dim=1).values.reshape(-1)
        crow = torch.arange(rows + 1, dtype=torch.int64) * f
        return cls(crow, col, shape)

    @classmethod
    def random(
        cls,
        shape: Sequence[int],
        *,
        density: float | None = None,
        fan_in: int | None = None,
        seed: int | None = None,
    ) -> Connectivity:
        """Each unit connects to ``fan_in`` inputs drawn uniformly without replacement.

        Give exactly one of ``density`` (then ``fan_in = ceil(density * in_features)``) or
        ``fan_in``. ``seed=None`` draws from torch's global generator (so ``torch.manual_seed``
        controls it, as for ``nn.Linear``'s init).
        """
        rows, cols = _as_shape(shape)
        if (density is None) == (fan_in is None):
            raise ValueError("give exactly one of density= or fan_in=")
        if fan_in is None:
            fan_in = fan_in_for_density(density, cols)
        if isinstance(fan_in, bool) or not isinstance(fan_in, int) or not 0 <= fan_in <= cols:
            raise ValueError(f"fan_in must be an int in [0, in_features={cols}], got {fan_in!r}")
        gen = None if seed is None else torch.Generator().manual_seed(check_seed("seed", seed))
        if not fan_in:
            return cls._from_rows(torch.empty(rows, 0, dtype=torch.int64), (rows, cols))
        if rows * cols > _DENSE_DRAW and 8 * fan_in <= cols:  # large and sparse: O(nnz) draws
            return cls._from_rows(_distinct_draws(rows, cols, fan_in, gen), (rows, cols))
        # top-k of iid uniforms = a uniform random subset per row (row chunks: bounded memory)
        step = max(1, _DENSE_DRAW // cols)
        picks = [torch.rand(min(step, rows - r), cols, generator=gen).topk(fan_in, dim=1).indices
                 for r in range(0, rows, step)]
        return cls._from_rows(torch.cat(picks) if picks else torch.empty(0, fan_in, dtype=torch.int64),
                              (rows, cols))

    @classmethod
    def from_scores(
        cls,
        scores: Tensor,
        density: float,
        mode: str = "per_unit",
        *,
        block: tuple[int, int] | None = None,
        nm: tuple[int, int] | None = None,
    ) -> Connectivity:
        """Keep the highest-scoring connections of a ``(out_features, in_features)`` score matrix.

        Modes:
            ``per_unit``: each unit keeps its top ``ceil(density * in_features)`` inputs (exact,
            equal fan-in).  ``global``: the top ``round(density * out * in)`` entries of the whole
            matrix (fan-in varies by unit).
        With ``block=(bo, bi)`` (which must divide the shape) scores are summed over
        ``bo x bi`` blocks and whole blocks are kept: per block-row for ``per_unit``, over the
        whole matrix for ``global``. With ``nm=(n, m)`` (``per_unit`` only; ``density`` must be
        ``n / m`` and ``m`` divide ``in_features``) each unit keeps the top ``n`` of every ``m``
        consecutive inputs (semi-structured N:M). Scores are compared by absolute value.
        """
        if not isinstance(scores, Tensor):
            raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
        if scores.dim() != 2:
            raise ValueError(f"scores must be 2-D (out_features, in_features), got shape {tuple(scores.shape)}")
        choice("mode", mode, ("per_unit", "global"))
        density = _check_density(density)
        s = scores.detach().to("cpu", torch.float64).abs()
        if not bool(torch.isfinite(s).all()):
            raise ValueError("scores contain NaN or Inf")
        rows, cols = s.shape
        if nm is not None:
            n, m = check_nm(nm, density, cols)
            if block is not None or mode != "per_unit":
                raise ValueError(f"nm={nm!r} keeps n of every m inputs of each unit: it takes "
                                 f"mode='per_unit' and no block (got mode={mode!r}, "
                                 f"block={block!r})")
            return cls.from_mask(top_per_group(s, n, m))
        if block is not None:
            bo, bi = _check_block(block, (rows, cols))
            from einops import reduce

            bs = reduce(s, "(r bo) (c bi) -> r c", "sum", bo=bo, bi=bi)
            bmask = cls.from_scores(bs, density, mode).to_mask()
            return cls.blocks(bmask, (bo, bi))
        if mode == "per_unit":
            k = fan_in_for_density(density, cols)
            return cls._from_rows(s.topk(k, dim=1).indices, (rows, cols))
        k = min(rows * cols, round(density * rows * cols))
        flat = s.reshape(-1).topk(k).indices
        mask = torch.zeros(rows * cols, dtype=torch.bool)
        mask[flat] = True
        return cls.from_mask(mask.view(rows, cols))

    @classmethod
    def blocks(cls, block_mask: Tensor, block: tuple[int, int]) -> Connectivity:
        """Expand a ``(out_features / bo, in_features / bi)`` block mask into element connectivity.

        Each True entry ``(r, c)`` connects units ``r*bo .. r*bo+bo-1`` to inputs
        ``c*bi .. c*bi+bi-1``; the result has shape ``(R * bo, C * bi)``.
        """
        if not isinstance(block_mask, Tensor) or block_mask.dim() != 2:
            raise ValueError("block_mask must be a 2-D tensor (out_blocks, in_blocks)")
        R, C = block_mask.shape
        bo, bi = _check_block(block, None)
        from einops import repeat

        mask = repeat(block_mask.detach().cpu() != 0, "r c -> (r bo) (c bi)", bo=bo, bi=bi)
        return cls.from_mask(mask)


def check_nm(nm, density: float, in_features: int) -> tuple[int, int]:
    """``nm`` as ``(n, m)`` ints with ``1 <= n <= m``, ``m`` dividing ``in_features`` and
    ``density == n / m``; ``ValueError`` naming what is wrong."""
    if (not isinstance(nm, (tuple, list)) or len(nm) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in nm)
            or nm[0] > nm[1]):
        raise ValueError(f"nm must be a pair (n, m) of ints with 1 <= n <= m, got {nm!r}")
    n, m = nm
    if in_features % m:
        raise ValueError(f"nm={tuple(nm)}: m={m} must divide in_features={in_features}")
    if abs(density - n / m) > 1e-9:
        raise ValueError(f"nm={tuple(nm)} keeps {n}/{m} of the inputs: density must be {n / m:g}, "
                         f"got {density!r}")
    return n, m


def top_per_group(scores: Tensor, n: int, m: int) -> Tensor:
    """``(out, in)`` bool mask keeping the ``n`` largest scores of each ``m`` consecutive."""
    rows, d = scores.shape
    g = scores.reshape(rows, d // m, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(2, g.topk(n, dim=2).indices, True)
    return mask.reshape(rows, d)
