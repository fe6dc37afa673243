"""``loaders``: reading batches from user loaders: tensors, ``(x, y)`` tuples/lists, or dicts.

Every learning entry point goes through :func:`batches`, so bad input gets one clear error:
a loader that yields something else, NaN/Inf (naming the batch), a feature size that changes
between batches, or an empty loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from .checks import finite_examples

__all__ = ["batches", "first_batch", "flatten_examples", "known_examples", "MappedLoader",
           "require_reiterable"]


def require_reiterable(loader: Iterable, why: str) -> None:
    """``TypeError`` when ``loader`` is a one-shot iterator (a generator, ``iter(...)``): work
    that reads the data more than once (``why``) would silently get nothing on the second pass.
    Called before any batch is read."""
    if isinstance(loader, Iterator):  # has __next__; asking iter() would start DataLoader workers
        raise TypeError(f"{why} reads the loader more than once: pass a re-iterable loader (a "
                        f"DataLoader or a list of batches), not a one-shot iterator "
                        f"({type(loader).__name__})")


def flatten_examples(x: Tensor, name: str = "x") -> Tensor:
    """``(N, *) → (N, prod(*))`` — images ``(N, C, H, W)`` become rows — also for an empty batch
    (``N = 0``, where ``reshape(N, -1)`` is ambiguous); ``ValueError`` for fewer than 2 dims."""
    if x.dim() < 2:
        raise ValueError(f"{name} must be (N, d) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x.flatten(1)


def _extract(batch, key: str, index: int) -> Tensor:
    """The ``x`` of the loader's batch ``index`` (0-based; messages count batches from 1)."""
    if isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, (tuple, list)):
        if not batch or not isinstance(batch[0], Tensor):
            raise TypeError(f"batch {index + 1}: a tuple/list batch must start with a tensor (x, ...)")
        x = batch[0]
    elif isinstance(batch, dict):
        if key not in batch:
            raise KeyError(f"batch {index + 1}: dict batch has no key {key!r} (keys: {sorted(batch)}); "
                           f"pass key=...")
        x = batch[key]
        if not isinstance(x, Tensor):
            raise TypeError(f"batch {index + 1}: batch[{key!r}] must be a tensor, got {type(x).__name__}")
    else:
        raise TypeError(
            f"batch {index + 1}: the loader must yield tensors, (x, y) tuples/lists or dicts, "
            f"got {type(batch).__name__}"
        )
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"batch {index + 1}: x must be a real tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(
            f"batch {index + 1}: x must be (N, d) or (N, C, H, W), got shape {tuple(x.shape)}; to learn "
            f"from a tensor X pass DataLoader(TensorDataset(X), batch_size=...), not X itself")
    return x


def batches(loader: Iterable, *, key: str = "x", device=None, dtype=torch.float32,
            check_finite: bool = True) -> Iterator[Tensor]:
    """Yield each batch of ``loader`` as a ``(N, d)`` tensor (images are flattened).

    Raises ``TypeError`` for batches that are not tensors/tuples/dicts, ``ValueError`` for
    NaN/Inf (naming the batch, counted from 1, and the example), a feature size that changes,
    or an empty loader.
    """
    features = None
    n = 0
    for i, batch in enumerate(loader):
        x = _extract(batch, key, i)
        x = flatten_examples(x).to(device=device, dtype=dtype)
        if features is None:
            features = x.shape[1]
        elif x.shape[1] != features:
            raise ValueError(
                f"batch {i + 1}: feature size changed from {features} to {x.shape[1]}"
            )
        if check_finite:
            finite_examples(f"batch {i + 1}:", x)
        if x.shape[0] == 0:
            continue
        n += 1
        yield x
    if n == 0:
        raise ValueError("the loader yielded no (non-empty) batches")


def known_examples(loader: Iterable, key: str = "x") -> int | None:
    """How many examples ``loader`` yields per pass when that is known without reading it: a
    ``DataLoader``'s sampler length (its ``batch_sampler``'s, with ``drop_last``), or the sum
    of the batch sizes of a list/tuple of batches; None otherwise."""
    if isinstance(loader, (list, tuple)):
        try:
            return sum(_extract(b, key, i).shape[0] for i, b in enumerate(loader))
        except (TypeError, KeyError, ValueError):
            return None  # (batches() names the problem when they are read)
    sampler = getattr(loader, "sampler", None)
    try:
        n = len(sampler)
    except TypeError:
        return None
    if getattr(loader, "drop_last", False) and getattr(loader, "batch_size", None):
        n -= n % loader.batch_size
    return n


def first_batch(loader: Iterable, *, in_features: int | None = None, **kw) -> Tensor:
    """The first batch as ``(N, d)``: used to validate a loader before long work starts
    (``ValueError`` when ``in_features`` is given and ``d`` differs; ``TypeError`` for a one-shot
    iterator, which the work after this first read would find empty)."""
    require_reiterable(loader, "learning")
    for x in batches(loader, **kw):
        if in_features is not None and x.shape[1] != in_features:
            raise ValueError(f"the loader yields {x.shape[1]} features, expected "
                             f"in_features={in_features}")
        return x
    raise ValueError("the loader yielded no (non-empty) batches")  # pragma: no cover


class MappedLoader:
    """An iterable that applies ``fn`` to every ``(N, d)`` batch of ``loader``."""

    def __init__(self, loader: Iterable, fn: Callable[[Tensor], Tensor], **kw):
        self.loader, self.fn, self.kw = loader, fn, kw

    def __iter__(self) -> Iterator[Tensor]:
        for x in batches(self.loader, **self.kw):
            yield self.fn(x)

    def __len__(self) -> int:
        return len(self.loader)
