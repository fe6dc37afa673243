"""``StructLearnedClassifier``: the complete supervised model of docs/algorithm.md §6,
``x → whiten → [StructLearnedLinear → ReLU → GroupPool] × depth → nn.Linear`` (logits)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ._checks import positive_int, positive_ints
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
