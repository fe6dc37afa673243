import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torch_structlearn as tsl
from torch_structlearn import Connectivity, StructLearnedLinear, StructureFileError
from torch_structlearn.io import _serialize


def _layer(dtype=torch.float32, bias=True, density=0.3, shape=(7, 11), seed=0):
    torch.manual_seed(seed)
    return StructLearnedLinear(shape[1], shape[0], bias=bias, density=density, dtype=dtype,
                               backend="csr")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_round_trip_bit_exact(tmp_path, dtype, bias):
    layer = _layer(dtype, bias)
    path = tsl.save(layer, tmp_path / "sub" / "layer.safetensors", metadata={"dataset": "x", "n": 3})
    back = tsl.load(path)
    assert isinstance(back, StructLearnedLinear) and back.backend == "csr"
    assert back.connectivity == layer.connectivity
    for a, b in zip(layer.state_dict().values(), back.state_dict().values(), strict=False):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8) if a.is_floating_point() else a,
                                                  b.view(torch.uint8) if b.is_floating_point() else b)
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp files left


def test_empty_structure_round_trip(tmp_path):
    conn = Connectivity(torch.zeros(4, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), (3, 5))
    layer = StructLearnedLinear(5, 3, connectivity=conn)
    back = tsl.load(tsl.save(layer, tmp_path / "e.safetensors"))
    assert back.nnz == 0 and torch.equal(back.bias, layer.bias)


