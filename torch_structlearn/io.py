"""The file format: learned structures and weights as safetensors, never pickle.

A file holds, per layer ``i``, the tensors ``layers.{i}.crow_indices`` ``(out + 1,)``,
``layers.{i}.col_indices`` ``(nnz,)``, ``layers.{i}.values`` ``(nnz,)`` and optionally
``layers.{i}.bias`` ``(out,)``; and in the safetensors metadata:

* ``format``          ``"torch_structlearn"``
* ``format_version``  ``"2"`` (files of version ``"1"`` load too)
* ``header``          JSON: ``{"class", "config", "layers": [{"in_features", "out_features",
  "nnz", "density", "bias", "backend"}], "user": {...}}`` (a block layer's entry also has
  ``"block": [bo, bi]``; its tensors are still the element CSR, in CSR order); ``class`` is
  ``StructLearnedLinear`` (empty config, one layer) or ``StructLearnedStack`` (config:
  ``in_features, width, max_depth, group_size, pool, groups, density, min_gain``; with
  ``groups = "learned"`` each layer also has ``layers.{i}.pool_permutation`` ``(width,)`` int64),
  or ``ModuleStructures`` (config ``{"names": [...]}``: the converted layers of a model).
* ``sha256``          hex digest over ``header`` and, in key order, every tensor's key,
  dtype, shape and bytes, so a flipped byte anywhere — a dtype in the safetensors table
  included — is detected (version 1: keys and bytes only).

The bytes of a file depend only on what is saved: metadata and tensors in a fixed order, so
saving the same module twice gives the same file.

:func:`save` writes atomically (:func:`torch_structlearn._files.write_atomic`: a temporary
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
import re
import stat
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import block as check_block
from ._checks import positive_ints
from ._files import write_atomic as _write_atomic
from .classifier import StructLearnedClassifier
from .connectivity import Connectivity, validate_csr
from .layers import StructLearnedLinear
from .ops import BACKENDS
from .pooling import GroupPool
from .stack import StructLearnedStack
from .whitening import ZCAWhitening

__all__ = ["save", "load", "load_structures", "StructureFileError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "torch_structlearn"
FORMAT_VERSION = "2"
_READABLE_VERSIONS = ("1", "2")
_INDEX_DTYPES = {"I32": torch.int32, "I64": torch.int64}
_VALUE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_DTYPES = {**_INDEX_DTYPES, **_VALUE_DTYPES}
_NAMES = {v: k for k, v in _DTYPES.items()}
_ITEMSIZE = {"I32": 4, "I64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_FEATURES = 2**31 - 1  # a layer's in/out features (int32 indices; far beyond any real layer)


class StructureFileError(ValueError):
    """A structure file is unreadable, corrupted, or not in the torch_structlearn format."""


def _layers_of(module: nn.Module) -> tuple[str, dict[str, Any], list[StructLearnedLinear]]:
    if isinstance(module, StructLearnedClassifier):
        _, config, layers = _layers_of(module.body)
        config = {**config, "num_classes": module.num_classes, "input_shape": list(module.input_shape),
                  "eps": module.whitening.eps, "per_example_mean": module.whitening.per_example_mean}
        if module.whitening.kernel_size:  # convolutional whitening (optional key)
            config["whitening_kernel"] = module.whitening.kernel_size
        return "StructLearnedClassifier", config, layers
    if isinstance(module, StructLearnedLinear):
        return "StructLearnedLinear", {}, [module]
    if isinstance(module, StructLearnedStack):
        config = {k: getattr(module, k) for k in _STACK_CONFIG}
        return "StructLearnedStack", config, [block[0] for block in module.layers]
    if isinstance(module, nn.Module):
        named = [(n, m) for n, m in module.named_modules() if isinstance(m, StructLearnedLinear)]
        if named:  # e.g. a model converted by torch_structlearn.convert
            return "ModuleStructures", {"names": [n for n, _ in named]}, [m for _, m in named]
    raise TypeError("save() takes a StructLearnedLinear, a StructLearnedStack, or a module "
                    f"containing StructLearnedLinear layers; got {type(module).__name__}")


def sparse_layers(obj: nn.Module | dict[str, StructLearnedLinear]) -> list[StructLearnedLinear]:
    """The ``StructLearnedLinear`` layers of what :func:`load` returns (or of any module
    :func:`save` takes), bottom-up: a stack's or classifier's layers, a converted model's
    layers in module order, or the values of a ``{name: layer}`` dict."""
    return list(obj.values()) if isinstance(obj, dict) else _layers_of(obj)[2]


_STACK_CONFIG = {"in_features": int, "width": int, "max_depth": int, "group_size": int,
                 "pool": str, "groups": str, "density": float, "min_gain": float}
_STACKED = ("StructLearnedStack", "StructLearnedClassifier")
_CLASSIFIER_CONFIG = {**_STACK_CONFIG, "num_classes": int, "input_shape": list, "eps": float,
                      "per_example_mean": bool}


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


def _raw(t: torch.Tensor) -> tuple[str, list[int], bytes]:
    t = t.detach().contiguous().cpu()
    if t.dtype not in _NAMES:
        raise TypeError(f"cannot save a tensor of dtype {t.dtype}")
    return _NAMES[t.dtype], list(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _serialize(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
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


def save(module: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``module``'s structure and weights to ``path`` (safetensors), atomically.

    Args:
        module: a :class:`StructLearnedLinear`, a :class:`StructLearnedStack`, a
            :class:`StructLearnedClassifier` (whitening and head included), or any module
            containing ``StructLearnedLinear`` layers (e.g. one converted by
            :func:`torch_structlearn.convert`; saved by module name, weights of other layers
            not included).
        path: destination file (parent folders are created).
        metadata: optional JSON-serialisable dict stored under ``header["user"]``.
    Returns:
        The path written.
    """
    cls, config, layers = _layers_of(module)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-serialisable: {e}") from None
    tensors: dict[str, torch.Tensor] = {}
    infos = []
    pools = None
    if cls in _STACKED:  # pool permutations: all layers' (identity where unset) or none
        stack = module.body if cls == "StructLearnedClassifier" else module
        pools = [block[2].permutation for block in stack.layers]
        if config["groups"] == "learned" or any(p is not None for p in pools):
            config = {**config, "groups": "learned"}
            pools = [torch.arange(stack.width) if p is None else p for p in pools]
        else:
            pools = None
    for i, layer in enumerate(layers):
        p = f"layers.{i}."
        if layer.block is None:
            tensors[p + "crow_indices"] = layer.crow_indices
            tensors[p + "col_indices"] = layer.col_indices
        else:  # files hold the element CSR view of block layers
            conn = layer.connectivity
            tensors[p + "crow_indices"] = conn.crow_indices.to(layer.col_indices.dtype)
            tensors[p + "col_indices"] = conn.col_indices.to(layer.col_indices.dtype)
        tensors[p + "values"] = layer.csr_values().detach()
        if layer.bias is not None:
            tensors[p + "bias"] = layer.bias
        if pools is not None:
            tensors[p + "pool_permutation"] = pools[i].long()
        infos.append({
            "in_features": layer.in_features, "out_features": layer.out_features,
            "nnz": layer.nnz, "density": layer.density, "bias": layer.bias is not None,
            "backend": layer.backend, **({"block": list(layer.block)} if layer.block else {}),
        })
    if cls == "StructLearnedClassifier":
        w = module.whitening
        tensors.update({"whitening.mean": w.mean,
                        **({"whitening.weight": w.weight} if w.kernel_size else
                           {"whitening.matrix": w.matrix}),
                        "head.weight": module.head.weight, "head.bias": module.head.bias})
    header = {"class": cls, "config": config, "layers": infos, "user": metadata or {}}
    path = Path(path)
    _write_atomic(path, _serialize(header, tensors))
    return path


