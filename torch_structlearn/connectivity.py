"""``Connectivity``: which inputs each output unit of a sparse layer reads, as validated CSR.

Row ``i`` of a connectivity of shape ``(out_features, in_features)`` lists, sorted and unique,
the input indices that unit ``i`` connects to. A unit with no inputs (an empty row) is legal.
The structure is immutable: every constructor validates it once, and every accessor hands out
a copy, so nothing a caller does can break the invariants afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import block as _check_block
from ._checks import choice
from ._checks import density as _check_density
from ._checks import seed as check_seed
from .csr import (
    _as_shape,
    bsr_to_csr,
    check_csr_bounds,
    csr_transpose,
    row_of_entries,
    validate_csr,
)

__all__ = ["Connectivity", "validate_csr", "check_csr_bounds", "csr_transpose", "fan_in_for_density", "row_of_entries",
           "bsr_to_csr"]

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
        parts = []
        for r in range(0, rows, step):
            m = mask[r : r + step].to("cpu") != 0
            crow[r + 1 : r + 1 + m.shape[0]] = m.sum(1)
            parts.append(m.nonzero()[:, 1])  # row-major order: sorted within rows
        crow[1:] = crow[1:].cumsum(0)
        col = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        return cls(crow, col, (rows, cols))

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
    ) -> Connectivity:
        """Keep the highest-scoring connections of a ``(out_features, in_features)`` score matrix.

        Modes:
            ``per_unit``: each unit keeps its top ``ceil(density * in_features)`` inputs (exact,
            equal fan-in).  ``global``: the top ``round(density * out * in)`` entries of the whole
            matrix (fan-in varies by unit).
        With ``block=(bo, bi)`` (which must divide the shape) scores are summed over
        ``bo x bi`` blocks and whole blocks are kept: per block-row for ``per_unit``, over the
        whole matrix for ``global``. Scores are compared by absolute value.
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
