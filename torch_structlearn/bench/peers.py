"""Other sparse linear layers, measured beside ours in the same run (``bench kernels --peers``).

* ``torch-csr``: torch's own sparse CSR weight as a parameter, ``y = (W @ xᵀ)ᵀ + b`` with plain
  autograd (``torch.sparse.mm``; the weight's gradient comes back masked to its pattern) —
  written here as an independent baseline, not through any of our backends.
* ``sparseprop``: SparseProp's ``SparseLinear`` (Nikdan et al. 2023, ``pip install
  sparseprop``; it compiles its C++ with pybind11 at install). Never a dependency: measured only
  where it is installed. float32, CPU, unstructured only.

Each peer is built from one of our layers and holds the same weights, so every row of a
benchmark times the same function.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from ..layers import StructLearnedLinear

__all__ = ["PEERS", "TorchCSRLinear", "available", "build"]

PEERS = ("torch-csr", "sparseprop")


class TorchCSRLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` a torch sparse CSR parameter, differentiated by autograd.

    Shape: ``(*, in_features) -> (*, out_features)``."""

    def __init__(self, layer: StructLearnedLinear):
        super().__init__()
        if layer.block is not None:
            raise ValueError("the torch-csr peer is for unstructured layers")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        conn = layer.connectivity
        w = torch.sparse_csr_tensor(conn.crow_indices.long(), conn.col_indices.long(),
                                    layer.csr_values().detach().clone(),
                                    (self.out_features, self.in_features), check_invariants=True)
        self.weight = nn.Parameter(w.to(layer.values.device))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = torch.sparse.mm(self.weight, x.reshape(-1, self.in_features).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def available(device: torch.device, dtype: torch.dtype, block) -> list[str]:
    """The peers that can run this layer here."""
    if block is not None:
        return []
    names = ["torch-csr"]
    if (device.type == "cpu" and dtype == torch.float32
            and importlib.util.find_spec("sparseprop") is not None):
        names.append("sparseprop")
    return names


def build(name: str, layer: StructLearnedLinear) -> nn.Module:
    """The peer ``name`` holding ``layer``'s weights (``out_features`` set, as timing needs)."""
    if name == "torch-csr":
        return TorchCSRLinear(layer)
    if name == "sparseprop":
        from sparseprop.modules import SparseLinear  # optional peer, imported where installed

        bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        peer = SparseLinear(layer.dense_weight().detach().clone(), bias=bias)
        peer.out_features = layer.out_features
        return peer
    raise ValueError(f"peer must be one of {PEERS}, got {name!r}")
