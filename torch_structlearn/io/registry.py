"""The registry of module classes the file format knows: one :class:`Codec` (to file / from
file) per class, registered by the module that defines the class (``layers.py``,
``stack.py``, ``classifier.py``), so :mod:`torch_structlearn.io` imports no module class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..connectivity import Connectivity

if TYPE_CHECKING:  # (annotations only: format imports this module)
    from .format import FileCheck

__all__ = ["Codec", "Record", "register", "codec_for", "sparse_layers", "CODECS"]


@dataclass(frozen=True)
class Record:
    """One layer as read from a file, checked: its header entry, its structure, its values
    ``(nnz,)`` in CSR order and its bias (or None)."""

    header: dict
    connectivity: Connectivity
    values: Tensor
    bias: Tensor | None


@dataclass(frozen=True)
class Codec:
    """How one module class is written to and read from a file.

    * ``claims(obj)``: whether :func:`save` uses this codec for ``obj``.
    * ``encode(obj) -> (config, layers, tensors)``: the header's ``config``, the object's
      ``StructLearnedLinear`` layers bottom-up (their tensors and header entries are written
      by the format), and any further tensors by full key.
    * ``check(file, config, layer_headers) -> keys``: the class's own checks of a header whose
      layer entries already passed the format's (``file.fail`` / ``file.entry``); returns the
      further tensor keys the file must hold.
    * ``decode(file, config, records, tensors)``: the object, built from checked
      :class:`Record` s and tensors.
    * ``order``: codecs claim in ascending order (a catch-all such as ``ModuleStructures``
      last).
    """

    name: str
    claims: Callable[[Any], bool]
    encode: Callable[[Any], tuple[dict, list, dict[str, Tensor]]]
    check: Callable[[FileCheck, dict, list[dict]], set[str]]
    decode: Callable[[FileCheck, dict, list[Record], dict[str, Tensor]], Any]
    order: int = 0


CODECS: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Register ``codec`` under its ``name`` (the header's ``class``); returns it."""
    CODECS[codec.name] = codec
    return codec


def codec_for(obj) -> Codec:
    for codec in sorted(CODECS.values(), key=lambda c: c.order):
        if codec.claims(obj):
            return codec
    raise TypeError("save() takes a StructLearnedLinear, a StructLearnedStack, a "
                    "StructLearnedClassifier or a module containing StructLearnedLinear layers; "
                    f"got {type(obj).__name__}")


def sparse_layers(obj) -> list:
    """The ``StructLearnedLinear`` layers of what :func:`load` returns (or of any module
    :func:`save` takes), bottom-up: a stack's or classifier's layers, a converted model's
    layers in module order, or the values of a ``{name: layer}`` dict."""
    return list(obj.values()) if isinstance(obj, dict) else codec_for(obj).encode(obj)[1]


