"""torch_structlearn: learn the structure of sparse layers from unlabeled data, train them as
ordinary PyTorch modules."""

from . import hub  # `torch_structlearn.hub.load(name)`, as `torch.hub`
from .classifier import StructLearnedClassifier
from .coding import DictionaryLearner
from .connectivity import Connectivity
from .convert import Learn, Prune, convert, convert_structure, densify
from .dynamic import DynamicSparsity
from .io import StructureFileError, load, save
from .layers import StructLearnedLinear
from .learn import learn_layer, learn_structure
from .ops import sparse_linear
from .pooling import GroupPool
from .stack import StructLearnedStack
from .whitening import ZCAWhitening

__version__ = "0.1.0"

__all__ = [
    "hub",
    "Connectivity",
    "StructLearnedLinear",
    "StructLearnedStack",
    "StructLearnedClassifier",
    "GroupPool",
    "ZCAWhitening",
    "DictionaryLearner",
    "learn_structure",
    "learn_layer",
    "convert",
    "Prune",
    "Learn",
    "convert_structure",
    "densify",
    "DynamicSparsity",
    "sparse_linear",
    "save",
    "load",
    "StructureFileError",
]
