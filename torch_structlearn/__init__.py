"""torch_structlearn: learn the structure of sparse layers from unlabeled data, train them as
ordinary PyTorch modules."""

from .connectivity import Connectivity
from .io import StructureFileError, load, save
from .layers import StructLearnedLinear
from .ops import sparse_linear

__version__ = "0.1.0"

__all__ = [
    "Connectivity",
    "StructLearnedLinear",
    "sparse_linear",
    "save",
    "load",
    "StructureFileError",
]