# ---------------------------------------------------------------------- loading
def _fail(path, msg: str):
    raise StructureFileError(f"{path}: {msg}")


def _json(path, text: str | bytes, what: str):
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"corrupted {what}: {e}")
    except RecursionError:
        _fail(path, f"corrupted {what}: nested too deeply")


def _read_safetensors_header(path, head: bytes, size: int) -> tuple[dict[str, Any], int]:
    """Parse and check the safetensors table of a file of ``size`` bytes from its first bytes
    ``head`` (the 8-byte length and the table, or fewer). Returns ``(table, offset of the
    tensor data)``; nothing of the tensor data is needed."""
    if size < 8 or len(head) < 8:
        _fail(path, f"not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > _MAX_HEADER or 8 + n > size or len(head) < 8 + n:
        _fail(path, f"not a safetensors file or truncated (header length {n}, file {size} bytes)")
    raw = _json(path, head[8 : 8 + n], "safetensors header")
    if not isinstance(raw, dict):
        _fail(path, "corrupted safetensors header: not a JSON object")
    body = size - 8 - n
    spans = []
    for key, info in raw.items():
        if key == "__metadata__":
            continue
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            _fail(path, f"corrupted entry for tensor {key!r}")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dt, str) or dt not in _ITEMSIZE:
            _fail(path, f"tensor {key!r} has unsupported dtype {dt!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            _fail(path, f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            _fail(path, f"tensor {key!r} has invalid data offsets {offs!r}")
        numel = 1
        for s in shape:
            numel *= s
        if not 0 <= offs[0] <= offs[1] <= body or offs[1] - offs[0] != numel * _ITEMSIZE[dt]:
            _fail(path, f"tensor {key!r}: data offsets {offs} do not match its shape/dtype or the file size")
        spans.append(tuple(offs))
    spans.sort()
    end = 0
    for a, b in spans:
        if a != end:
            _fail(path, "tensor data overlaps or leaves gaps: truncated or corrupted file")
        end = b
    if end != body:
        _fail(path, f"file has {body - end} unexpected trailing bytes or is truncated")
    return raw, 8 + n


def _check_entry(path, raw, key: str, dtypes: dict[str, torch.dtype], shape: list[int]) -> str:
    info = raw[key]
    if info["dtype"] not in dtypes:
        _fail(path, f"tensor {key!r} has dtype {info['dtype']}, expected one of {sorted(dtypes)}")
    if info["shape"] != shape:
        _fail(path, f"tensor {key!r} has shape {info['shape']}, expected {shape}")
    return info["dtype"]


def _check_header(path, raw: dict[str, Any]) -> dict[str, Any]:
    meta = raw.get("__metadata__")
    if not isinstance(meta, dict):
        _fail(path, "no torch_structlearn metadata (is this a structure file?)")
    if meta.get("format") != FORMAT:
        _fail(path, f"unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") not in _READABLE_VERSIONS:
        _fail(path, f"unsupported format version {meta.get('format_version')!r}; "
                    f"this torch_structlearn reads versions {', '.join(_READABLE_VERSIONS)}")
    if set(meta) != {"format", "format_version", "header", "sha256"} or not all(
            isinstance(v, str) for v in meta.values()):
        _fail(path, f"the metadata must be exactly the strings format, format_version, header, "
                    f"sha256; got keys {sorted(map(str, meta))}")
    header = _json(path, meta["header"], "header JSON")
    if not isinstance(header, dict) or set(header) != {"class", "config", "layers", "user"}:
        _fail(path, "header must be an object with keys class, config, layers, user")
    cls, config, layers = header["class"], header["config"], header["layers"]
    if not isinstance(cls, str) or cls not in ("StructLearnedLinear", *_STACKED, "ModuleStructures"):
        _fail(path, f"unknown class {cls!r}")
    if not isinstance(config, dict):
        _fail(path, f"header 'config' must be an object, got {type(config).__name__}")
    if not isinstance(layers, list) or not layers:
        _fail(path, "header 'layers' must be a non-empty list")
    if not isinstance(header["user"], dict):
        _fail(path, "header 'user' must be an object")
    if cls == "StructLearnedLinear" and (config != {} or len(layers) != 1):
        _fail(path, "a StructLearnedLinear file has an empty config and exactly one layer")
    if cls == "ModuleStructures":
        names = config.get("names") if isinstance(config, dict) else None
        if (set(config) != {"names"} or not isinstance(names, list) or len(names) != len(layers)
                or len(set(names)) != len(names)
                or not all(isinstance(n, str) and re.fullmatch(r"[\w.]*", n) for n in names)):
            _fail(path, "a ModuleStructures config must be {'names': [unique module names, one per layer]}")
    if cls in _STACKED:
        keys = _STACK_CONFIG if cls == "StructLearnedStack" else _CLASSIFIER_CONFIG
        optional = {"whitening_kernel"} if cls == "StructLearnedClassifier" else set()
        if not isinstance(config, dict) or set(config) - optional != set(keys) or config.get(
                "groups") not in ("contiguous", "learned"):
            _fail(path, f"a {cls} config must have exactly the keys {sorted(keys)}"
                        + (f" (and optionally {sorted(optional)})" if optional else ""))
        kernel = config.get("whitening_kernel")
        if kernel is not None and (not isinstance(kernel, int) or isinstance(kernel, bool)
                                   or kernel < 1 or kernel % 2 == 0):
            _fail(path, f"whitening_kernel must be a positive odd int, got {kernel!r}")
        for k, typ in keys.items():
            v = config[k]
            if typ is bool:
                ok = isinstance(v, bool)
            elif typ is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
            elif typ is int:
                ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_FEATURES
            else:
                ok = isinstance(v, typ) and not isinstance(v, bool)
            if not ok:
                _fail(path, f"config {k!r} must be {typ.__name__}, got {v!r}")
        w, g = config["width"], config["group_size"]
        if g < 1 or w < 1 or w % g or config["in_features"] < 1 or len(layers) > config["max_depth"]:
            _fail(path, "inconsistent stack config")
        for i, L in enumerate(layers):
            want = (config["in_features"] if i == 0 else w // g, w)
            if isinstance(L, dict) and (L.get("in_features"), L.get("out_features")) != want:
                _fail(path, f"layer {i}: shape does not match the stack config, expected "
                            f"in/out {want}")

    expected = set()
    for i, L in enumerate(layers):
        keys = {"in_features", "out_features", "nnz", "density", "bias", "backend"}
        if not isinstance(L, dict) or set(L) - {"block"} != keys:
            _fail(path, f"layer {i}: header must have exactly the keys {sorted(keys)} "
                        "(and optionally 'block')")
        for k in ("in_features", "out_features"):
            if not isinstance(L[k], int) or isinstance(L[k], bool) or not 1 <= L[k] <= _MAX_FEATURES:
                _fail(path, f"layer {i}: {k} must be an int in [1, {_MAX_FEATURES}], got {L[k]!r}")
        if (not isinstance(L["nnz"], int) or isinstance(L["nnz"], bool)
                or not 0 <= L["nnz"] <= L["in_features"] * L["out_features"]):
            _fail(path, f"layer {i}: invalid nnz {L['nnz']!r}")
        want = L["nnz"] / (L["in_features"] * L["out_features"])
        if (not isinstance(L["density"], (int, float)) or isinstance(L["density"], bool)
                or not abs(L["density"] - want) <= 1e-9):
            _fail(path, f"layer {i}: density must be nnz / (in_features * out_features) = "
                        f"{want:.6g}, got {L['density']!r:.100}")
        if not isinstance(L["bias"], bool):
            _fail(path, f"layer {i}: bias must be true/false")
        if not isinstance(L["backend"], str) or L["backend"] not in BACKENDS:
            _fail(path, f"layer {i}: backend must be one of {BACKENDS}, got {L['backend']!r:.100}")
        if "block" in L:
            try:
                check_block(L["block"], (L["out_features"], L["in_features"]))
            except ValueError as e:
                _fail(path, f"layer {i}: {e}")
        p, out, nnz = f"layers.{i}.", L["out_features"], L["nnz"]
        names = ["crow_indices", "col_indices", "values"] + (["bias"] if L["bias"] else [])
        if cls in _STACKED and config["groups"] == "learned":
            names.append("pool_permutation")
        expected |= {p + n for n in names}
        missing = sorted(p + n for n in names if p + n not in raw)
        if missing:
            _fail(path, f"missing tensors {missing}")
        dc = _check_entry(path, raw, p + "crow_indices", _INDEX_DTYPES, [out + 1])
        if _check_entry(path, raw, p + "col_indices", _INDEX_DTYPES, [nnz]) != dc:
            _fail(path, f"layer {i}: crow_indices and col_indices must share a dtype")
        dv = _check_entry(path, raw, p + "values", _VALUE_DTYPES, [nnz])
        if L["bias"] and _check_entry(path, raw, p + "bias", _VALUE_DTYPES, [out]) != dv:
            _fail(path, f"layer {i}: bias and values must share a dtype")
        if p + "pool_permutation" in expected:
            _check_entry(path, raw, p + "pool_permutation", {"I64": torch.int64}, [out])
    if cls == "StructLearnedClassifier":
        shape = config["input_shape"]
        if not shape or not positive_ints(shape) or max(shape) > _MAX_FEATURES:
            _fail(path, f"input_shape must be a list of positive ints, got {shape!r}")
        d = math.prod(shape)
        if d != config["in_features"] or config["num_classes"] < 1:
            _fail(path, "input_shape / num_classes do not match the stack config")
        out = config["width"] // config["group_size"]
        k = config.get("whitening_kernel")
        whitening = (("whitening.weight", [shape[0], shape[0], k, k]) if k else
                     ("whitening.matrix", [d, d]))
        for key, want in (("whitening.mean", [d]), whitening,
                          ("head.weight", [config["num_classes"], out]),
                          ("head.bias", [config["num_classes"]])):
            if key not in raw:
                _fail(path, f"missing tensors ['{key}']")
            _check_entry(path, raw, key, {"F32": torch.float32}, want)
            expected.add(key)
    extra = sorted(set(raw) - expected - {"__metadata__"})
    if extra:
        _fail(path, f"unexpected tensors {extra}")
    return header


def _build_layer(L: dict, conn: Connectivity, values: torch.Tensor, bias) -> StructLearnedLinear:
    backend = L["backend"] if L["backend"] in ("auto", "csr", "dense") else "auto"
    block = tuple(L["block"]) if "block" in L else None
    layer = StructLearnedLinear(L["in_features"], L["out_features"], bias=L["bias"],
                                connectivity=conn, block=block, backend=backend, dtype=values.dtype)
    layer.copy_csr_values_(values)
    if L["bias"]:
        with torch.no_grad():
            layer.bias.copy_(bias)
    return layer


def _build_stack(path, c: dict, built: list, tensors: dict):
    try:
        stack = StructLearnedStack(c["in_features"], c["width"], max_depth=c["max_depth"],
                                   density=c["density"], group_size=c["group_size"],
                                   pool=c["pool"], min_gain=c["min_gain"], groups=c["groups"],
                                   depth=len(built), dtype=built[0][2].dtype,
                                   _layers=[_build_layer(*p) for p in built])
    except (TypeError, ValueError) as e:
        _fail(path, f"invalid stack config: {e}")
    for i, block in enumerate(stack.layers):
        perm = tensors.get(f"layers.{i}.pool_permutation")
        if perm is not None:
            try:
                block[2] = GroupPool(c["group_size"], c["pool"], permutation=perm)
            except ValueError as e:
                _fail(path, f"layer {i}: invalid pool_permutation: {e}")
    return stack


def _build_classifier(path, c: dict, built: list, tensors: dict, device):
    try:
        kernel = c.get("whitening_kernel")
        whiten = ZCAWhitening(c["in_features"], eps=c["eps"], per_example_mean=c["per_example_mean"],
                              image_shape=tuple(c["input_shape"]) if kernel else None,
                              kernel_size=kernel)
    except (TypeError, ValueError) as e:
        _fail(path, f"invalid whitening config: {e}")
    with torch.no_grad():
        whiten.mean.copy_(tensors["whitening.mean"])
        if kernel:
            whiten.weight.copy_(tensors["whitening.weight"])
        else:
            whiten.matrix.copy_(tensors["whitening.matrix"])
        whiten._fitted.fill_(True)
    model = StructLearnedClassifier(whiten, _build_stack(path, c, built, tensors), c["num_classes"],
                                    c["input_shape"])
    with torch.no_grad():
        model.head.weight.copy_(tensors["head.weight"])
        model.head.bias.copy_(tensors["head.bias"])
    return model.to(device) if device is not None else model


def load_structures(path: str | os.PathLike, *, device=None) -> dict[str, StructLearnedLinear]:
    """The named layers of a file written by ``save(model)`` for a converted model (see
    :func:`torch_structlearn.convert_structure`)."""
    out = load(path, device=device)
    if not isinstance(out, dict):
        raise StructureFileError(f"{path}: holds a {type(out).__name__}, not named model layers")
    return out


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """``(safetensors table, header, tensors)`` of the file at ``path``, checked: a regular
    file only (a FIFO or a device is refused before a byte is read), the table and the header
    before the tensor data is read, the checksum before a tensor is built."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        _fail(path, "is a folder, not a structure file")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        _fail(path, "is a folder, not a structure file" if stat.S_ISDIR(st.st_mode) else
              "not a regular file (a FIFO, socket or device is never read)")
    with os.fdopen(fd, "rb") as f:
        size = st.st_size
        head = f.read(8)
        if len(head) == 8:
            head += f.read(min(struct.unpack("<Q", head)[0], _MAX_HEADER))
        raw, start = _read_safetensors_header(path, head, size)
        header = _check_header(path, raw)
        f.seek(start)
        body = f.read(size - start)
    if len(body) != size - start:
        _fail(path, "the file changed size while it was read")
    view, entries = memoryview(body), {}
    for key, info in raw.items():
        if key != "__metadata__":
            a, b = info["data_offsets"]
            entries[key] = (info["dtype"], info["shape"], view[a:b])
    meta = raw["__metadata__"]
    if _digest(meta["format_version"], meta["header"], entries) != meta["sha256"]:
        _fail(path, "checksum mismatch: the file is corrupted")
    tensors = {}  # (peak: the file's bytes and one copy of them in tensors)
    for key, (dtype, shape, data) in entries.items():
        flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        tensors[key] = flat.view(_DTYPES[dtype]).reshape(shape)
    return raw, header, tensors


def load(path: str | os.PathLike, *, device=None) -> nn.Module | dict[str, StructLearnedLinear]:
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
        return _load(path, device)
    except (StructureFileError, FileNotFoundError, PermissionError):
        raise
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            ValueError, RuntimeError, MemoryError, UnicodeError) as e:
        # a crafted file this module's checks did not foresee: still one clear error type
        raise StructureFileError(f"{path}: malformed structure file "
                                 f"({type(e).__name__}: {e})") from e
    except OSError as e:
        raise StructureFileError(f"{path}: cannot be read: {e.strerror or e}") from e


def _load(path: Path, device) -> nn.Module | dict[str, StructLearnedLinear]:
    raw, header, tensors = _read(path)
    built = []
    for i, L in enumerate(header["layers"]):
        p = f"layers.{i}."
        shape = (L["out_features"], L["in_features"])
        try:
            validate_csr(tensors[p + "crow_indices"], tensors[p + "col_indices"], shape)
        except (TypeError, ValueError) as e:
            _fail(path, f"invalid structure in layer {i}: {e}")
        conn = Connectivity(tensors[p + "crow_indices"], tensors[p + "col_indices"], shape)
        if "block" in L:
            try:
                conn.block_structure(tuple(L["block"]))
            except ValueError as e:
                _fail(path, f"invalid structure in layer {i}: {e}")
        built.append((L, conn, tensors[p + "values"], tensors.get(p + "bias")))
    if header["class"] == "StructLearnedLinear":
        layer = _build_layer(*built[0])
    elif header["class"] == "ModuleStructures":
        return {n: _build_layer(*parts).to(device or "cpu")
                for n, parts in zip(header["config"]["names"], built, strict=True)}
    elif header["class"] == "StructLearnedClassifier":
        return _build_classifier(path, header["config"], built, tensors, device)
    else:
        layer = _build_stack(path, header["config"], built, tensors)
    return layer.to(device) if device is not None else layer
