"""Argument checks shared by every public entry point (one place, one wording), and their
argparse forms for the ``structlearn`` command, the benchmarks and the recipes (``arg_*``:
the same rule, its error turned into argparse's)."""

from __future__ import annotations

import argparse
import math
import numbers
import os

import torch


def positive_int(name: str, v) -> int:
    """``v`` as an int >= 1, else ``TypeError``/``ValueError`` naming ``name`` and the value."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def seed(name: str, v) -> int:
    """``v`` as an int (numpy's integers included), else ``TypeError`` naming ``name``: a float
    or a string would be truncated or fail deep inside ``Generator.manual_seed``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if not -(2**63) <= int(v) < 2**64:  # what torch.Generator.manual_seed takes
        raise ValueError(f"{name} must be in [-2**63, 2**64), got {v}")
    return int(v)


def choice(name: str, v, options):
    """``v`` when it is one of ``options``, else ``ValueError`` naming ``name``, the options and
    the value."""
    if not any(isinstance(v, type(o)) and v == o for o in options):
        raise ValueError(f"{name} must be one of {tuple(options)}, got {v!r}")
    return v


def float_dtype(dtype) -> torch.dtype | None:
    """``dtype`` when it is ``None`` or a floating-point ``torch.dtype``, else ``TypeError``."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    return dtype


def density(v, name: str = "density") -> float:
    """``v`` as a float in (0, 1], else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(v).__name__}")
    if math.isnan(v) or not 0.0 < float(v) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {v!r}")
    return float(v)


def fraction(name: str, v) -> float:
    """``v`` as a float strictly between 0 and 1, else ``TypeError``/``ValueError``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1), got {type(v).__name__} {v!r}")
    if math.isnan(v) or not 0.0 < float(v) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {v!r}")
    return float(v)


def penalty(name: str, v, alternative: str = "") -> float:
    """``v`` as a finite float >= 0 (a regularisation weight), else ``TypeError``/``ValueError``;
    ``alternative`` names another accepted value in the message (e.g. ``"'auto'"``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        also = f" or {alternative}" if alternative else ""
        raise TypeError(f"{name} must be a finite number{also}, got {v!r}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return float(v)


def positive(name: str, v) -> float:
    """``v`` as a finite float > 0 (a scale or a width), else ``TypeError``/``ValueError``."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:  # NaN: penalty's error
        raise ValueError(f"{name} must be > 0, got {v!r}")
    return penalty(name, v)


def positive_ints(v) -> bool:
    """Whether every entry of the sequence ``v`` is an int >= 1 (bools excluded)."""
    return all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)


def finite_examples(name: str, X: torch.Tensor) -> torch.Tensor:
    """``X (N, ...)`` if no entry is NaN or Inf, else ``ValueError`` naming ``name`` and the
    first example (row) that has one. Integer tensors pass unchecked."""
    if X.is_floating_point() and not bool(torch.isfinite(X).all()):
        row = int((~torch.isfinite(X.reshape(len(X), -1))).any(1).nonzero()[0])
        raise ValueError(f"{name} contains NaN or Inf (first in example {row})")
    return X


def image_shape(name: str, v) -> tuple[int, int, int]:
    """``v`` as a ``(C, H, W)`` tuple of positive ints, else ``ValueError`` naming ``name``."""
    if not isinstance(v, (tuple, list)) or len(v) != 3 or not positive_ints(v):
        raise ValueError(f"{name} must be an image shape (C, H, W) of positive ints, got {v!r}")
    return tuple(v)


def block(block, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """``block`` as ``(bo, bi)`` positive ints that divide ``shape`` (when given), else ``ValueError``."""
    if not isinstance(block, (tuple, list)) or len(block) != 2 or not positive_ints(block):
        raise ValueError(f"block must be a pair of positive ints (bo, bi), got {block!r}")
    bo, bi = block
    if shape is not None and (shape[0] % bo or shape[1] % bi):
        raise ValueError(f"block={tuple(block)} must divide the shape {shape}")
    return int(bo), int(bi)


def physical_memory() -> int | None:
    """This machine's RAM in bytes (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(what: str, nbytes: int) -> None:
    """``ValueError`` naming ``what`` when building it would take more than this machine's RAM
    (checked before allocating, so a typo such as a missing density fails at once)."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.1f} GiB, more than this machine's "
                         f"{total / 2**30:.1f} GiB of memory")


# ---------------------------------------------------------------- argparse forms of the rules

def arg_positive(kind):
    """An argparse type: a finite ``kind`` (int or float) > 0."""
    def parse(s: str):
        v = kind(s)
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    parse.__name__ = f"positive {kind.__name__}"  # what argparse names in 'invalid ... value'
    return parse


def arg_density(s: str) -> float:
    """An argparse type: a connection density in (0, 1] (:func:`density`)."""
    try:
        return density(float(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"density must be in (0, 1], got {s}") from None


def arg_nonnegative(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    v = float(text)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def arg_fraction(s: str) -> float:
    """An argparse type: a fraction in (0, 1) (:func:`fraction`)."""
    try:
        return fraction("value", float(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}") from e
