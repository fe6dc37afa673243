"""argparse types shared by the ``structlearn`` command, the benchmarks and the recipes: thin
wrappers that turn :mod:`~torch_structlearn._checks`' errors into argparse's (one check per
rule, in ``_checks``)."""

from __future__ import annotations

import argparse
import math

from ._checks import density as _check_density
from ._checks import fraction as _check_fraction

__all__ = ["density", "fraction", "nonnegative", "positive"]


def positive(kind):
    """An argparse type: a finite ``kind`` (int or float) > 0."""
    def parse(s: str):
        v = kind(s)
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    parse.__name__ = f"positive {kind.__name__}"  # what argparse names in 'invalid ... value'
    return parse


def density(s: str) -> float:
    """An argparse type: a connection density in (0, 1] (the library's check,
    :func:`torch_structlearn._checks.density`)."""
    try:
        return _check_density(float(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"density must be in (0, 1], got {s}") from None


def nonnegative(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    v = float(text)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def fraction(s: str) -> float:
    """An argparse type: a fraction in (0, 1)."""
    try:
        return _check_fraction("value", float(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}") from e
