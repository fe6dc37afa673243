"""``dense`` backend: the masked dense weight and ``F.linear``.

Two paths compute the same thing:

* **functional** (any caller, ``torch.compile`` traces, autocast): scatter the
  values into fresh zeros and call ``F.linear`` in plain differentiable torch ops; autograd
  keeps the dense weight for the input gradient, and the values gradient is the dense
  ``gyᵀ x`` gathered at the nonzeros (the backward of ``scatter``).
* **kept** (a ``StructLearnedLinear`` in eager mode, :class:`DenseWeight`): the layer keeps
  its dense weight between calls and rewrites only the nonzeros each call, so a step costs no
  ``out * in`` zero fill and no fresh allocation (whose page faults cost as much as the fill);
  the backward computes ``gyᵀ x`` into a scratch reused across steps and gathers the values
  gradient from it. The moves between CSR and dense run in the ``cpu`` kernels where they are
  built (rows over threads, int32 columns, a block row at a time for block layers), else as
  ``index_copy_`` / ``index_select`` (blocks through a ``(rows, cols, bo, bi)`` view).
  The kept weight costs what ``nn.Linear``'s weight costs (``out * in`` elements); ``auto``
  picks this backend only where it measured it fastest (high density; BENCHMARKS.md).

Shapes: ``x (*, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``; for block layers
``values (nblocks, bo, bi)`` on the BSR structure ``crow (out / bo + 1,)``, ``col (nblocks,)``.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..connectivity import row_of_entries
from . import cpu, operands

__all__ = ["DenseWeight", "dense_weight", "flat_index", "linear", "needs_index",
           "nonfinite_rows"]


def flat_index(crow: Tensor, col: Tensor, in_features: int) -> Tensor:
    """``(nnz,)`` int64 position ``row * in_features + col`` of every nonzero in the flattened
    dense weight. Building it costs as much as the scatter itself (measured: ~60 ms for 6 M
    nonzeros on the 2-core CPU), so ``StructLearnedLinear`` caches it when it may use dense."""
    return row_of_entries(crow, col.numel()).mul_(in_features).add_(col)


def dense_weight(values: Tensor, crow: Tensor, col: Tensor, in_features: int,
                 index: Tensor | None = None) -> Tensor:
    """``(out, in)`` dense weight with ``values`` at the CSR positions, zeros elsewhere
    (differentiable with respect to ``values``). ``index``: cached :func:`flat_index`
    (unused for block values, which are placed block by block). ``(nnz, 1)`` values are read
    as ``(nnz,)``."""
    values = operands.csr_shaped(values)
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


def nonfinite_rows(x: Tensor, y: Tensor, values: Tensor, crow: Tensor, col: Tensor,
                   bias: Tensor | None) -> Tensor:
    """``y (N, out)``, a sparse backend's output for ``x (N, in)``, with the rows of ``x``
    that hold an inf or NaN made what the masked dense product gives them (``0 * inf = NaN``
    off the structure, as ``F.linear(x, layer.weight)``): one numeric behaviour on every
    backend. On the CPU those rows are recomputed densely (exact); on a GPU, without a host
    sync, their finite outputs become NaN (a masked dense row with an inf or NaN input has no
    finite output; an output the sparse sum leaves at ±inf stays so, where the dense product
    may give NaN)."""
    bad = ~torch.isfinite(x).all(1)
    if x.device.type == "cpu":
        if bad.any():
            y[bad] = F.linear(x[bad], dense_weight(values, crow, col, x.shape[1]), bias)
        return y
    return torch.where(bad[:, None] & torch.isfinite(y), torch.full_like(y, float("nan")), y)


def _fast(t: Tensor) -> bool:
    """Whether the ``cpu`` kernels can move ``t``'s entries (CPU, float32/64, built)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and cpu.available()


def _index(crow: Tensor, col: Tensor, w: Tensor, index: Tensor | None) -> Tensor:
    return index if index is not None and index.numel() == col.numel() else flat_index(
        crow, col, w.shape[1])