def test_file_is_plain_safetensors_with_documented_keys(tmp_path):
    from safetensors import safe_open

    path = tsl.save(_layer(), tmp_path / "l.safetensors", metadata={"k": [1, 2]})
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"layers.0.crow_indices", "layers.0.col_indices",
                                 "layers.0.values", "layers.0.bias"}
        meta = f.metadata()
    assert meta["format"] == "torch_structlearn" and meta["format_version"] == "2"
    header = json.loads(meta["header"])
    assert header["class"] == "StructLearnedLinear" and header["user"] == {"k": [1, 2]}
    assert header["layers"][0]["out_features"] == 7


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match="StructLearnedLinear"):
        tsl.save(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        tsl.save(_layer(), tmp_path / "x", metadata={"a": object()})
    assert not (tmp_path / "x").exists()
    with pytest.raises(IsADirectoryError, match="is a folder: give a file path such as"):
        tsl.save(_layer(), tmp_path)
    assert list(tmp_path.iterdir()) == [] and list(tmp_path.parent.glob(".*.tmp")) == []


def test_saved_files_get_the_mode_open_would_give(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = tsl.save(_layer(), tmp_path / "new.safetensors")
        assert path.stat().st_mode & 0o777 == 0o640  # 0o666 minus the umask, not mkstemp's 0o600
        path.chmod(0o604)
        tsl.save(_layer(seed=1), path)  # an overwritten file keeps its mode
        assert path.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tsl.save(_layer(seed=0), tmp_path / "l.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("torch_structlearn.filesystem.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        tsl.save(_layer(seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["l.safetensors"]


def _raw_parts(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _rebuild(header_obj, body: bytes) -> bytes:
    text = json.dumps(header_obj).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _assert_clear_error_or_identical(path, original):
    try:
        back = tsl.load(path)
    except StructureFileError as e:
        assert str(path) in str(e)
        return
    # A change that leaves the file meaning the same thing (e.g. JSON whitespace) may load,
    # but then it must load to exactly the original.
    assert back.connectivity == original.connectivity
    assert torch.equal(back.values, original.values) and torch.equal(back.bias, original.bias)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    layer = _layer(shape=(9, 13), density=0.4)
    path = tsl.save(layer, tmp_path_factory.mktemp("f") / "orig.safetensors", {"u": 1})
    return layer, path.read_bytes()


@settings(max_examples=200)
@given(cut=st.integers(0, 10**6))
def test_fuzz_truncation(tmp_path_factory, saved, cut):
    layer, data = saved
    cut %= len(data)
    path = tmp_path_factory.mktemp("t") / "f.safetensors"
    path.write_bytes(data[:cut])
    with pytest.raises(StructureFileError):
        tsl.load(path)


@settings(max_examples=200)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_flipped_bytes(tmp_path_factory, saved, flips):
    layer, data = saved
    buf = bytearray(data)
    for pos, x in flips:
        buf[pos % len(buf)] ^= x
    path = tmp_path_factory.mktemp("b") / "f.safetensors"
    path.write_bytes(bytes(buf))
    _assert_clear_error_or_identical(path, layer)


_EDITS = [
    ("format", lambda m, h: m.__setitem__("format", "other")),
    ("version", lambda m, h: m.__setitem__("format_version", "3")),
    ("older version", lambda m, h: m.__setitem__("format_version", "1")),  # v1's checksum differs
    ("class", lambda m, h: h.__setitem__("class", "Evil")),
    ("missing layer key", lambda m, h: h["layers"][0].pop("nnz")),
    ("extra header key", lambda m, h: h.__setitem__("x", 1)),
    ("out_features", lambda m, h: h["layers"][0].__setitem__("out_features", 10)),
    ("nnz", lambda m, h: h["layers"][0].__setitem__("nnz", 3)),
    ("no bias", lambda m, h: h["layers"][0].__setitem__("bias", False)),
    ("user", lambda m, h: h.__setitem__("user", {"u": 2})),
    ("layers", lambda m, h: h.__setitem__("layers", [])),
    ("no metadata", None),
]


@pytest.mark.parametrize("name, edit", _EDITS, ids=[e[0] for e in _EDITS])
def test_edited_header_json(tmp_path, saved, name, edit):
    layer, data = saved
    raw, body = _raw_parts(data)
    if edit is None:
        raw.pop("__metadata__")
    else:
        header = json.loads(raw["__metadata__"]["header"])
        edit(raw["__metadata__"], header)
        raw["__metadata__"]["header"] = json.dumps(header, sort_keys=True)
    path = tmp_path / "f.safetensors"
    path.write_bytes(_rebuild(raw, body))
    with pytest.raises(StructureFileError):
        tsl.load(path)


@given(st.sampled_from(["dtype", "shape", "offsets", "drop", "extra"]))
def test_fuzz_tensor_table_edits(tmp_path_factory, saved, what):
    layer, data = saved
    raw, body = _raw_parts(data)
    key = "layers.0.col_indices"
    if what == "dtype":
        raw[key]["dtype"] = "F32"
    elif what == "shape":
        raw[key]["shape"] = [raw[key]["shape"][0] - 1]
    elif what == "offsets":
        raw[key]["data_offsets"][1] += 4
    elif what == "drop":
        raw.pop("layers.0.bias")
    else:
        raw["layers.0.extra"] = dict(raw["layers.0.bias"])
    path = tmp_path_factory.mktemp("e") / "f.safetensors"
    path.write_bytes(_rebuild(raw, body))
    with pytest.raises(StructureFileError):
        tsl.load(path)


def _tampered(layer, crow, col):
    info = {"in_features": layer.in_features, "out_features": layer.out_features, "nnz": col.numel(),
            "density": col.numel() / (layer.in_features * layer.out_features), "bias": False,
            "backend": "auto"}
    header = {"class": "StructLearnedLinear", "config": {}, "layers": [info], "user": {}}
    tensors = {"layers.0.crow_indices": crow, "layers.0.col_indices": col,
               "layers.0.values": torch.zeros(col.numel())}
    return _serialize(header, tensors)  # a valid checksum: only the indices are wrong


@settings(max_examples=200)
@given(st.sampled_from(["out_of_range", "negative", "unsorted", "duplicate", "crow_not_monotone",
                        "crow_start", "crow_end"]), st.integers(0, 1000))
def test_fuzz_tampered_indices(tmp_path_factory, saved, how, seed):
    layer, _ = saved
    crow = layer.crow_indices.clone().long()
    col = layer.col_indices.clone().long()
    g = torch.Generator().manual_seed(seed)
    row = int(torch.randint(0, layer.out_features, (1,), generator=g))
    s, e = int(crow[row]), int(crow[row + 1])
    if how == "out_of_range":
        col[s] = layer.in_features + int(torch.randint(0, 5, (1,), generator=g))
    elif how == "negative":
        col[s] = -1
    elif how == "unsorted":
        col[s:e] = col[s:e].flip(0)
    elif how == "duplicate":
        col[s + 1] = col[s]
    elif how == "crow_not_monotone":
        crow[row + 1] = crow[row] - 1
    elif how == "crow_start":
        crow[0] = 1
    else:
        crow[-1] = crow[-1] + 1
    path = tmp_path_factory.mktemp("i") / "f.safetensors"
    path.write_bytes(_tampered(layer, crow, col))
    with pytest.raises(StructureFileError, match="invalid structure|must"):
        tsl.load(path)


def test_not_a_file_kinds(tmp_path):
    p = tmp_path / "x.safetensors"
    for content in [b"", b"hello world, not safetensors", b"\x00" * 64,
                    struct.pack("<Q", 10**12) + b"{}"]:
        p.write_bytes(content)
        with pytest.raises(StructureFileError):
            tsl.load(p)
    with pytest.raises(FileNotFoundError):
        tsl.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("shape", [[], [1, 0, 12], [1, True, 12], [1.0, 1, 12]])
def test_classifier_file_with_a_bad_input_shape_is_refused(tmp_path, shape):
    from torch_structlearn import hub

    data = (hub.folders()[-1] / "mnist-single-d5" / "structure.safetensors").read_bytes()
    raw, body = _raw_parts(data)
    header = json.loads(raw["__metadata__"]["header"])
    header["config"]["input_shape"] = shape
    raw["__metadata__"]["header"] = json.dumps(header, sort_keys=True)
    path = tmp_path / "f.safetensors"
    path.write_bytes(_rebuild(raw, body))
    with pytest.raises(StructureFileError, match=r"input_shape must be a list of positive ints"):
        tsl.load(path)
