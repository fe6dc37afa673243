"""Layers: ``StructLearnedLinear``, a drop-in ``nn.Linear`` whose weight lives on a sparse
``Connectivity``.

The nonzero weights are the ``values`` parameter ``(nnz,)``; the structure is two integer
buffers (``crow_indices``, ``col_indices``), so ``state_dict``, ``.to()``, ``deepcopy``, DDP and
autocast behave as for any module. The kernel is the ``structlearn::sparse_linear`` custom op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import positive_int
from .connectivity import Connectivity, csr_transpose, validate_csr
from .ops import auto, check_backend, sparse_linear
from .ops.dense import dense_weight, flat_index

__all__ = ["StructLearnedLinear"]


def _index_dtype(nnz: int) -> torch.dtype:
    return torch.int32 if nnz < 2**31 - 1 else torch.int64


class StructLearnedLinear(nn.Module):
    """``y = x Wᵀ + b`` with a sparse ``W`` of fixed connectivity — a drop-in for ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample (number of units).
        bias: learn an additive bias (default True).
        density: fraction of connections when ``connectivity`` is not given; each unit then gets
            ``ceil(density * in_features)`` inputs drawn at random (torch's global RNG).
        connectivity: the structure, a :class:`Connectivity` of shape
            ``(out_features, in_features)``.
        backend: ``'auto'`` (default), ``'csr'``, ``'dense'`` or ``'torch_sparse'``.

    Shape:
        input ``(*, in_features)`` → output ``(*, out_features)``.

    Attributes:
        values: ``(nnz,)`` learnable nonzero weights in CSR order.
        bias: ``(out_features,)`` or None.
        crow_indices, col_indices: int buffers describing the CSR structure.

    Weights use Kaiming-uniform init from each unit's *actual* fan-in (bound ``1/sqrt(fan_in)``,
    which is what ``nn.Linear`` uses for its dense fan-in).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        density: float = 0.1,
        connectivity: Connectivity | None = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.backend = backend  # validated by the setter
        if connectivity is None:
            connectivity = Connectivity.random((out_features, in_features), density=density)
        self._check_connectivity(connectivity)
        factory = {"device": device, "dtype": dtype}
        self.values = nn.Parameter(torch.empty(connectivity.nnz, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._set_structure(connectivity.crow_indices, connectivity.col_indices, device)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure
    def _check_connectivity(self, connectivity) -> None:
        if not isinstance(connectivity, Connectivity):
            raise TypeError(f"connectivity must be a Connectivity, got {type(connectivity).__name__}")
        if connectivity.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"connectivity has shape {connectivity.shape}, expected (out_features, "
                f"in_features) = ({self.out_features}, {self.in_features})"
            )

    def _set_structure(self, crow: Tensor, col: Tensor, device=None) -> None:
        """(Re)register the CSR buffers and the cached transpose used by the backward pass."""
        device = device if device is not None else self.values.device
        idx = _index_dtype(col.numel())
        self.register_buffer("crow_indices", crow.to(device, idx))
        self.register_buffer("col_indices", col.to(device, idx))
        self._refresh_caches()

    def _refresh_caches(self) -> None:
        """Cache what this layer's backend needs, as non-persistent buffers (they follow
        ``.to()`` but are not saved): the transposed structure for ``csr`` / ``torch_sparse``,
        the flat scatter index for ``dense``. Empty when not needed; the kernel computes a
        missing one on the fly (e.g. after ``.to()`` onto a device where ``auto`` differs)."""
        crow, col = self.crow_indices, self.col_indices
        backend = self._backend
        if backend == "auto":  # what auto picks on the current device; others compute on the fly
            backend = auto.choose(col.device, self.values.dtype, self.density)
        empty = col.new_empty(0)
        if backend in ("csr", "torch_sparse"):
            crow_t, col_t, perm = csr_transpose(crow, col, self.in_features)
            perm = perm.to(col_t.dtype)
        else:
            crow_t, col_t, perm = empty, empty, empty
        index = flat_index(crow, col, self.in_features) if backend == "dense" else empty.long()
        self.register_buffer("crow_t", crow_t, persistent=False)
        self.register_buffer("col_t", col_t, persistent=False)
        self.register_buffer("perm_t", perm, persistent=False)
        self.register_buffer("dense_index", index, persistent=False)

    def set_connectivity(self, connectivity: Connectivity) -> StructLearnedLinear:
        """Replace the structure (same shape) and re-initialise ``values`` and ``bias``
        (Kaiming-uniform with the new fan-ins). Returns ``self``."""
        self._check_connectivity(connectivity)
        with torch.no_grad():
            self.values.data = self.values.new_empty(connectivity.nnz)
        self._set_structure(connectivity.crow_indices, connectivity.col_indices)
        self.reset_parameters()
        return self

    def learn_structure(self, loader, *, density: float | None = None, init: str = "dictionary",
                        **kw) -> StructLearnedLinear:
        """Learn this layer's connectivity from its unlabelled inputs (see
        :func:`torch_structlearn.learn_structure` for ``**kw``), then set the weights from the
        learned dictionary (``init='dictionary'``, rows rescaled to the Kaiming norm, bias 0)
        or Kaiming-uniform (``init='random'``). ``density`` defaults to the current density.
        The learned dictionary is kept as ``self.dictionary_ (in, out)`` and the report as
        ``self.report_``. Returns ``self``."""
        if init not in ("dictionary", "random"):
            raise ValueError(f"init must be 'dictionary' or 'random', got {init!r}")
        from .learn import dictionary_values, learn_structure  # layers never need it otherwise

        density = self.density if density is None else density
        conn, D, report = learn_structure(loader, self.out_features, density=density, **kw)
        if D.shape[0] != self.in_features:
            raise ValueError(f"the loader yields {D.shape[0]} features, the layer expects "
                             f"in_features={self.in_features}")
        self.set_connectivity(conn)
        if init == "dictionary":
            with torch.no_grad():
                self.values.copy_(dictionary_values(D, conn).to(self.values))
                if self.bias is not None:
                    self.bias.zero_()
        self.dictionary_, self.report_ = D, report
        return self

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)
        if "col_indices" in self._buffers:
            self._refresh_caches()

    @property
    def connectivity(self) -> Connectivity:
        """The structure as a (validated, CPU) :class:`Connectivity`."""
        return Connectivity(self.crow_indices, self.col_indices, (self.out_features, self.in_features))

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    @property
    def density(self) -> float:
        return self.nnz / (self.in_features * self.out_features)

    @property
    def fan_in(self) -> Tensor:
        """``(out_features,)`` number of inputs of each unit."""
        return self.crow_indices.diff()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform with each unit's own fan-in: ``U(-1/sqrt(f_i), 1/sqrt(f_i))``."""
        fan_in = self.fan_in.to(self.values.device, torch.float64)
        bound = torch.where(fan_in > 0, fan_in.clamp(min=1).rsqrt(), torch.zeros_like(fan_in))
        per_value = torch.repeat_interleave(bound, self.fan_in.long().to(bound.device))
        self.values.uniform_(-1.0, 1.0).mul_(per_value.to(self.values.dtype))
        if self.bias is not None:
            self.bias.uniform_(-1.0, 1.0).mul_(bound.to(self.bias.dtype))

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        connectivity: Connectivity | None = None,
        *,
        density: float | None = None,
        backend: str = "auto",
    ) -> StructLearnedLinear:
        """A sparse copy of ``linear``: its weights on ``connectivity`` (or on its top-|w|
        ``density`` per unit when only ``density`` is given). Bias copied as is."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if (connectivity is None) == (density is None):
            raise ValueError("give exactly one of connectivity= or density=")
        w = linear.weight.detach()
        if connectivity is None:
            connectivity = Connectivity.from_scores(w, density, "per_unit")
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            connectivity=connectivity,
            backend=backend,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            rows = connectivity.row_indices().to(w.device)
            layer.values.copy_(w[rows, connectivity.col_indices.to(w.device)])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"expected input of shape (*, {self.in_features}), got {tuple(x.shape)}"
            )
        return sparse_linear(
            x,
            self.values,
            self.crow_indices,
            self.col_indices,
            self.bias,
            backend=self._backend,
            transpose=(self.crow_t, self.col_t, self.perm_t),
            dense_index=self.dense_index,
        )

    def dense_weight(self) -> Tensor:
        """``(out_features, in_features)`` dense weight (zeros off the structure); differentiable."""
        return dense_weight(self.values, self.crow_indices, self.col_indices, self.in_features,
                            self.dense_index)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.4g}, nnz={self.nnz}, "
            f"backend={self._backend!r}"
        )

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """Accept a state dict with a *different* structure of the same shape: the CSR
        buffers are validated, then ``values`` and the buffers are resized before copying."""
        crow = state_dict.get(prefix + "crow_indices")
        col = state_dict.get(prefix + "col_indices")
        if crow is not None and col is not None:
            try:
                validate_csr(crow, col, (self.out_features, self.in_features))
            except (TypeError, ValueError) as e:
                errors.append(f"{prefix}crow_indices/col_indices: invalid structure: {e}")
                return
            if col.numel() != self.nnz or not (
                torch.equal(crow.to(self.crow_indices), self.crow_indices)
                and torch.equal(col.to(self.col_indices), self.col_indices)
            ):
                with torch.no_grad():
                    self.values.data = self.values.new_empty(col.numel())
                self._set_structure(crow, col)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
