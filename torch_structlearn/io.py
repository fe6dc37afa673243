"""The file format: learned structures and weights as safetensors, never pickle.

A file holds, per layer ``i``, the tensors ``layers.{i}.crow_indices`` ``(out + 1,)``,
``layers.{i}.col_indices`` ``(nnz,)``, ``layers.{i}.values`` ``(nnz,)`` and optionally
``layers.{i}.bias`` ``(out,)``; and in the safetensors metadata:

* ``format``          ``"torch_structlearn"``
* ``format_version``  ``"1"``
* ``header``          JSON: ``{"class", "config", "layers": [{"in_features", "out_features",
  "nnz", "density", "bias", "backend"}], "user": {...}}`` (a block layer's entry also has
  ``"block": [bo, bi]``; its tensors are still the element CSR, in CSR order); ``class`` is
  ``StructLearnedLinear`` (empty config, one layer) or ``StructLearnedStack`` (config:
  ``in_features, width, max_depth, group_size, pool, groups, density, min_gain``; with
  ``groups = "learned"`` each layer also has ``layers.{i}.pool_permutation`` ``(width,)`` int64),
  or ``ModuleStructures`` (config ``{"names": [...]}``: the converted layers of a model).
* ``sha256``          hex digest over ``header`` and every tensor's bytes, in key order, so
  a flipped byte anywhere is detected.

:func:`save` writes atomically (temporary file in the same folder, then rename).
:func:`load` checks the header, keys, dtypes, shapes, checksum and every CSR invariant before
it builds a module; anything wrong raises :class:`StructureFileError` (a ``ValueError``)
naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import nn

from ._checks import block as check_block
from ._checks import positive_ints
from ._files import write_atomic as _write_atomic
from .connectivity import Connectivity, validate_csr
from .layers import StructLearnedLinear
from .pooling import GroupPool

__all__ = ["save", "load", "load_structures", "StructureFileError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "torch_structlearn"
FORMAT_VERSION = "1"
_INDEX_DTYPES = {"I32": torch.int32, "I64": torch.int64}
_VALUE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_ITEMSIZE = {"I32": 4, "I64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024


class StructureFileError(ValueError):
    """A structure file is unreadable, corrupted, or not in the torch_structlearn format."""


def _layers_of(module: nn.Module) -> tuple[str, dict[str, Any], list[StructLearnedLinear]]:
    from .classifier import StructLearnedClassifier
    from .stack import StructLearnedStack

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


def _digest(header: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _serialize(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Bytes of a format-1 file with ``header`` and ``tensors`` (checksum computed here)."""
    text = json.dumps(header, sort_keys=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "header": text,
            "sha256": _digest(text, tensors)}
    return _st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


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
        stack = module.body if cls == "StructLearnedClassifier" else module
        if cls in _STACKED and stack.layers[i][2].permutation is not None:
            tensors[p + "pool_permutation"] = stack.layers[i][2].permutation
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


def _read_safetensors_header(path, data: bytes) -> dict[str, Any]:
    """Parse and check the raw safetensors header (before any tensor is built)."""
    if len(data) < 8:
        _fail(path, f"not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > _MAX_HEADER or 8 + n > len(data):
        _fail(path, f"not a safetensors file or truncated (header length {n}, file {len(data)} bytes)")
    try:
        raw = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"corrupted safetensors header: {e}")
    if not isinstance(raw, dict):
        _fail(path, "corrupted safetensors header: not a JSON object")
    body = len(data) - 8 - n
    spans = []
    for key, info in raw.items():
        if key == "__metadata__":
            continue
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            _fail(path, f"corrupted entry for tensor {key!r}")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dt not in _ITEMSIZE:
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
    return raw


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
    if meta.get("format_version") != FORMAT_VERSION:
        _fail(path, f"unsupported format version {meta.get('format_version')!r}; "
                    f"this torch_structlearn reads version {FORMAT_VERSION}")
    if set(meta) != {"format", "format_version", "header", "sha256"}:
        _fail(path, f"unexpected metadata keys {sorted(meta)}")
    try:
        header = json.loads(meta["header"])
    except json.JSONDecodeError as e:
        _fail(path, f"corrupted header JSON: {e}")
    if not isinstance(header, dict) or set(header) != {"class", "config", "layers", "user"}:
        _fail(path, "header must be an object with keys class, config, layers, user")
    cls, config, layers = header["class"], header["config"], header["layers"]
    if cls not in ("StructLearnedLinear", *_STACKED, "ModuleStructures"):
        _fail(path, f"unknown class {cls!r}")
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
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
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
            if not isinstance(L[k], int) or isinstance(L[k], bool) or L[k] < 1:
                _fail(path, f"layer {i}: {k} must be a positive int, got {L[k]!r}")
        if not isinstance(L["nnz"], int) or not 0 <= L["nnz"] <= L["in_features"] * L["out_features"]:
            _fail(path, f"layer {i}: invalid nnz {L['nnz']!r}")
        if not isinstance(L["bias"], bool):
            _fail(path, f"layer {i}: bias must be true/false")
        if not isinstance(L["backend"], str):
            _fail(path, f"layer {i}: backend must be a string")
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
        if not shape or not positive_ints(shape):
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
    from .stack import StructLearnedStack

    try:
        stack = StructLearnedStack(c["in_features"], c["width"], max_depth=c["max_depth"],
                                   density=c["density"], group_size=c["group_size"],
                                   pool=c["pool"], min_gain=c["min_gain"], groups=c["groups"],
                                   depth=len(built), dtype=built[0][2].dtype)
    except (TypeError, ValueError) as e:
        _fail(path, f"invalid stack config: {e}")
    for i, (block, parts) in enumerate(zip(stack.layers, built, strict=True)):
        block[0] = _build_layer(*parts)
        perm = tensors.get(f"layers.{i}.pool_permutation")
        if perm is not None:
            try:
                block[2] = GroupPool(c["group_size"], c["pool"], permutation=perm)
            except ValueError as e:
                _fail(path, f"layer {i}: invalid pool_permutation: {e}")
    return stack


def _build_classifier(path, c: dict, built: list, tensors: dict, device):
    from .classifier import StructLearnedClassifier
    from .whitening import ZCAWhitening

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


def load(path: str | os.PathLike, *, device=None) -> nn.Module | dict[str, StructLearnedLinear]:
    """Read a file written by :func:`save` and return the module (on ``device``, default CPU):
    a ``StructLearnedLinear``, a ``StructLearnedStack``, a ``StructLearnedClassifier``, or —
    for a file saved from a model with converted layers — a dict
    ``{module name: StructLearnedLinear}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        StructureFileError: the file is truncated, not safetensors, of an unknown format or
            version, has missing/extra keys, wrong dtypes or shapes, a checksum mismatch, or
            an invalid CSR structure (unsorted / out-of-range columns, non-monotone crow).
    """
    path = Path(path)
    data = path.read_bytes()
    raw = _read_safetensors_header(path, data)
    header = _check_header(path, raw)
    try:
        tensors = _st_load(data)
    except Exception as e:  # safetensors raises its own error type; wrap it clearly
        _fail(path, f"unreadable tensor data: {e}")
    meta = raw["__metadata__"]
    if _digest(meta["header"], tensors) != meta["sha256"]:
        _fail(path, "checksum mismatch: the file is corrupted")
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
