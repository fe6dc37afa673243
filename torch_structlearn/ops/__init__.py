"""Sparse kernels behind one custom op; see :mod:`torch_structlearn.ops.sparse_linear`."""

from .sparse_linear import (
    BACKENDS,
    available_backends,
    check_backend,
    resolve_backend,
    sparse_linear,
)

__all__ = ["sparse_linear", "resolve_backend", "BACKENDS", "available_backends", "check_backend"]
