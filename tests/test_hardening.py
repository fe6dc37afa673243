"""Regression tests for the audit of issue [hardening]: each test names the case it was.

Index tensors reaching native code, stale caches, destinations `save` must not replace, files
that must not allocate or hang, corruptions the checksum must catch, crafted headers that must
raise `StructureFileError`. The fuzzer over many mutated files is `tests/test_fuzz_files.py`.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import torch

import torch_structlearn as tsl
from torch_structlearn import StructLearnedLinear, StructureFileError
from torch_structlearn.io import _serialize
from torch_structlearn.ops import available_backends, sparse_linear


def _structure(out=6, inp=10, density=0.4, seed=0):
    torch.manual_seed(seed)
    layer = StructLearnedLinear(inp, out, density=density)
    return layer.csr_values().detach().clone(), layer.crow_indices.clone(), layer.col_indices.clone()


# --------------------------------------------------------------- 1. native code, caches
@pytest.mark.parametrize("backend", ["csr", "dense", "cpu", "auto"])
@pytest.mark.parametrize("how", ["col_out_of_range", "col_negative", "crow_not_monotone", "crow_end"])
def test_functional_call_with_a_bad_structure_raises(backend, how):
    """Audit: ``sparse_linear(..., backend='csr')`` with columns >= in_features or a
    non-monotone crow was a segfault."""
    if backend not in available_backends():
        pytest.skip(f"{backend} unavailable")
    v, crow, col = _structure()
    if how == "col_out_of_range":
        col[3] = 10**6
    elif how == "col_negative":
        col[0] = -5
    elif how == "crow_not_monotone":
        crow[3] = crow[2] - 1
    else:
        crow[-1] += 2
    with pytest.raises(ValueError, match="crow|column|col"):
        sparse_linear(torch.randn(3, 10), v, crow, col, backend=backend)


@pytest.mark.parametrize("backend", ["csr", "cpu"])
def test_op_called_directly_with_mixed_index_dtypes_raises(backend):
    """Audit: ``torch.ops.structlearn.sparse_linear(x, v, crow_int64, col_int32, ..., 'cpu')``
    was a segfault."""
    if backend not in available_backends():
        pytest.skip(f"{backend} unavailable")
    v, crow, col = _structure()
    e = col.new_empty(0)
    with pytest.raises(TypeError, match="share an integer dtype"):
        torch.ops.structlearn.sparse_linear(torch.randn(3, 10), v, crow.long(), col.int(), e, e, e,
                                            None, backend)


@pytest.mark.parametrize("backend", ["csr", "cpu"])
def test_op_with_values_shorter_than_col_or_a_small_gy_raises(backend):
    """Audit: ``values`` shorter than ``col`` and a backward ``gy`` smaller than (n, out) read
    out of bounds (NaN results)."""
    if backend not in available_backends():
        pytest.skip(f"{backend} unavailable")
    v, crow, col = _structure()
    e = col.new_empty(0)
    x = torch.randn(3, 10)
    with pytest.raises(ValueError, match="values"):
        torch.ops.structlearn.sparse_linear(x, v[:-2], crow, col, e, e, e, None, backend)
    with pytest.raises(ValueError, match="gy must have shape"):
        torch.ops.structlearn.sparse_linear_backward(torch.randn(2, 6), x, v, crow, col, e, e, e,
                                                     backend, True, True)


def test_op_called_directly_computes_a_missing_transpose():
    """A direct backward call on ``csr`` with empty transposed structure computes it (no
    read through empty index tensors)."""
    v, crow, col = _structure()
    e = col.new_empty(0)
    x, gy = torch.randn(3, 10), torch.randn(3, 6)
    gx, gv, _ = torch.ops.structlearn.sparse_linear_backward(gy, x, v, crow, col, e, e, e, "csr",
                                                            True, True)
    w = torch.zeros(6, 10)
    w[torch.repeat_interleave(torch.arange(6), crow.diff().long()), col.long()] = v
    torch.testing.assert_close(gx, gy @ w)


def test_corrupted_cached_transpose_is_refused():
    """Audit: a corrupted cached transpose (csr) was a segfault."""
    torch.manual_seed(0)
    layer = StructLearnedLinear(10, 6, density=0.4, backend="csr")
    layer(torch.randn(2, 10)).sum().backward()  # builds the transpose
    assert layer.col_t.numel()
    layer.col_t[0] = 10**6
    with pytest.raises(ValueError, match="transposed structure"):
        layer(torch.randn(2, 10, requires_grad=True)).sum().backward()


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("key", ["col_indices", "crow_indices"])
def test_load_state_dict_with_one_bad_index_key_changes_nothing(strict, key):
    """Audit: ``load_state_dict({'col_indices': bad}, strict=False)`` was not validated (only
    both keys together were), and ``strict=True`` raised after copying the bad buffer; the next
    forward segfaulted."""
    torch.manual_seed(0)
    layer = StructLearnedLinear(10, 6, density=0.4, backend="csr")
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    bad = layer.state_dict()[key].clone()
    bad[-1 if key == "col_indices" else 2] = 10**6
    sd = layer.state_dict() if strict else {}
    sd = {**sd, key: bad}
    with pytest.raises(RuntimeError, match="invalid structure"):
        layer.load_state_dict(sd, strict=strict)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    layer(torch.randn(2, 10))  # still runs


@pytest.mark.parametrize("backend", ["csr", "dense", "cpu", "auto"])
def test_assigned_or_edited_index_buffers_are_checked_and_caches_rebuilt(backend):
    """Audit: assigned or in-place-edited buffers reached the kernels unchecked (segfault), and
    after a valid in-place edit of ``col_indices`` the dense backend used its stale cached index
    (output off by 0.36) and csr's cached transpose gave a wrong input gradient (0.064)."""
    if backend not in available_backends():
        pytest.skip(f"{backend} unavailable")
    torch.manual_seed(0)
    layer = StructLearnedLinear(10, 6, density=0.3, backend=backend)
    x = torch.randn(4, 10, requires_grad=True)
    layer(x).sum().backward()  # caches built
    # a valid edit: move row 0's first connection to a column row 0 does not use
    cols = set(layer.col_indices[: int(layer.crow_indices[1])].tolist())
    free = min(set(range(10)) - cols)
    with torch.no_grad():
        layer.col_indices[0] = free
        s, e = 0, int(layer.crow_indices[1])
        layer.col_indices[s:e] = layer.col_indices[s:e].sort().values
    w = layer.dense_weight().detach()
    x.grad = None
    y = layer(x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(y, x @ w.T + layer.bias)
    torch.testing.assert_close(x.grad, torch.ones(4, 6) @ w)
    with torch.no_grad():
        layer.col_indices[1] = 10**6  # in place, out of range
    with pytest.raises(ValueError, match="invalid structure"):
        layer(x)
    layer.col_indices = torch.zeros(3, dtype=torch.int32)  # assigned: wrong length
    with pytest.raises(ValueError, match="invalid structure"):
        layer(x)


def test_values_replaced_by_a_shorter_parameter_is_refused():
    torch.manual_seed(0)
    layer = StructLearnedLinear(10, 6, density=0.3)
    layer.values = torch.nn.Parameter(layer.values.detach()[:-1])
    with pytest.raises(ValueError, match="values has shape"):
        layer(torch.randn(2, 10))


# --------------------------------------------------------------- 2. save destinations
def _layer_file_bytes(seed=0):
    v, crow, col = _structure(seed=seed)
    torch.manual_seed(seed)
    return StructLearnedLinear(10, 6, density=0.4)


def test_save_refuses_a_fifo_and_keeps_it(tmp_path):
    """Audit: ``os.replace`` swapped a FIFO (and /dev/null, as root) for a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        tsl.save(_layer_file_bytes(), fifo)
    assert fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_save_through_a_symlink_replaces_its_target(tmp_path):
    """Audit: a symlink was replaced by a file. Decision: the link is followed and its target
    replaced atomically; the link stays (documented in ``save``)."""
    target = tmp_path / "real.safetensors"
    tsl.save(_layer_file_bytes(0), target)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    layer = _layer_file_bytes(1)
    tsl.save(layer, link)
    assert link.is_symlink() and torch.equal(tsl.load(target).values, layer.values)
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "new.safetensors")
    tsl.save(layer, dangling)
    assert dangling.is_symlink() and (tmp_path / "new.safetensors").is_file()


def test_temporaries_of_a_killed_save_are_removed_by_the_next(tmp_path):
    """Audit: SIGKILL during ``save`` left ``.tmp`` files (11, 160 MB) never cleaned."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "l.safetensors"
    stale = tmp_path / f".l.safetensors.{dead.pid}.abc123.structlearn.tmp"
    stale.write_bytes(b"x" * 100)
    alive = tmp_path / f".l.safetensors.{os.getppid()}.def456.structlearn.tmp"  # a live process
    alive.write_bytes(b"y")
    other = tmp_path / f".m.safetensors.{dead.pid}.abc123.structlearn.tmp"  # another file's
    other.write_bytes(b"z")
    tsl.save(_layer_file_bytes(), path)
    assert not stale.exists() and alive.exists() and other.exists() and path.is_file()


def test_a_killed_save_leaves_the_old_file(tmp_path):
    """SIGKILL in the middle of a save: the destination is the old file, whole."""
    path = tmp_path / "l.safetensors"
    tsl.save(_layer_file_bytes(0), path)
    before = path.read_bytes()
    code = textwrap.dedent(f"""
        import os, signal, torch, torch_structlearn as tsl
        from torch_structlearn import filesystem as files
        real = files.os.fsync
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        files.os.fsync = die
        torch.manual_seed(1)
        tsl.save(tsl.StructLearnedLinear(10, 6, density=0.4), {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert path.read_bytes() == before
    assert len(list(tmp_path.glob("*.structlearn.tmp"))) == 1  # left by the killed process
    tsl.save(_layer_file_bytes(2), path)
    assert not list(tmp_path.glob("*.structlearn.tmp"))


# --------------------------------------------------------------- 3. bounded loading
def test_load_refuses_a_fifo_and_devices_without_waiting(tmp_path):
    """Audit: a FIFO or /dev/urandom hung, /dev/zero was a MemoryError."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for p in (fifo, "/dev/zero", "/dev/urandom", "/dev/null"):
        if os.path.exists(p):
            with pytest.raises(StructureFileError, match="not a regular file"):
                tsl.load(p)
    with pytest.raises(StructureFileError, match="folder"):
        tsl.load(tmp_path)


def _linear_header(in_features, out_features, nnz, **extra):
    return {"in_features": in_features, "out_features": out_features, "nnz": nnz,
            "density": nnz / (in_features * out_features), "bias": False, "backend": "auto",
            **extra}


def _tiny_files(folder):
    """Small files describing huge layers (audit: 616 bytes → 1.5 GB, 780 → 1.5 GB, 884 →
    0.8 GB, 892 → >2 GB then bad_alloc)."""
    files = {}
    crow = torch.tensor([0, 1, 2, 2, 2], dtype=torch.int32)
    col = torch.tensor([3, 2**26 - 1], dtype=torch.int32)
    header = {"class": "StructLearnedLinear", "config": {}, "user": {},
              "layers": [_linear_header(2**26, 4, 2, backend="csr")]}
    header["layers"][0]["backend"] = "csr"
    files["csr_in_2^26"] = _serialize(header, {"layers.0.crow_indices": crow,
                                               "layers.0.col_indices": col,
                                               "layers.0.values": torch.ones(2)})
    header = {"class": "StructLearnedLinear", "config": {}, "user": {},
              "layers": [_linear_header(2**28, 4, 0, block=[2, 2**20])]}
    files["block_in_2^28"] = _serialize(header, {"layers.0.crow_indices": torch.zeros(5, dtype=torch.int32),
                                                 "layers.0.col_indices": torch.zeros(0, dtype=torch.int32),
                                                 "layers.0.values": torch.zeros(0)})
    for log in (24, 27):
        config = {"in_features": 2**log, "width": 8, "max_depth": 3, "group_size": 2, "pool": "l2",
                  "groups": "contiguous", "density": 0.5, "min_gain": 0.01}
        header = {"class": "StructLearnedStack", "config": config, "user": {},
                  "layers": [_linear_header(2**log, 8, 1)]}
        crow = torch.tensor([0] + [1] * 8, dtype=torch.int32)
        files[f"stack_in_2^{log}"] = _serialize(header, {
            "layers.0.crow_indices": crow, "layers.0.col_indices": torch.tensor([5], dtype=torch.int32),
            "layers.0.values": torch.ones(1)})
    paths = {}
    for name, data in files.items():
        assert len(data) < 1200, (name, len(data))
        paths[name] = folder / f"{name}.safetensors"
        paths[name].write_bytes(data)
    return paths


def test_tiny_files_describing_huge_layers_load_in_little_memory(tmp_path):
    """Load each in a fresh process and measure its peak resident memory against an empty
    baseline: a few tens of MB, not gigabytes."""
    paths = _tiny_files(tmp_path)
    code = textwrap.dedent("""
        import resource, sys, torch, torch_structlearn as tsl
        torch.zeros(1) @ torch.zeros(1)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m = tsl.load(sys.argv[1])
        m.train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) // 1024)
    """)
    for name, path in paths.items():
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert int(proc.stdout.split()[-1]) < 64, (name, proc.stdout)  # MiB above the baseline


def test_stack_file_loads_without_building_random_layers(tmp_path):
    """The stack of a file is built from the file's layers (no random layer of the config's
    size made first and replaced)."""
    path = _tiny_files(tmp_path)["stack_in_2^24"]
    stack = tsl.load(path)
    assert stack.depth == 1 and stack.layers[0][0].nnz == 1 and stack.in_features == 2**24


# --------------------------------------------------------------- 4. silent corruption
def _table(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_table(table, body):
    text = json.dumps(table).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize("swap", [("BF16", "F16"), ("F16", "BF16")])
def test_checksum_covers_dtypes(tmp_path, swap):
    """Audit: F16 <-> BF16 in the safetensors table loaded, weights off by 0.376."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if swap[0] == "BF16" else torch.float16
    data = tsl.save(StructLearnedLinear(10, 6, density=0.4, dtype=dtype), tmp_path / "a").read_bytes()
    table, body = _table(data)
    for key, info in table.items():
        if key != "__metadata__" and info["dtype"] == swap[0]:
            info["dtype"] = swap[1]
    path = tmp_path / "b"
    path.write_bytes(_with_table(table, body))
    with pytest.raises(StructureFileError, match="checksum"):
        tsl.load(path)


def test_int64_columns_beyond_int32_are_refused_not_truncated(tmp_path):
    """Audit: column 2**32 + 3 (in_features > 2**32) loaded as 3 and re-saved as another valid
    structure."""
    header = {"class": "StructLearnedLinear", "config": {}, "user": {},
              "layers": [_linear_header(2**33, 2, 1)]}
    data = _serialize(header, {"layers.0.crow_indices": torch.tensor([0, 1, 1]),
                               "layers.0.col_indices": torch.tensor([2**32 + 3]),
                               "layers.0.values": torch.ones(1)})
    path = tmp_path / "f"
    path.write_bytes(data)
    with pytest.raises(StructureFileError, match="in_features must be an int in"):
        tsl.load(path)


def test_index_dtype_of_a_layer_follows_its_sizes_not_only_nnz():
    from torch_structlearn.layers import _index_dtype

    assert _index_dtype(10, 2**31, 4) == torch.int64
    assert _index_dtype(10, 2**20, 4) == torch.int32


def test_saving_twice_gives_the_same_bytes(tmp_path):
    """Audit: saving the same module twice gave different bytes (metadata key order)."""
    torch.manual_seed(0)
    stack = tsl.StructLearnedStack(12, 8, max_depth=2, density=0.5, group_size=2, depth=2)
    a = tsl.save(stack, tmp_path / "a", metadata={"z": 1, "a": [1, 2]}).read_bytes()
    b = tsl.save(stack, tmp_path / "b", metadata={"a": [1, 2], "z": 1}).read_bytes()
    assert a == b
    back = tsl.load(tmp_path / "a")
    assert tsl.save(back, tmp_path / "c", metadata={"z": 1, "a": [1, 2]}).read_bytes() == a


def test_files_of_format_version_1_still_load():
    from torch_structlearn import hub

    for folder in hub.folders():
        for path in folder.glob("*/structure.safetensors"):
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                meta = json.loads(f.read(n))["__metadata__"]
            if meta["format_version"] == "1":
                tsl.load(path)
                return
    pytest.skip("no version-1 file in the hub")


# --------------------------------------------------------------- 6. crafted headers
def _crafted(edit):
    torch.manual_seed(0)
    layer = StructLearnedLinear(10, 6, density=0.4)
    header = {"class": "StructLearnedLinear", "config": {}, "user": {},
              "layers": [_linear_header(10, 6, layer.nnz)]}
    tensors = {"layers.0.crow_indices": layer.crow_indices, "layers.0.col_indices": layer.col_indices,
               "layers.0.values": layer.values.detach()}
    data = _serialize(header, tensors)
    table, body = _table(data)
    meta = table["__metadata__"]
    h = json.loads(meta["header"])
    if edit == "deep header":  # (json.dumps cannot write it: the text is made by hand)
        meta["header"] = '{"class": "StructLearnedLinear", "config": {}, "layers": ' + "[" * 50000 + "]" * 50000 + ', "user": {}}'
        return _with_table(table, body)
    if edit == "deep table":
        text = json.dumps(table)[:-1] + ', "x": ' + "[" * 50000 + "]" * 50000 + "}"
        text = text.encode() + b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + body
    edit(table, meta, h)
    if isinstance(meta, dict) and isinstance(meta.get("header"), str):
        meta["header"] = json.dumps(h, sort_keys=True)
    return _with_table(table, body)


_CRAFTED = {
    "deep nesting in header": "deep header",
    "deep nesting in table": "deep table",
    "non-string metadata": lambda t, m, h: m.__setitem__("sha256", 5),
    "list dtype": lambda t, m, h: t["layers.0.values"].__setitem__("dtype", ["F32"]),
    "non-dict config": lambda t, m, h: h.__setitem__("config", [1, 2]),
    "non-dict layer": lambda t, m, h: h.__setitem__("layers", [[1]]),
    "in_features 2**63": lambda t, m, h: h["layers"][0].__setitem__("in_features", 2**63),
    "negative nnz": lambda t, m, h: h["layers"][0].__setitem__("nnz", -1),
    "bool nnz": lambda t, m, h: h["layers"][0].__setitem__("nnz", True),
    "string density": lambda t, m, h: h["layers"][0].__setitem__("density", "x"),
    "class is a list": lambda t, m, h: h.__setitem__("class", ["StructLearnedLinear"]),
    "block of strings": lambda t, m, h: h["layers"][0].__setitem__("block", ["a", "b"]),
    "shape of floats": lambda t, m, h: t["layers.0.values"].__setitem__("shape", [1.5]),
}


@pytest.mark.parametrize("name", list(_CRAFTED))
def test_crafted_headers_raise_structure_file_error(tmp_path, name):
    """Audit: RecursionError (deep nesting, 135 cases), TypeError (87: non-string metadata,
    list dtype, non-dict config), OverflowError (in_features >= 2**63)."""
    path = tmp_path / "f"
    path.write_bytes(_crafted(_CRAFTED[name]))
    with pytest.raises(StructureFileError) as info:
        tsl.load(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------- 5, 8. hub cards and listing
def _hub_entry(root, name, card, structure=True):
    from torch_structlearn import hub

    folder = root / name
    folder.mkdir(parents=True)
    if structure:
        src = hub.folders()[-1] / "vit-tiny-cifar10-mlp-d10" / "structure.safetensors"
        (folder / "structure.safetensors").write_bytes(src.read_bytes())
    (folder / "card.json").write_text(card if isinstance(card, str) else json.dumps(card))
    return folder


_BAD_CARDS = {
    "checkpoint_path": {"timm_model": "vit_tiny_patch16_224", "timm_kwargs": {"checkpoint_path": "/etc/passwd"}},
    "hf-hub prefix": {"timm_model": "hf-hub:x/y"},
    "local-dir prefix": {"timm_model": "local-dir:/tmp"},
    "unknown architecture": {"timm_model": "no_such_model_xyz"},
    "huge num_classes": {"timm_model": "vit_tiny_patch16_224", "timm_kwargs": {"num_classes": 4_000_000}},
    "string img_size": {"timm_model": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": "32"}},
    "kwargs not a dict": {"timm_model": "vit_tiny_patch16_224", "timm_kwargs": [1]},
    "model not a string": {"timm_model": ["vit_tiny_patch16_224"]},
}


@pytest.mark.parametrize("name", list(_BAD_CARDS))
def test_hub_cards_cannot_pass_unchecked_arguments_to_timm(tmp_path, monkeypatch, name):
    """Audit: ``timm_kwargs.checkpoint_path`` read any local file, ``hf-hub:x/y`` tried a
    download (34 s), ``local-dir:`` read any config, num_classes 4e6 allocated 3.7 GB; errors
    surfaced as raw TypeError/KeyError/IndexError."""
    from torch_structlearn import hub

    _hub_entry(tmp_path, "evil", _BAD_CARDS[name])
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm was called"))
    with pytest.raises(hub.HubEntryError, match="hub entry 'evil'"):
        hub.load("evil")


def test_hub_list_shows_valid_entries_and_marks_bad_ones(tmp_path, monkeypatch, capsys):
    """Audit: ``structlearn hub list`` aborted on one bad entry (bad name, invalid card JSON,
    non-numeric density) after printing some rows; ANSI escapes in a card were printed raw."""
    from torch_structlearn import hub
    from torch_structlearn.cli import main

    _hub_entry(tmp_path, "Bad Name", {"dataset": "x"})
    _hub_entry(tmp_path, "broken-json", "{not json")
    _hub_entry(tmp_path, "deep-json", "[" * 100000 + "]" * 100000)
    _hub_entry(tmp_path, "text-density", {"dataset": "\x1b[31mred\x1b[0m", "density": "high"})
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    assert "Bad Name" not in hub.list() and "broken-json" in hub.list()
    assert main(["hub", "list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred" in out
    assert "mnist-single-d5" in out  # the repo's entries still listed
    for name in ("Bad Name", "broken-json", "deep-json"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert "(invalid:" in line
    line = next(line for line in out.splitlines() if line.startswith("text-density"))
    assert "(invalid" not in line and " ? " in line


# --------------------------------------------------------------- 7. command line
def _cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "torch_structlearn.cli", *argv], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_cli_os_errors_are_one_line_not_tracebacks(tmp_path):
    """Audit: ``inspect DIR``, ``--png afile/x.png``, ``convert --checkpoint DIR``, a malicious
    checkpoint (UnpicklingError), ``learn --out`` under a file or in /sys printed tracebacks;
    ``inspect FIFO`` hung."""
    torch.manual_seed(0)
    structure = tsl.save(StructLearnedLinear(12, 6, density=0.5), tmp_path / "s.safetensors")
    afile = tmp_path / "afile"
    afile.write_text("x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    cases = [
        ["inspect", str(tmp_path)],
        ["inspect", str(fifo)],
        ["inspect", str(structure), "--png", str(afile / "x.png"), "--image-shape", "3,2,2"],
        ["convert", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")],
        ["convert", "vit_tiny_patch16_224", "--checkpoint", str(evil), "--out", str(tmp_path / "o"),
         "--limit", "4", "--quiet"],
        ["learn", "--out", str(afile / "sub"), "--limit", "50"],
        ["learn", "--out", "/proc/structlearn-out", "--limit", "50"],
    ]
    for argv in cases:
        proc = _cli(*argv)
        assert proc.returncode == 2, (argv, proc.stdout[-500:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (argv, proc.stderr)
        assert "pwned" not in proc.stdout
        assert ".tmp" not in proc.stderr


def test_write_errors_name_the_path_given_not_a_temporary_file(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(PermissionError) as info:
            tsl.save(_layer_file_bytes(), ro / "l.safetensors")
        assert str(ro / "l.safetensors") in str(info.value) and ".tmp" not in str(info.value)
    finally:
        ro.chmod(0o700)


def test_learn_writes_its_outputs_together(tmp_path, monkeypatch):
    """Audit: an interrupted ``learn --out`` left a new structure beside the old results (13 of
    24 runs). The outputs go to a staging folder and are renamed into place together."""
    from torch_structlearn.cli import _staging

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("old")
    (out / "structure.safetensors").write_text("old")
    with pytest.raises(KeyboardInterrupt), _staging(out) as stage:
        (stage / "structure.safetensors").write_text("new")
        raise KeyboardInterrupt  # interrupted before the other files were written
    assert (out / "structure.safetensors").read_text() == "old"
    assert [p.name for p in out.iterdir() if p.name.startswith(".incoming")] == []
    with _staging(out) as stage:
        for name in ("structure.safetensors", "results.json"):
            (stage / name).write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"structure.safetensors": "new",
                                                              "results.json": "new"}


# --------------------------------------------------------------- 9. round trips
def test_learned_groups_stack_saved_before_learning_round_trips(tmp_path):
    """Audit: a ``groups='learned'`` stack saved before learning failed to load."""
    torch.manual_seed(0)
    stack = tsl.StructLearnedStack(12, 8, max_depth=2, density=0.5, group_size=2, groups="learned")
    back = tsl.load(tsl.save(stack, tmp_path / "s"))
    x = torch.randn(3, 12)
    torch.testing.assert_close(back(x), stack(x))


def test_contiguous_stack_given_a_permutation_round_trips(tmp_path):
    """Audit: a contiguous stack given a permutation gave 'unexpected tensors' at load."""
    from torch_structlearn.pooling import GroupPool

    torch.manual_seed(0)
    stack = tsl.StructLearnedStack(12, 8, max_depth=2, density=0.5, group_size=2, depth=2)
    stack.layers[1][2] = GroupPool(2, "l2", permutation=torch.randperm(8))
    back = tsl.load(tsl.save(stack, tmp_path / "s"))
    x = torch.randn(3, 12)
    torch.testing.assert_close(back(x), stack(x))


# --------------------------------------------------------------- 10. API arguments
def test_layer_arguments_are_checked_before_allocating():
    """Audit: ``StructLearnedLinear(100000, 100000, density=1e-4)`` tried 40 GB; ``bias='no'``
    made a bias; ``forward(list)`` and ``seed=2**64`` gave messages naming no argument."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    layer = StructLearnedLinear(100_000, 100_000, density=1e-4)
    assert layer.nnz == 100_000 * 10
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 500  # MiB
    fan = layer.fan_in
    assert bool((fan == 10).all())
    with pytest.raises(TypeError, match="bias must be True or False"):
        StructLearnedLinear(4, 3, bias="no")
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        StructLearnedLinear(4, 3)([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*64\)"):
        tsl.Connectivity.random((3, 4), density=0.5, seed=2**64)
    with pytest.raises(ValueError, match=r"in_features must be an int in \[0, 2\*\*31 - 1\]"):
        tsl.Connectivity(torch.zeros(2, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), (1, 2**70))


def test_sparse_random_connectivity_is_uniform():
    """The O(nnz) sampler for large sparse layers: every row has distinct sorted columns, and
    every column is picked about equally often (chi-square against uniform)."""
    from torch_structlearn.connectivity import _distinct_draws

    g = torch.Generator().manual_seed(0)
    picks = _distinct_draws(20_000, 64, 8, g)
    assert all(len(set(r)) == 8 for r in picks[:500].tolist())
    counts = torch.bincount(picks.flatten(), minlength=64).double()
    expected = picks.numel() / 64
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 120  # 63 degrees of freedom: p < 1e-5 above ~118


def test_nan_mask_is_refused_and_large_masks_convert_in_chunks():
    with pytest.raises(ValueError, match="mask contains NaN"):
        tsl.Connectivity.from_mask(torch.tensor([[1.0, float("nan")]]))
    mask = torch.rand(300, 70_000, generator=torch.Generator().manual_seed(0)) < 0.01
    conn = tsl.Connectivity.from_mask(mask)
    assert torch.equal(conn.to_mask(), mask)


def test_whitening_on_constant_examples_is_an_error_not_a_non_finite_matrix():
    """Audit: ``ZCAWhitening.fit`` on constant examples gave a non-finite matrix silently."""
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.full((16, 6), 0.5)
    with pytest.raises(ValueError, match="no variance"):
        tsl.ZCAWhitening(6).fit(DataLoader(TensorDataset(X), batch_size=8))
    with pytest.raises(ValueError, match="no variance"):
        tsl.ZCAWhitening(6, per_example_mean=False).fit(DataLoader(TensorDataset(X), batch_size=8))


def test_classifier_with_a_half_precision_body_runs_and_round_trips(tmp_path):
    """Audit: a classifier with an fp16 body saved and loaded, but its forward failed."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    X = torch.rand(32, 12)
    whiten = tsl.ZCAWhitening(12).fit(DataLoader(TensorDataset(X), batch_size=16))
    body = tsl.StructLearnedStack(12, 8, max_depth=2, density=0.5, group_size=2, depth=1)
    model = tsl.StructLearnedClassifier(whiten, body, 3, (3, 2, 2))
    reference = model(X[:4])
    model.body.half()
    out = model(X[:4])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2)
    back = tsl.load(tsl.save(model, tmp_path / "c"))
    torch.testing.assert_close(back(X[:4]), out)


def test_a_layer_larger_than_memory_is_refused_before_allocating():
    from torch_structlearn.checks import physical_memory

    if physical_memory() is None:
        pytest.skip("the OS does not report its memory")
    with pytest.raises(ValueError, match=r"StructLearnedLinear\(1000000, 1000000, density=0.5\) needs about"):
        StructLearnedLinear(1_000_000, 1_000_000, density=0.5)


def test_a_layer_checks_its_structure_once_not_per_call(monkeypatch):
    """The layer validates its index buffers once per change; the dense backend's calls then
    skip the per-call bounds check a functional call makes (no O(nnz) work twice)."""
    import importlib

    op = importlib.import_module("torch_structlearn.ops.sparse_linear")  # (the module)
    calls = []
    real = op.check_csr_bounds
    monkeypatch.setattr(op, "check_csr_bounds", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    layer = StructLearnedLinear(10, 6, density=0.4, backend="dense")
    x = torch.randn(3, 10)
    for _ in range(3):
        layer(x)
    assert calls == []
    sparse_linear(x, layer.values, layer.crow_indices, layer.col_indices, backend="dense")
    assert calls == [1]  # a functional call is checked
