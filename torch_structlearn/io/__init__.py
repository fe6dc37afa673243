"""Saving and loading learned structures: the file format is :mod:`torch_structlearn.io.format`
(one file); each module class registers how it is written and read (a :class:`Codec`,
:mod:`torch_structlearn.io.registry`) from the module that defines it."""

from .format import (  # noqa: F401  (_digest, _serialize: for tests and the fuzzer)
    FORMAT,
    FORMAT_VERSION,
    MAX_FEATURES,
    FileCheck,
    StructureFileError,
    _digest,
    _serialize,
    load,
    load_structures,
    save,
)
from .registry import Codec, Record, register, sparse_layers

__all__ = ["save", "load", "load_structures", "sparse_layers", "register", "Codec", "Record",
           "FileCheck", "StructureFileError", "FORMAT", "FORMAT_VERSION", "MAX_FEATURES"]