def _blocks_of(w: Tensor, bo: int, bi: int) -> Tensor:
    """``w (out, in)`` seen as ``(out / bo, in / bi, bo, bi)`` blocks (a view: writes reach w)."""
    return w.view(w.shape[0] // bo, bo, w.shape[1] // bi, bi).permute(0, 2, 1, 3)


def _scatter(values: Tensor, crow: Tensor, col: Tensor, index: Tensor | None, w: Tensor) -> None:
    """``w[row, col] = values`` at every nonzero, or every block for ``values (nblocks, bo,
    bi)`` (``index``: the nonzeros' :func:`flat_index`, needed where the ``cpu`` kernels cannot
    move them)."""
    if _fast(w):
        cpu.kernels().scatter(values.contiguous(), crow, col, w)
    elif values.dim() == 3:
        blocks = _blocks_of(w, *values.shape[1:])
        blocks.index_put_((row_of_entries(crow, col.numel()), col.long()), values)
    else:
        w.view(-1).index_copy_(0, _index(crow, col, w, index), values)


def _gather(w: Tensor, crow: Tensor, col: Tensor, index: Tensor | None,
            block: tuple[int, int] | None) -> Tensor:
    """The entries of ``w (out, in)`` at the nonzeros: ``(nnz,)``, or ``(nblocks, bo, bi)``."""
    if _fast(w):
        v = w.new_empty(col.numel(), *(block or ()))
        cpu.kernels().gather(w, crow, col, v)
        return v
    if block is not None:
        return _blocks_of(w, *block)[row_of_entries(crow, col.numel()), col.long()]
    return w.view(-1).index_select(0, _index(crow, col, w, index))


def needs_index(like: Tensor) -> bool:
    """Whether the dense backend reads a :func:`flat_index` for a weight like ``like`` (not
    where the ``cpu`` kernels move the entries)."""
    return not _fast(like)


class DenseWeight:
    """A layer's kept dense weight: ``(out, in)`` zeros allocated once, then the nonzeros
    rewritten from ``values`` on every call. Never skipped on a version check: some writers
    keep a tensor's version counter (FSDP2's all-gather, ``param.data.copy_``), and a skipped
    rewrite would then leave the copy silently stale."""

    def __init__(self) -> None:
        self.weight: Tensor | None = None

    def clear(self) -> None:
        """Drop the weight (memory back; the next call rebuilds it)."""
        self.weight = None

    def inference(self, values: Tensor, crow: Tensor, col: Tensor, in_features: int,
                  index: Tensor | None = None, bias: Tensor | None = None):
        """``run(x) -> F.linear(x, weight, bias)`` for calls through which no gradient flows
        (a layer's inference plan): the weight is written now and rewritten only when
        ``values`` gets a new version (every in-place op, optimizer step and
        ``load_state_dict`` makes one; the caller makes a new runner when the tensors are
        replaced or the structure changes). A write through ``.data`` makes none and is not
        seen (write under ``torch.no_grad()`` instead). Where ``values`` keeps no version (an
        inference tensor) the weight is rewritten every call."""
        self.get(values, crow, col, in_features, index)
        version = operands.version(values)
        if version < 0:
            return lambda x: F.linear(x, self.get(values, crow, col, in_features, index), bias)
        seen = [version]

        def run(x: Tensor) -> Tensor:
            if values._version != seen[0]:
                self.get(values, crow, col, in_features, index)
                seen[0] = values._version
            return F.linear(x, self.weight, bias)

        return run

    def get(self, values: Tensor, crow: Tensor, col: Tensor, in_features: int,
            index: Tensor | None = None) -> Tensor:
        """The dense ``(out, in)`` weight holding ``values``, ``(nnz,)`` or block values
        ``(nblocks, bo, bi)`` (``index``: the nonzeros' :func:`flat_index`, computed where
        needed when not given)."""
        shape = ((crow.numel() - 1) * (values.shape[1] if values.dim() == 3 else 1), in_features)
        w = self.weight
        stale = w is not None and w.is_inference() and not torch.is_inference_mode_enabled()
        if (w is None or stale or w.shape != shape or w.dtype != values.dtype
                or w.device != values.device):
            w = self.weight = values.new_zeros(shape)
        with torch.no_grad():
            _scatter(values.detach(), crow, col, index, w)
        return w


_scratch = threading.local()  # per thread: {(shape, dtype, device): (out, in) tensor}


def _grad_scratch(like: Tensor) -> Tensor:
    """An ``(out, in)`` buffer for ``gyᵀ x``, reused by every backward of this shape on this
    thread (autograd runs one backward at a time per thread)."""
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    k = (tuple(like.shape), like.dtype, like.device)
    buf = pool.get(k)
    if buf is None:
        buf = pool[k] = torch.empty_like(like)
    return buf


class _KeptDense(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with the layer's kept dense copy of ``values``; the
    gradient reaches ``values`` at the nonzeros. The weight is held by reference, not saved for
    backward: the layer rewrites it every call (with the same values within a step), and a
    version check would refuse a layer used twice in one graph."""

    @staticmethod
    def forward(ctx, x, values, weight, crow, col, index, bias):
        ctx.save_for_backward(x, crow, col, index)
        ctx.weight = weight
        ctx.block = tuple(values.shape[1:]) if values.dim() == 3 else None
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, crow, col, index = ctx.saved_tensors
        need_x, need_v, *_, need_b = ctx.needs_input_grad
        gy2 = gy.reshape(-1, gy.shape[-1])
        gx = (gy @ ctx.weight) if need_x else None
        gv = gb = None
        if need_v:
            gw = _grad_scratch(ctx.weight)
            torch.mm(gy2.T, x.reshape(-1, x.shape[-1]), out=gw)
            gv = _gather(gw, crow, col, index, ctx.block)
        if need_b:
            gb = gy2.sum(0)
        return gx, gv, None, None, None, None, gb


def linear(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, bias: Tensor | None,
           index: Tensor | None = None, cache: DenseWeight | None = None) -> Tensor:
    """``(*, in) -> (*, out)``: ``F.linear`` with the masked dense weight; kept in ``cache``
    between calls (eager, same dtype as ``x``)."""
    if cache is None or values.dtype != x.dtype or torch.compiler.is_compiling():
        return F.linear(x, dense_weight(values, crow, col, x.shape[-1], index), bias)
    w = cache.get(values, crow, col, x.shape[-1], index)
    if index is None or index.numel() != col.numel():
        index = col.new_empty(0, dtype=torch.int64)  # (the moves build one where they need it)
    return _KeptDense.apply(x, values, w, crow, col, index, bias)
