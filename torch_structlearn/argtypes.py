"""Deprecated: the argparse types moved to :mod:`torch_structlearn.checks` as ``arg_*``, beside
the rules they apply (0.2); this module re-exports them for one release."""

import warnings

from .checks import arg_density as density
from .checks import arg_fraction as fraction
from .checks import arg_nonnegative as nonnegative
from .checks import arg_positive as positive

__all__ = ["density", "fraction", "nonnegative", "positive"]

warnings.warn("torch_structlearn.argtypes is deprecated: import arg_density, arg_fraction, "
              "arg_nonnegative and arg_positive from torch_structlearn.checks",
              DeprecationWarning, stacklevel=2)
