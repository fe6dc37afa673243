"""Deprecated: the file helpers moved to :mod:`torch_structlearn.filesystem` (0.2; ``files``
beside ``io/`` read as the file format); this module re-exports them for one release."""

import warnings

from .filesystem import cache_dir, file_lock, process_alive, write_atomic, write_json

__all__ = ["cache_dir", "file_lock", "process_alive", "write_atomic", "write_json"]

warnings.warn("torch_structlearn.files is deprecated: import from torch_structlearn.filesystem",
              DeprecationWarning, stacklevel=2)
