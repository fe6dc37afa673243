"""Deprecated: the CSR helpers moved to :mod:`torch_structlearn.connectivity` (0.2); this
module re-exports them for one release."""

import warnings

from .connectivity import bsr_to_csr, check_csr_bounds, csr_transpose, row_of_entries, validate_csr

__all__ = ["validate_csr", "check_csr_bounds", "row_of_entries", "csr_transpose", "bsr_to_csr"]

warnings.warn("torch_structlearn.csr is deprecated: import these helpers from "
              "torch_structlearn.connectivity", DeprecationWarning, stacklevel=2)
