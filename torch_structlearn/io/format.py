"""The file format: learned structures and weights as safetensors, never pickle.

A file holds, per layer ``i``, the tensors ``layers.{i}.crow_indices`` ``(out + 1,)``,
``layers.{i}.col_indices`` ``(nnz,)``, ``layers.{i}.values`` ``(nnz,)`` and optionally
``layers.{i}.bias`` ``(out,)`` (a block layer's tensors are its element CSR, in CSR order),
plus what its module class adds (a stack's ``layers.{i}.pool_permutation``, a classifier's
whitening and head); and in the safetensors metadata:

* ``format``          ``"torch_structlearn"``
* ``format_version``  ``"2"`` (files of version ``"1"`` load too)
* ``header``          JSON: ``{"class", "config", "layers": [{"in_features", "out_features",
  "nnz", "density", "bias", "backend"}], "user": {...}}`` (a block layer's entry also has
  ``"block": [bo, bi]``). ``class`` names the module class's ``Codec``
  (:mod:`torch_structlearn.io.registry`) — registered by the module that defines the class (``StructLearnedLinear`` and ``ModuleStructures`` in
  ``layers.py``, ``StructLearnedStack`` in ``stack.py``, ``StructLearnedClassifier`` in
  ``classifier.py``), so this module imports no module class.
* ``sha256``          hex digest over ``header`` and, in key order, every tensor's key,
  dtype, shape and bytes, so a flipped byte anywhere — a dtype in the safetensors table
  included — is detected (version 1: keys and bytes only).

The bytes of a file depend only on what is saved: metadata and tensors in a fixed order, so
saving the same module twice gives the same file.

:func:`save` writes atomically (:func:`torch_structlearn.filesystem.write_atomic`: a temporary
file in the same folder, then a rename; a symlink is followed and its target replaced;
anything but a regular file at the destination is refused).
:func:`load` opens only regular files, reads the safetensors table and checks the header,
keys, dtypes, shapes and sizes before it reads the tensor data, then the checksum and every
CSR invariant before it builds a module, allocating no more than the file holds plus the
module it describes; anything wrong raises :class:`StructureFileError` (a ``ValueError``)
naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checks import block as check_block
from ..connectivity import Connectivity, validate_csr
from ..filesystem import write_atomic
from ..ops import BACKENDS
from .registry import CODECS, Codec, Record, codec_for

__all__ = ["save", "load", "load_structures", "FileCheck", "StructureFileError", "FORMAT",
           "FORMAT_VERSION", "MAX_FEATURES"]

FORMAT = "torch_structlearn"
FORMAT_VERSION = "2"
_READABLE_VERSIONS = ("1", "2")
INDEX_DTYPES = {"I32": torch.int32, "I64": torch.int64}
VALUE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_DTYPES = {**INDEX_DTYPES, **VALUE_DTYPES}
_NAMES = {v: k for k, v in _DTYPES.items()}
_ITEMSIZE = {"I32": 4, "I64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024
MAX_FEATURES = 2**31 - 1  # a layer's in/out features (int32 indices; far beyond any real layer)


class StructureFileError(ValueError):
    """A structure file is unreadable, corrupted, or not in the torch_structlearn format."""


# ---------------------------------------------------------------------- writing
def _digest(version: str, header: str, entries: dict[str, tuple[str, list[int], bytes]]) -> str:
    """The checksum of a file: ``header`` and, in key order, each tensor's key, (version 2:
    dtype and shape,) bytes. ``entries``: ``{key: (dtype name, shape, raw bytes)}``."""
    h = hashlib.sha256(header.encode())
    for key in sorted(entries):
        dtype, shape, data = entries[key]
        h.update(key.encode())
        if version != "1":
            h.update(f"|{dtype}|{','.join(map(str, shape))}|".encode())
        h.update(data)
    return h.hexdigest()


def _raw(t: Tensor) -> tuple[str, list[int], bytes]:
    t = t.detach().contiguous().cpu()
    if t.dtype not in _NAMES:
        raise TypeError(f"cannot save a tensor of dtype {t.dtype}")
    return _NAMES[t.dtype], list(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _serialize(header: dict[str, Any], tensors: dict[str, Tensor]) -> bytes:
    """Bytes of a safetensors file in this format with ``header`` and ``tensors`` (checksum
    computed here). Reproducible: the same arguments give the same bytes (metadata in a fixed
    order; tensors by item size, then key, so every tensor is aligned to its item size)."""
    text = json.dumps(header, sort_keys=True)
    entries = {k: _raw(t) for k, t in tensors.items()}
    table: dict[str, Any] = {"__metadata__": {
        "format": FORMAT, "format_version": FORMAT_VERSION, "header": text,
        "sha256": _digest(FORMAT_VERSION, text, entries)}}
    offset, chunks = 0, []
    for key in sorted(entries, key=lambda k: (-_ITEMSIZE[entries[k][0]], k)):
        dtype, shape, data = entries[key]
        table[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        chunks.append(data)
    head = json.dumps(table, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-aligned, as safetensors writes it
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def _layer_entries(i: int, layer) -> tuple[dict, dict[str, Tensor]]:
    """The header entry and tensors of layer ``i`` (files hold a block layer's element CSR)."""
    p = f"layers.{i}."
    if layer.block is None:
        crow, col = layer.crow_indices, layer.col_indices
    else:
        conn = layer.connectivity
        crow, col = (t.to(layer.col_indices.dtype) for t in (conn.crow_indices, conn.col_indices))
    tensors = {p + "crow_indices": crow, p + "col_indices": col,
               p + "values": layer.csr_values().detach()}
    if layer.bias is not None:
        tensors[p + "bias"] = layer.bias
    info = {"in_features": layer.in_features, "out_features": layer.out_features,
            "nnz": layer.nnz, "density": layer.density, "bias": layer.bias is not None,
            "backend": layer.backend, **({"block": list(layer.block)} if layer.block else {})}
    return info, tensors


def save(module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``module``'s structure and weights to ``path`` (safetensors), atomically.

    Args:
        module: a :class:`StructLearnedLinear`, a :class:`StructLearnedStack`, a
            :class:`StructLearnedClassifier` (whitening and head included), or any module
            containing ``StructLearnedLinear`` layers (e.g. one converted by
            :func:`torch_structlearn.convert`; saved by module name, weights of other layers
            not included).
        path: destination file (parent folders are created; a symlink's target is replaced;
            anything but a regular file there is refused).
        metadata: optional JSON-serialisable dict stored under ``header["user"]``.
    Returns:
        The path written.
    """
    codec = codec_for(module)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable: {e}") from None
    config, layers, tensors = codec.encode(module)
    tensors, infos = dict(tensors), []
    for i, layer in enumerate(layers):
        info, own = _layer_entries(i, layer)
        infos.append(info)
        tensors.update(own)
    header = {"class": codec.name, "config": config, "layers": infos, "user": metadata or {}}
    path = Path(path)
    write_atomic(path, _serialize(header, tensors))
    return path


# ---------------------------------------------------------------------- reading
class FileCheck:
    """The file being read, for the codecs' checks: ``fail(msg)`` raises
    :class:`StructureFileError` naming the file; ``entry(key, dtypes, shape)`` checks a
    tensor's table entry."""

    def __init__(self, path, raw: dict[str, Any]):
        self.path, self.raw = path, raw

    def fail(self, msg: str):
        raise StructureFileError(f"{self.path}: {msg}")

    def entry(self, key: str, dtypes, shape: list[int]) -> str:
        if key not in self.raw:
            self.fail(f"missing tensors ['{key}']")
        info = self.raw[key]
        if info["dtype"] not in dtypes:
            self.fail(f"tensor {key!r} has dtype {info['dtype']}, expected one of {sorted(dtypes)}")
        if info["shape"] != shape:
            self.fail(f"tensor {key!r} has shape {info['shape']}, expected {shape}")
        return info["dtype"]


def _json(f: FileCheck, text: str | bytes, what: str):
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        f.fail(f"corrupted {what}: {e}")
    except RecursionError:
        f.fail(f"corrupted {what}: nested too deeply")


def _read_table(f: FileCheck, head: bytes, size: int) -> int:
    """Parse and check the safetensors table of a file of ``size`` bytes from its first bytes
    ``head`` into ``f.raw``; returns the offset of the tensor data (not needed here)."""
    if size < 8 or len(head) < 8:
        f.fail(f"not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > _MAX_HEADER or 8 + n > size or len(head) < 8 + n:
        f.fail(f"not a safetensors file or truncated (header length {n}, file {size} bytes)")
    raw = _json(f, head[8 : 8 + n], "safetensors header")
    if not isinstance(raw, dict):
        f.fail("corrupted safetensors header: not a JSON object")
    body, spans = size - 8 - n, []
    for key, info in raw.items():
        if key == "__metadata__":
            continue
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            f.fail(f"corrupted entry for tensor {key!r}")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dt, str) or dt not in _ITEMSIZE:
            f.fail(f"tensor {key!r} has unsupported dtype {dt!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            f.fail(f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            f.fail(f"tensor {key!r} has invalid data offsets {offs!r}")
        if not 0 <= offs[0] <= offs[1] <= body or offs[1] - offs[0] != math.prod(shape) * _ITEMSIZE[dt]:
            f.fail(f"tensor {key!r}: data offsets {offs} do not match its shape/dtype or the file size")
        spans.append(tuple(offs))
    end = 0
    for a, b in sorted(spans):
        if a != end:
            f.fail("tensor data overlaps or leaves gaps: truncated or corrupted file")
        end = b
    if end != body:
        f.fail(f"file has {body - end} unexpected trailing bytes or is truncated")
    f.raw = raw
    return 8 + n


def _check_layer(f: FileCheck, i: int, L) -> set[str]:
    """The format's checks of layer ``i``'s header entry and tensors; returns their keys."""
    keys = {"in_features", "out_features", "nnz", "density", "bias", "backend"}
    if not isinstance(L, dict) or set(L) - {"block"} != keys:
        f.fail(f"layer {i}: header must have exactly the keys {sorted(keys)} (and optionally 'block')")
    for k in ("in_features", "out_features"):
        if not isinstance(L[k], int) or isinstance(L[k], bool) or not 1 <= L[k] <= MAX_FEATURES:
            f.fail(f"layer {i}: {k} must be an int in [1, {MAX_FEATURES}], got {L[k]!r}")
    if (not isinstance(L["nnz"], int) or isinstance(L["nnz"], bool)
            or not 0 <= L["nnz"] <= L["in_features"] * L["out_features"]):
        f.fail(f"layer {i}: invalid nnz {L['nnz']!r}")
    want = L["nnz"] / (L["in_features"] * L["out_features"])
    if (not isinstance(L["density"], (int, float)) or isinstance(L["density"], bool)
            or not abs(L["density"] - want) <= 1e-9):
        f.fail(f"layer {i}: density must be nnz / (in_features * out_features) = {want:.6g}, "
               f"got {L['density']!r:.100}")
    if not isinstance(L["bias"], bool):
        f.fail(f"layer {i}: bias must be true/false")
    if not isinstance(L["backend"], str) or L["backend"] not in BACKENDS:
        f.fail(f"layer {i}: backend must be one of {BACKENDS}, got {L['backend']!r:.100}")
    if "block" in L:
        try:
            check_block(L["block"], (L["out_features"], L["in_features"]))
        except ValueError as e:
            f.fail(f"layer {i}: {e}")
    p, out, nnz = f"layers.{i}.", L["out_features"], L["nnz"]
    names = ["crow_indices", "col_indices", "values"] + (["bias"] if L["bias"] else [])
    missing = sorted(p + n for n in names if p + n not in f.raw)
    if missing:
        f.fail(f"missing tensors {missing}")
    dc = f.entry(p + "crow_indices", INDEX_DTYPES, [out + 1])
    if f.entry(p + "col_indices", INDEX_DTYPES, [nnz]) != dc:
        f.fail(f"layer {i}: crow_indices and col_indices must share a dtype")
    dv = f.entry(p + "values", VALUE_DTYPES, [nnz])
    if L["bias"] and f.entry(p + "bias", VALUE_DTYPES, [out]) != dv:
        f.fail(f"layer {i}: bias and values must share a dtype")
    return {p + n for n in names}


def _check_header(f: FileCheck) -> tuple[Codec, dict[str, Any]]:
    meta = f.raw.get("__metadata__")
    if not isinstance(meta, dict):
        f.fail("no torch_structlearn metadata (is this a structure file?)")
    if meta.get("format") != FORMAT:
        f.fail(f"unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") not in _READABLE_VERSIONS:
        f.fail(f"unsupported format version {meta.get('format_version')!r}; "
               f"this torch_structlearn reads versions {', '.join(_READABLE_VERSIONS)}")
    if set(meta) != {"format", "format_version", "header", "sha256"} or not all(
            isinstance(v, str) for v in meta.values()):
        f.fail(f"the metadata must be exactly the strings format, format_version, header, "
               f"sha256; got keys {sorted(map(str, meta))}")
    header = _json(f, meta["header"], "header JSON")
    if not isinstance(header, dict) or set(header) != {"class", "config", "layers", "user"}:
        f.fail("header must be an object with keys class, config, layers, user")
    cls, config, layers = header["class"], header["config"], header["layers"]
    if not isinstance(cls, str) or cls not in CODECS:
        f.fail(f"unknown class {cls!r:.100}; known: {sorted(CODECS)}")
    if not isinstance(config, dict):
        f.fail(f"header 'config' must be an object, got {type(config).__name__}")
    if not isinstance(layers, list) or not layers:
        f.fail("header 'layers' must be a non-empty list")
    if not isinstance(header["user"], dict):
        f.fail("header 'user' must be an object")
    expected = set()
    for i, L in enumerate(layers):
        expected |= _check_layer(f, i, L)
    codec = CODECS[cls]
    expected |= codec.check(f, config, layers)
    extra = sorted(set(f.raw) - expected - {"__metadata__"})
    if extra:
        f.fail(f"unexpected tensors {extra}")
    return codec, header


def _read(path: Path) -> tuple[FileCheck, Codec, dict[str, Any], dict[str, Tensor]]:
    """``(file, codec, header, tensors)`` of the file at ``path``, checked: a regular file only
    (a FIFO or a device is refused before a byte is read), the table and the header before the
    tensor data is read, the checksum before a tensor is built."""
    f = FileCheck(path, {})
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        f.fail("is a folder, not a structure file")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        f.fail("is a folder, not a structure file" if stat.S_ISDIR(st.st_mode) else
               "not a regular file (a FIFO, socket or device is never read)")
    with os.fdopen(fd, "rb") as fh:
        size = st.st_size
        head = fh.read(8)
        if len(head) == 8:
            head += fh.read(min(struct.unpack("<Q", head)[0], _MAX_HEADER))
        start = _read_table(f, head, size)
        codec, header = _check_header(f)
        fh.seek(start)
        body = fh.read(size - start)
    if len(body) != size - start:
        f.fail("the file changed size while it was read")
    view, entries = memoryview(body), {}
    for key, info in f.raw.items():
        if key != "__metadata__":
            a, b = info["data_offsets"]
            entries[key] = (info["dtype"], info["shape"], view[a:b])
    meta = f.raw["__metadata__"]
    if _digest(meta["format_version"], meta["header"], entries) != meta["sha256"]:
        f.fail("checksum mismatch: the file is corrupted")
    tensors = {}  # (peak: the file's bytes and one copy of them in tensors)
    for key, (dtype, shape, data) in entries.items():
        flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        tensors[key] = flat.view(_DTYPES[dtype]).reshape(shape)
    return f, codec, header, tensors


def _records(f: FileCheck, header: dict, tensors: dict[str, Tensor]) -> list[Record]:
    records = []
    for i, L in enumerate(header["layers"]):
        p = f"layers.{i}."
        shape = (L["out_features"], L["in_features"])
        try:
            validate_csr(tensors[p + "crow_indices"], tensors[p + "col_indices"], shape)
        except (TypeError, ValueError) as e:
            f.fail(f"invalid structure in layer {i}: {e}")
        conn = Connectivity(tensors[p + "crow_indices"], tensors[p + "col_indices"], shape)
        if "block" in L:
            try:
                conn.block_structure(tuple(L["block"]))
            except ValueError as e:
                f.fail(f"invalid structure in layer {i}: {e}")
        records.append(Record(L, conn, tensors[p + "values"], tensors.get(p + "bias")))
    return records


def load(path: str | os.PathLike, *, device=None):
    """Read a file written by :func:`save` and return the module (on ``device``, default CPU):
    a ``StructLearnedLinear``, a ``StructLearnedStack``, a ``StructLearnedClassifier``, or —
    for a file saved from a model with converted layers — a dict
    ``{module name: StructLearnedLinear}``.

    Only regular files are read; the header is checked before the tensor data is read, and
    nothing is allocated beyond the file's tensors and the module they describe.

    Raises:
        FileNotFoundError / PermissionError: ``path`` does not exist or cannot be read.
        StructureFileError: anything else wrong with the file — not a regular file, truncated,
            not safetensors, of an unknown format or version, missing/extra keys, wrong
            dtypes or shapes, a checksum mismatch, an invalid CSR structure (unsorted /
            out-of-range columns, non-monotone crow) or an inconsistent configuration.
    """
    path = Path(path)
    try:
        f, codec, header, tensors = _read(path)
        out = codec.decode(f, header["config"], _records(f, header, tensors), tensors)
        if isinstance(out, dict):
            return {n: m.to(device or "cpu") for n, m in out.items()}
        return out.to(device) if device is not None else out
    except (StructureFileError, FileNotFoundError, PermissionError):
        raise
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            ValueError, RuntimeError, UnicodeError) as e:
        # a crafted file this module's checks did not foresee: still one clear error type
        raise StructureFileError(f"{path}: malformed structure file "
                                 f"({type(e).__name__}: {e})") from e
    except OSError as e:
        raise StructureFileError(f"{path}: cannot be read: {e.strerror or e}") from e


def load_structures(path: str | os.PathLike, *, device=None) -> dict:
    """The named layers of a file written by ``save(model)`` for a converted model (see
    :func:`torch_structlearn.convert_structure`)."""
    out = load(path, device=device)
    if not isinstance(out, dict):
        raise StructureFileError(f"{path}: holds a {type(out).__name__}, not named model layers")
    return out
