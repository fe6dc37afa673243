"""Layers: ``StructLearnedLinear``, a drop-in ``nn.Linear`` whose weight lives on a sparse
``Connectivity``.

The nonzero weights are the ``values`` parameter ``(nnz, 1)`` (one weight per row: 2-D, so that
optimizer factories that exempt 1-D parameters from weight decay — timm's — treat it as the
weight it is); the structure is two integer
buffers (``crow_indices``, ``col_indices``), so ``state_dict``, ``.to()``, ``deepcopy``, DDP and
autocast behave as for any module. The kernel is the ``structlearn::sparse_linear`` custom op.
A block layer (``block=(bo, bi)``) stores its weight like torch's BSR tensors: ``values``
``(nblocks, bo, bi)`` and block-level ``crow_indices`` / ``col_indices``; its element-level CSR
view is :attr:`StructLearnedLinear.connectivity` (what files and the hub hold).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from .checks import block as check_block
from .checks import choice, fits_in_memory, float_dtype, positive_int
from .connectivity import (
    Connectivity,
    bsr_to_csr,
    fan_in_for_density,
    row_of_entries,
    validate_csr,
)
from .io import Codec, FileCheck, Record, register
from .learn import learn_layer
from .loaders import first_batch
from .ops import calibrate, check_backend, cpu, sparse_linear
from .ops.dense import dense_weight, nonfinite_rows
from .ops.dense import linear as dense_linear
from .ops.kernel_caches import KernelCaches
from .ops.sparse_linear import check_block_backend, eager_call, resolve_backend

__all__ = ["StructLearnedLinear"]


def _index_dtype(*sizes: int) -> torch.dtype:
    """int32 when every index (and the nonzero count) fits in it, else int64 (never a
    truncating cast)."""
    return torch.int32 if max(sizes) < 2**31 - 1 else torch.int64


class StructLearnedLinear(KernelCaches, nn.Module):
    """``y = x Wᵀ + b`` with a sparse ``W`` of fixed connectivity — a drop-in for ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample (number of units).
        bias: learn an additive bias (default True).
        density: fraction of connections when ``connectivity`` is not given; each unit then gets
            ``ceil(density * in_features)`` inputs drawn at random (torch's global RNG).
        connectivity: the structure, a :class:`Connectivity` of shape
            ``(out_features, in_features)`` (made of whole blocks when ``block`` is given).
        block: ``(bo, bi)`` to make a block-sparse layer: whole ``bo x bi`` blocks of the
            weight are connected or not (``density`` then draws ``ceil(density * in / bi)``
            random blocks per block row). Stored as BSR; the fast kernels read blocks directly.
        backend: ``'auto'`` (default), ``'cpu'`` (fused C++ kernels, CPU),
            ``'csr'``, ``'dense'``, ``'torch_sparse'`` (unstructured only) or ``'triton'``
            (block layers on CUDA).

    Shape:
        input ``(*, in_features)`` → output ``(*, out_features)``.

    Attributes:
        values: ``(nnz, 1)`` learnable nonzero weights in CSR order (2-D: weight decay applies
            to it as to ``nn.Linear.weight`` in optimizer factories that exempt 1-D
            parameters); ``(nblocks, bo, bi)`` for a block layer. :meth:`csr_values` gives
            them as ``(nnz,)``.
        bias: ``(out_features,)`` or None.
        crow_indices, col_indices: int buffers describing the CSR (block layer: BSR) structure.

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
        block: tuple[int, int] | None = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {type(bias).__name__} {bias!r}")
        float_dtype(dtype)
        shape = (self.out_features, self.in_features)
        self.block = None if block is None else check_block(block, shape)
        self.backend = backend  # validated by the setter
        if connectivity is None:
            itemsize = torch.empty(0, dtype=dtype).element_size()
            nnz = self.out_features * fan_in_for_density(density, self.in_features)
            fits_in_memory(f"StructLearnedLinear({in_features}, {out_features}, density={density})",
                           nnz * (itemsize + 16))  # values + int64 columns and their sort
            if self.block is None:
                connectivity = Connectivity.random(shape, density=density)
            else:
                bo, bi = self.block
                blocks = Connectivity.random((shape[0] // bo, shape[1] // bi), density=density)
                connectivity = Connectivity.blocks(blocks.to_mask(), self.block)
        self._check_connectivity(connectivity)
        factory = {"device": device, "dtype": dtype}
        crow, col = self._storage_structure(connectivity)
        self.values = nn.Parameter(torch.empty(self._values_shape(col.numel()), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:  # registered as None, as nn.Linear does (the call plan reads _parameters)
            self.register_parameter("bias", None)
        self._set_structure(crow, col, device)
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

    def _storage_structure(self, connectivity: Connectivity) -> tuple[Tensor, Tensor]:
        """The stored index buffers: CSR, or BSR for a block layer (``ValueError`` when the
        connectivity is not made of whole blocks)."""
        if self.block is None:  # (the connectivity's own tensors: _set_structure copies them)
            return connectivity._crow, connectivity._col
        return connectivity.block_structure(self.block)

    def _values_shape(self, n: int) -> tuple[int, ...]:
        return (n, 1) if self.block is None else (n, *self.block)

    def _set_structure(self, crow: Tensor, col: Tensor, device=None) -> None:
        """(Re)register the CSR buffers and the cached transpose used by the backward pass."""
        device = device if device is not None else self.values.device
        bo, bi = self.block or (1, 1)
        idx = _index_dtype(col.numel(), self.in_features // bi, self.out_features // bo)
        # copies: the layer edits its buffers in place (dynamic sparsity), a Connectivity never
        self.register_buffer("crow_indices", crow.to(device, idx, copy=True))
        self.register_buffer("col_indices", col.to(device, idx, copy=True))
        self._refresh_caches()
        self._structure_seen = self._structure_key()  # validated by whoever gave it

    def set_connectivity(self, connectivity: Connectivity) -> StructLearnedLinear:
        """Replace the structure (same shape) and re-initialise ``values`` and ``bias``
        (Kaiming-uniform with the new fan-ins). Returns ``self``."""
        self._check_connectivity(connectivity)
        crow, col = self._storage_structure(connectivity)
        with torch.no_grad():
            self.values.data = self.values.new_empty(self._values_shape(col.numel()))
        self._set_structure(crow, col)
        self.reset_parameters()
        return self

    def csr_values(self) -> Tensor:
        """``(nnz,)`` the nonzero weights in the element CSR order of :attr:`connectivity`
        (for a block layer, gathered from the blocks; differentiable)."""
        if self.block is None:
            return self.values.view(-1)
        return self.values.reshape(-1)[bsr_to_csr(self.crow_indices, self.col_indices, self.block)[2]]

    @torch.no_grad()
    def copy_csr_values_(self, values: Tensor) -> StructLearnedLinear:
        """Set the weights from ``(nnz,)`` values in the CSR order of :attr:`connectivity`.
        Returns ``self``."""
        if not isinstance(values, Tensor) or values.shape != (self.nnz,):
            raise ValueError(f"values must be a tensor of shape ({self.nnz},), got "
                             f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}")
        values = values.to(self.values)
        if self.block is None:
            self.values.view(-1).copy_(values)
        else:
            index = bsr_to_csr(self.crow_indices, self.col_indices, self.block)[2]
            self.values.view(-1)[index] = values
        return self

    def learn_structure(self, loader, *, density: float | None = None, init: str = "dictionary",
                        **kw) -> StructLearnedLinear:
        """Learn this layer's connectivity from its unlabelled inputs (see
        :func:`torch_structlearn.learn_structure` for ``**kw``), then set the weights from the
        learned dictionary (``init='dictionary'``, rows rescaled to the Kaiming norm, bias 0)
        or Kaiming-uniform (``init='random'``). ``density`` defaults to the current density.
        The learned dictionary is kept as ``self.dictionary_ (in, out)`` and the report as
        ``self.report_``. Returns ``self``."""
        choice("init", init, ("dictionary", "random"))

        density = self.density if density is None else density
        if self.block is not None:
            kw.setdefault("block", self.block)
        first_batch(loader, key=kw.get("key", "x"), in_features=self.in_features)
        layer, report = learn_layer(loader, self.out_features, density=density, **kw)
        self.set_connectivity(layer.connectivity)
        if init == "dictionary":
            self.copy_csr_values_(layer.values)
            if self.bias is not None:
                with torch.no_grad():
                    self.bias.zero_()
        self.dictionary_, self.report_ = layer.dictionary, report
        return self

    @property
    def backend(self) -> str:
        """The kernel that runs this layer (``'auto'``, ``'dense'``, ``'cpu'``, ...); settable."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        check_block_backend(check_backend(value), self.block)
        self._backend = value
        if "col_indices" in self._buffers:
            self._refresh_caches()

    @property
    def connectivity(self) -> Connectivity:
        """The element-level structure as a (validated, CPU) :class:`Connectivity`."""
        if self.block is None:
            return Connectivity(self.crow_indices, self.col_indices, (self.out_features, self.in_features))
        crow, col, _ = bsr_to_csr(self.crow_indices, self.col_indices, self.block)
        return Connectivity(crow, col, (self.out_features, self.in_features))

    @property
    def nnz(self) -> int:
        """Number of connections (for a block layer: ``nblocks * bo * bi``)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """``nnz / (out_features * in_features)``."""
        return self.nnz / (self.in_features * self.out_features)

    @property
    def fan_in(self) -> Tensor:
        """``(out_features,)`` number of inputs of each unit."""
        if self.block is None:
            return self.crow_indices.diff()
        bo, bi = self.block
        return self.crow_indices.diff().repeat_interleave(bo) * bi

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform with each unit's own fan-in: ``U(-1/sqrt(f_i), 1/sqrt(f_i))``."""
        fan_in = self.fan_in.to(self.values.device, torch.float64)
        bound = torch.where(fan_in > 0, fan_in.clamp(min=1).rsqrt(), torch.zeros_like(fan_in))
        if self.block is None:
            per_value = torch.repeat_interleave(bound, self.fan_in.long().to(bound.device))[:, None]
        else:  # every row a of block k belongs to unit row(k) * bo + a
            bo, _ = self.block
            rows = row_of_entries(self.crow_indices, self.values.shape[0]).to(bound.device)
            unit = (rows * bo)[:, None] + torch.arange(bo, device=bound.device)
            per_value = bound[unit][:, :, None]
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
        block: tuple[int, int] | None = None,
        backend: str = "auto",
    ) -> StructLearnedLinear:
        """A sparse copy of ``linear``: its weights on ``connectivity`` (or on its top-|w|
        ``density`` per unit — per block row of top-Σ|w| blocks with ``block`` — when only
        ``density`` is given). Bias copied as is."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if (connectivity is None) == (density is None):
            raise ValueError("give exactly one of connectivity= or density=")
        w = linear.weight.detach()
        if connectivity is None:
            connectivity = Connectivity.from_scores(w, density, "per_unit", block=block)
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            connectivity=connectivity,
            block=block,
            backend=backend,
            device=w.device,
            dtype=w.dtype,
        )
        rows = connectivity.row_indices().to(w.device)
        layer.copy_csr_values_(w[rows, connectivity.col_indices.to(w.device)])
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        """``(*, in_features) -> (*, out_features)``.

        Eager calls on plain tensors run a *call plan*: the checks, the backend's choice
        (``auto``) and the caches are made on the first call of a kind — input shape, dtype,
        device, whether a gradient flows, mode, the weights' and the structure's storage and
        version — and later calls of that kind go straight to the kernel. Any change of the
        structure (assigned, edited in place, loaded) or of a weight tensor makes a new plan.
        Traces (``torch.compile``, ``torch.export``), autocast, functorch transforms and
        tensor subclasses take the checked path every call."""
        if (type(x) is not Tensor or torch.compiler.is_compiling()
                or torch._C._is_any_autocast_enabled()
                or torch._C._are_functorch_transforms_active()):
            return self._checked_forward(x)
        values, bias = self._parameters["values"], self._parameters.get("bias")
        crow, col = self._buffers["crow_indices"], self._buffers["col_indices"]
        grad = torch.is_grad_enabled() and (x.requires_grad or values.requires_grad or (
            bias is not None and bias.requires_grad))
        try:
            key = (x.shape, x.dtype, x.device, grad, torch.is_inference_mode_enabled(),
                   self.training, values.data_ptr(), None if bias is None else bias.data_ptr(),
                   crow.data_ptr(), crow._version, col.data_ptr(), col._version,
                   calibrate.generation)
        except RuntimeError:  # index buffers made under inference_mode keep no version
            return self._checked_forward(x)
        plan = self._plans.get(key)
        if plan is None:
            return self._plan(x, key, grad)
        return plan(x)

    def _plan(self, x: Tensor, key: tuple, grad: bool) -> Tensor:
        """This call's output, through the checked path (which validates ``x`` and the
        structure, picks the backend and builds its caches); the plan for later calls like it
        is kept under ``key``."""
        y = self._checked_forward(x)
        if len(self._plans) >= 64:  # many input shapes (variable lengths): start afresh
            self._plans.clear()
        key = (*key[:-1], calibrate.generation)  # (loading decisions from a file bumps it)
        self._plans[key] = self._make_plan(x, grad)
        return y

    def _make_plan(self, x: Tensor, grad: bool):
        """``plan(x) -> y`` for calls like ``x`` on the backend just picked: straight to the
        kernel, no check repeated."""
        backend, values, bias = self._last_backend, self.values, self.bias
        crow, col, in_features = self.crow_indices, self.col_indices, self.in_features
        lead_out = (*x.shape[:-1], self.out_features)
        if x.dtype != values.dtype:  # (casts: the checked path handles them)
            return self._checked_forward
        csr = self.block is None  # (the kernels read a layer's (nnz, 1) values as (nnz,))
        if backend == "dense":
            cache, index = self._dense, self.dense_index
            if grad:
                return lambda x: dense_linear(x, values.view(-1) if csr else values, crow, col,
                                              bias, index, cache)
            # no gradient: the kept weight is rewritten only when values changed
            v = values.detach().view(-1) if csr else values.detach()
            return cache.inference(v, crow, col, in_features, index, bias)
        run = None
        if backend == "cpu":  # the kernel with its checks made once (None: casts needed)
            run = cpu.kernels().forward_runner(values, crow, col, bias, in_features,
                                               nonfinite_rows)
            if run is not None and not grad:
                return lambda x: run(x.reshape(-1, in_features).contiguous()).view(lead_out)
        t = (self.crow_t, self.col_t, self.perm_t)
        return lambda x: eager_call(x.reshape(-1, in_features).contiguous(),
                                    values.view(-1) if csr else values, bias, crow, col, t,
                                    backend, run).view(lead_out)

    def _checked_forward(self, x: Tensor) -> Tensor:
        """The forward with every check on every call (traces, subclasses, autocast, and the
        first call of each plan)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"expected input of shape (*, {self.in_features}), got {tuple(x.shape)}"
            )
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._check_if_changed()
        values = self.values  # (nnz, 1) or blocks: the ops read (nnz, 1) as (nnz,)
        backend = resolve_backend(x, values, self.crow_indices, self.col_indices, self._backend)
        if not compiling:
            self._caches_for_call(backend)
            self._last_backend = backend
        return sparse_linear(
            x,
            values,
            self.crow_indices,
            self.col_indices,
            self.bias,
            backend=backend,
            transpose=(self.crow_t, self.col_t, self.perm_t),
            dense_index=self.dense_index,
            dense_cache=self._dense if backend == "dense" else None,
            structure_checked=not compiling,  # (by _check_if_changed)
        )

    @property
    def weight(self) -> Tensor:
        """``(out_features, in_features)``: the dense weight (zeros off the structure), for code
        that reads ``nn.Linear``'s ``.weight`` — ``nn.TransformerEncoderLayer``'s fast path,
        shape and dtype checks, weight inspection. A fresh tensor each time, differentiable
        with respect to ``values``: writing into it (an ``nn.init`` function, weight tying) does
        not reach the layer — use ``copy_csr_values_``, ``from_linear`` or
        ``reset_parameters``."""
        return self.dense_weight()

    def dense_weight(self) -> Tensor:
        """``(out_features, in_features)`` dense weight (zeros off the structure); differentiable."""
        self._check_if_changed()  # (an in-place edit of the structure makes dense_index stale)
        return dense_weight(self.values, self.crow_indices, self.col_indices, self.in_features,
                            self.dense_index)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.4g}, nnz={self.nnz}, "
            + (f"block={self.block}, " if self.block else "")
            + f"backend={self._backend!r}"
        )

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """Accept a state dict with a *different* structure of the same shape: the CSR
        buffers and the size of ``values`` are validated, then ``values`` and the buffers are
        resized before copying (an invalid structure changes nothing). ``values`` saved as
        ``(nnz,)`` (before they were stored 2-D) are read as ``(nnz, 1)``."""
        values = state_dict.get(prefix + "values")
        if self.block is None and isinstance(values, Tensor) and values.dim() == 1:
            state_dict[prefix + "values"] = values.reshape(-1, 1)
        crow = state_dict.get(prefix + "crow_indices")
        col = state_dict.get(prefix + "col_indices")
        if crow is not None or col is not None:  # one alone is checked against the other kept
            crow = self.crow_indices if crow is None else crow
            col = self.col_indices if col is None else col
            bo, bi = self.block or (1, 1)
            try:
                validate_csr(crow, col, (self.out_features // bo, self.in_features // bi))
            except (TypeError, ValueError) as e:
                errors.append(f"{prefix}crow_indices/col_indices: invalid structure: {e}")
                return
            want = self._values_shape(col.numel())
            values = state_dict.get(prefix + "values")
            if values is not None and tuple(values.shape) != want:  # before anything changes
                errors.append(f"size mismatch for {prefix}values: the saved structure has "
                              f"{col.numel()} {'blocks' if self.block else 'entries'}, so values "
                              f"must have shape {want}, got {tuple(values.shape)}")
                return
            if col.numel() != self.col_indices.numel() or not (
                torch.equal(crow.to(self.crow_indices), self.crow_indices)
                and torch.equal(col.to(self.col_indices), self.col_indices)
            ):
                with torch.no_grad():
                    self.values.data = self.values.new_empty(want)
                self._set_structure(crow, col)
                if values is None:  # strict=False without values: Kaiming init, not garbage
                    self.reset_parameters()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


# ------------------------------------------------------------------ file format (io.format)
def layer_from_record(record: Record) -> StructLearnedLinear:
    """The layer a file's checked :class:`~torch_structlearn.io.Record` describes (a backend
    this machine may lack, such as ``cpu``, is read as ``auto``)."""
    L = record.header
    layer = StructLearnedLinear(
        L["in_features"], L["out_features"], bias=L["bias"], connectivity=record.connectivity,
        block=tuple(L["block"]) if "block" in L else None,
        backend=L["backend"] if L["backend"] in ("auto", "csr", "dense") else "auto",
        dtype=record.values.dtype)
    layer.copy_csr_values_(record.values)
    if L["bias"]:
        with torch.no_grad():
            layer.bias.copy_(record.bias)
    return layer


def _one_layer(f: FileCheck, config: dict, layers: list) -> set[str]:
    if config != {} or len(layers) != 1:
        f.fail("a StructLearnedLinear file has an empty config and exactly one layer")
    return set()


register(Codec("StructLearnedLinear", lambda m: isinstance(m, StructLearnedLinear),
               lambda m: ({}, [m], {}), _one_layer,
               lambda f, config, records, tensors: layer_from_record(records[0])))


def _named_layers(model: nn.Module) -> list[tuple[str, StructLearnedLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, StructLearnedLinear)]


def _check_names(f: FileCheck, config: dict, layers: list) -> set[str]:
    names = config.get("names")
    if (set(config) != {"names"} or not isinstance(names, list) or len(names) != len(layers)
            or not all(isinstance(n, str) and re.fullmatch(r"[\w.]*", n) for n in names)
            or len(set(names)) != len(names)):
        f.fail("a ModuleStructures config must be {'names': [unique module names, one per layer]}")
    return set()


def _encode_named(model: nn.Module) -> tuple[dict, list, dict]:
    named = _named_layers(model)
    return {"names": [n for n, _ in named]}, [m for _, m in named], {}


# any module holding StructLearnedLinear layers (a converted model): its layers by module name
register(Codec(
    "ModuleStructures", lambda m: isinstance(m, nn.Module) and bool(_named_layers(m)),
    _encode_named, _check_names,
    lambda f, config, records, tensors: {n: layer_from_record(r)
                                         for n, r in zip(config["names"], records, strict=True)},
    order=100))
