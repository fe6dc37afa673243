"""Deprecated: the layer's kernel caches moved to :mod:`torch_structlearn.ops.kernel_caches`
(0.2; only the layer uses them, beside the kernels they serve); re-exported for one release."""

import warnings

from .ops.kernel_caches import KernelCaches

__all__ = ["KernelCaches"]

warnings.warn("torch_structlearn.kernel_caches is deprecated: import from "
              "torch_structlearn.ops.kernel_caches", DeprecationWarning, stacklevel=2)
