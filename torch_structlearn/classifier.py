"""``StructLearnedClassifier``: the complete supervised model of docs/algorithm.md §6,
``x → whiten → [StructLearnedLinear → ReLU → GroupPool] × depth → nn.Linear`` (logits)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import stack as stack_format
from .checks import positive_int, positive_ints
from .io import MAX_FEATURES, Codec, FileCheck, Record, register
from .stack import StructLearnedStack
from .whitening import ZCAWhitening

__all__ = ["StructLearnedClassifier"]


class StructLearnedClassifier(nn.Module):
    """Whitening, a structure-learned stack and a linear head.

    Args:
        whitening: a fitted :class:`ZCAWhitening` over ``prod(input_shape)`` features.
        body: a :class:`StructLearnedStack` with ``in_features = prod(input_shape)``.
        num_classes: outputs of the head.
        input_shape: the shape of one input example, e.g. ``(1, 28, 28)``; inputs may also come
            flattened.

    Shape: ``(N, *input_shape)`` or ``(N, d)`` → ``(N, num_classes)`` logits.
    """

    def __init__(self, whitening: ZCAWhitening, body: StructLearnedStack, num_classes: int,
                 input_shape: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(whitening, ZCAWhitening):
            raise TypeError(f"whitening must be a ZCAWhitening, got {type(whitening).__name__}")
        if not isinstance(body, StructLearnedStack):
            raise TypeError(f"body must be a StructLearnedStack, got {type(body).__name__}")
        positive_int("num_classes", num_classes)
        if not (isinstance(input_shape, (tuple, list)) and input_shape and positive_ints(input_shape)):
            raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got "
                             f"{input_shape!r}")
        d = math.prod(input_shape)
        if whitening.num_features != d or body.in_features != d:
            raise ValueError(f"input_shape {tuple(input_shape)} has {d} features; whitening has "
                             f"{whitening.num_features}, body.in_features is {body.in_features}")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.whitening, self.body = whitening, body
        self.head = nn.Linear(body.out_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images (or ``(N, d)``) → ``(N, num_classes)`` logits. Each part runs
        in its own dtype (e.g. a ``.half()`` body between a float32 whitening and head): the
        activations are cast at the two boundaries, in the head's dtype at the end."""
        h = self.whitening(x)
        first = next(self.body.parameters(), None)
        h = self.body(h if first is None else h.to(first.dtype))
        return self.head(h.to(self.head.weight.dtype))

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, num_classes={self.num_classes}"


# ------------------------------------------------------------------ file format (io.format)
_CONFIG = {**stack_format.CONFIG, "num_classes": int, "input_shape": list, "eps": float,
           "per_example_mean": bool}


def _whitening_tensors(kernel: int | None, rank: int | None) -> tuple[str, ...]:
    """The whitening's buffers a file stores, besides its mean."""
    return ("weight",) if kernel else ("basis", "gains", "floor") if rank else ("matrix",)


def _encode(model: StructLearnedClassifier) -> tuple[dict, list, dict[str, Tensor]]:
    config, layers, tensors = stack_format.encode(model.body)
    w = model.whitening
    config.update(num_classes=model.num_classes, input_shape=list(model.input_shape), eps=w.eps,
                  per_example_mean=w.per_example_mean)
    if w.kernel_size:  # convolutional whitening (optional key)
        config["whitening_kernel"] = w.kernel_size
    if w.rank:  # low-rank whitening (optional key)
        config["whitening_rank"] = w.rank
    tensors.update({"whitening.mean": w.mean, **{f"whitening.{k}": getattr(w, k)
                                                 for k in _whitening_tensors(w.kernel_size, w.rank)},
                    "head.weight": model.head.weight, "head.bias": model.head.bias})
    return config, layers, tensors


def _check(f: FileCheck, config: dict, layers: list) -> set[str]:
    expected = stack_format.check(f, config, layers, _CONFIG, "StructLearnedClassifier",
                                  optional={"whitening_kernel", "whitening_rank"})
    kernel, rank = config.get("whitening_kernel"), config.get("whitening_rank")
    if kernel is not None and (not isinstance(kernel, int) or isinstance(kernel, bool)
                               or kernel < 1 or kernel % 2 == 0):
        f.fail(f"whitening_kernel must be a positive odd int, got {kernel!r:.100}")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1
                             or kernel is not None):
        f.fail(f"whitening_rank must be a positive int (and no whitening_kernel), got "
               f"{rank!r:.100}")
    shape = config["input_shape"]
    if not shape or not positive_ints(shape) or max(shape) > MAX_FEATURES:
        f.fail(f"input_shape must be a list of positive ints, got {shape!r:.100}")
    d = math.prod(shape)
    if d != config["in_features"] or config["num_classes"] < 1:
        f.fail("input_shape / num_classes do not match the stack config")
    out = config["width"] // config["group_size"]
    if rank is not None and rank >= d:
        f.fail(f"whitening_rank {rank} must be below the {d} features")
    shapes = {"weight": [shape[0], shape[0], kernel, kernel], "basis": [d, rank],
              "gains": [rank], "floor": [1], "matrix": [d, d]}
    whitening = [(f"whitening.{k}", shapes[k]) for k in _whitening_tensors(kernel, rank)]
    for key, want in (("whitening.mean", [d]), *whitening,
                      ("head.weight", [config["num_classes"], out]),
                      ("head.bias", [config["num_classes"]])):
        f.entry(key, {"F32"}, want)
        expected.add(key)
    return expected


def _decode(f: FileCheck, c: dict, records: list[Record], tensors: dict[str, Tensor]
            ) -> StructLearnedClassifier:
    kernel, rank = c.get("whitening_kernel"), c.get("whitening_rank")
    try:
        whiten = ZCAWhitening(c["in_features"], eps=c["eps"], per_example_mean=c["per_example_mean"],
                              image_shape=tuple(c["input_shape"]) if kernel else None,
                              kernel_size=kernel, rank=rank)
    except (TypeError, ValueError) as e:
        f.fail(f"invalid whitening config: {e}")
    with torch.no_grad():
        whiten.mean.copy_(tensors["whitening.mean"])
        for k in _whitening_tensors(kernel, rank):
            getattr(whiten, k).copy_(tensors[f"whitening.{k}"])
        whiten._fitted.fill_(True)
    model = StructLearnedClassifier(whiten, stack_format.decode(f, c, records, tensors),
                                    c["num_classes"], c["input_shape"])
    with torch.no_grad():
        model.head.weight.copy_(tensors["head.weight"])
        model.head.bias.copy_(tensors["head.bias"])
    return model


register(Codec("StructLearnedClassifier", lambda m: isinstance(m, StructLearnedClassifier),
               _encode, _check, _decode))
