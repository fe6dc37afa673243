"""Deprecated: reading batches from loaders moved to :mod:`torch_structlearn.loaders` (0.2);
this module re-exports it for one release."""

import warnings

from .loaders import MappedLoader, batches, first_batch, flatten_examples, require_reiterable

__all__ = ["batches", "first_batch", "flatten_examples", "MappedLoader", "require_reiterable"]

warnings.warn("torch_structlearn.data is deprecated: import from torch_structlearn.loaders",
              DeprecationWarning, stacklevel=2)
