"""What a ``StructLearnedLinear`` keeps for its kernels, and the check of its structure —
the :class:`KernelCaches` mixin.

* The caches (non-persistent buffers: they follow ``.to()`` but are not saved): in training
  mode the transposed structure the input gradient of ``csr``, ``torch_sparse`` and
  ``triton`` reads (``cpu`` never needs it; ``eval()`` drops it), the flat scatter index and
  the kept dense weight of the ``dense`` backend. Nothing is built at construction or load:
  the first eager call builds what the backend it runs reads.
* The structure check: index buffers assigned, edited in place or loaded are validated once,
  on the next call (an identity/storage/version key, no per-call cost), and the caches built
  from the old structure are dropped.
"""

from __future__ import annotations

import torch

from ..connectivity import csr_transpose, validate_csr
from . import auto, calibrate
from .dense import DenseWeight, flat_index, needs_index
from .operands import version as _version
from .sparse_linear import NEEDS_TRANSPOSE

__all__ = ["KernelCaches"]


class KernelCaches:
    """Mixin of :class:`~torch_structlearn.layers.StructLearnedLinear` (before ``nn.Module``
    in its bases): reads ``crow_indices``, ``col_indices``, ``values``, ``block``,
    ``in_features``, ``out_features``, ``_backend`` and ``_values_shape`` of the layer."""

    def _check_if_changed(self) -> None:
        """Validate the structure and drop stale caches if the index buffers changed since the
        last check (assigned, edited in place, loaded)."""
        key = self._structure_key()
        if key != self._structure_seen:
            self._check_structure()
            self._refresh_caches()  # built from the old structure: stale
            self._structure_seen = key

    def _caches_for_call(self, backend: str) -> None:
        """Build what a call on ``backend`` reads (eager calls only)."""
        if not self._primed:
            self._prime_caches()
        self._ensure_caches(backend)

    def _structure_key(self) -> tuple:
        """Identity, storage and version counter of the index buffers (and ``values``' shape):
        any assignment, in-place edit or ``.data`` swap changes it."""
        c, k = self.crow_indices, self.col_indices
        return (id(c), c.data_ptr(), _version(c), c.dtype, id(k), k.data_ptr(), _version(k),
                k.dtype, tuple(self.values.shape))

    def _check_structure(self) -> None:
        """``ValueError`` unless the index buffers hold a valid structure of this layer's shape
        and ``values`` one entry (block) per nonzero; run once after any change of them."""
        c, k = self.crow_indices, self.col_indices
        bo, bi = self.block or (1, 1)
        try:
            if c.dtype != k.dtype:
                raise TypeError(f"crow_indices and col_indices must share a dtype, got {c.dtype} "
                                f"and {k.dtype}")
            validate_csr(c, k, (self.out_features // bo, self.in_features // bi))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{type(self).__name__}: crow_indices/col_indices were changed "
                             f"into an invalid structure: {e}") from None
        want = self._values_shape(k.numel())
        if tuple(self.values.shape) != want:
            raise ValueError(f"{type(self).__name__}: values has shape "
                             f"{tuple(self.values.shape)}, the structure needs {want}")

    def _refresh_caches(self) -> None:
        """Drop what the backends cache, as non-persistent buffers (they follow ``.to()`` but
        are not saved): the flat scatter index for ``dense``, and in training mode the
        transposed structure the input gradient of ``csr``, ``torch_sparse`` and ``triton``
        reads (``eval()`` drops it: an unstructured layer then holds 2ρ of the dense bytes
        instead of 4ρ; ``cpu`` never needs it), and the dense backend's weight
        (:class:`~torch_structlearn.ops.dense.DenseWeight`). The first eager call builds what
        it needs (nothing is allocated at construction or load); the kernel computes a missing
        one on the fly (e.g. a backward in eval mode, or inside a ``torch.compile`` trace of a
        layer that never ran eagerly)."""
        empty = self.col_indices.new_empty(0)
        self.register_buffer("crow_t", empty, persistent=False)
        self.register_buffer("col_t", empty, persistent=False)
        self.register_buffer("perm_t", empty, persistent=False)
        self.register_buffer("dense_index", empty.long(), persistent=False)
        self._dense = DenseWeight()
        self._caches_for = None
        self._primed = False
        self._plans = {}  # call plans (layers.StructLearnedLinear.forward): made from these

    def _prime_caches(self) -> None:
        """On the first eager call after the caches were dropped, with ``backend='auto'`` and
        calibration off: build what the prior may pick at any shape on this device, so that a
        ``torch.compile`` trace (which uses the prior) finds it."""
        self._primed = True
        if self._backend == "auto" and not calibrate.enabled():
            for backend in auto.reachable(self.col_indices.device, self.values.dtype,
                                          self.density, self.block):
                self._ensure_caches(backend)

    def _ensure_caches(self, backend: str) -> None:
        """Build what ``backend`` reads, if missing: in training mode the transposed structure
        (``csr``, ``torch_sparse``, ``triton``), and the dense backend's scatter index."""
        state = (backend, self.training, torch.is_inference_mode_enabled())
        if state == self._caches_for:  # as on the last call: nothing to build
            return
        self._caches_for = state
        crow, col = self.crow_indices, self.col_indices
        if not torch.is_inference_mode_enabled():  # built under inference_mode: unusable here
            for name in ("crow_t", "col_t", "perm_t", "dense_index"):
                if getattr(self, name).is_inference():
                    self.register_buffer(name, getattr(self, name).new_empty(0), persistent=False)
        if backend in NEEDS_TRANSPOSE and self.training and self.crow_t.numel() == 0:
            n_cols = self.in_features // (self.block[1] if self.block else 1)
            crow_t, col_t, perm = csr_transpose(crow, col, n_cols)
            self.register_buffer("crow_t", crow_t, persistent=False)
            self.register_buffer("col_t", col_t, persistent=False)
            self.register_buffer("perm_t", perm.to(col_t.dtype), persistent=False)
        # the flat index: read by the functional dense path (torch.compile traces, which use
        # the prior's caches) and by the kept weight where the cpu kernels do not move entries
        if (backend == "dense" and self.block is None and self.dense_index.numel() != col.numel()
                and (needs_index(self.values) or not calibrate.enabled())):
            self.register_buffer("dense_index", flat_index(crow, col, self.in_features),
                                 persistent=False)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {**state, "_plans": {}}  # (plans hold kernel pointers into this copy's tensors)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_dense", DenseWeight())  # a layer pickled by an older version
        self.__dict__.setdefault("_caches_for", None)
        self.__dict__.setdefault("_primed", False)
        self.__dict__.setdefault("_structure_seen", None)  # checked on the first call
        self.__dict__["_plans"] = {}

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["_plans"] = {}
        if getattr(self, "_dense", None) is not None:
            self._dense.clear()  # rebuilt where the layer goes (.to(), .half(), ...)
            self._caches_for = None
        known = getattr(self, "_structure_seen", None) == self._structure_key()
        out = super()._apply(fn, *args, **kwargs)
        if known:  # moved or cast, not changed: no need to check it again
            self._structure_seen = self._structure_key()
        return out

    def train(self, mode: bool = True) -> KernelCaches:
        """Like ``nn.Module.train``; also builds (training) or drops (eval) the cached
        transposed structure."""
        changed = mode != self.training
        super().train(mode)
        if changed:
            self._refresh_caches()
        return self

