"""``auto``'s calibration: it picks what it measured fastest, never something slower than dense,
keeps its decisions (memory, then a file per machine), survives a damaged file and processes
starting together, stays out of the way where it must (off), and decides while torch.compile
traces as an eager call would."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from torch_structlearn import StructLearnedLinear
from torch_structlearn.ops import auto, calibrate, resolve_backend

CPU = torch.device("cpu")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty calibration folder and no decisions in memory (restored afterwards)."""
    saved = dict(calibrate._decisions), calibrate._loaded
    monkeypatch.setattr(calibrate, "DIRECTORY", tmp_path / "auto")
    monkeypatch.setenv("STRUCTLEARN_CALIBRATE", "1")
    calibrate.clear()
    yield tmp_path / "auto"
    calibrate._decisions.clear()
    calibrate._decisions.update(saved[0])
    calibrate._loaded = saved[1]


def _fake_times(monkeypatch, ms: dict[str, float]):
    """Every timing of backend b returns ms[b]; returns the list of backends timed."""
    timed = []

    def measure(run, device, repeats, calls=1):
        timed.append(run.backend)
        return [ms[run.backend]] * repeats

    monkeypatch.setattr(calibrate, "measure_ms", measure)
    return timed


def _runs(names):
    """Runs that only say which backend they are (the injected timer reads it)."""
    def make(name):
        def run():
            pass
        run.backend = name
        return run
    return {n: make(n) for n in names}


def _decide(shape=(64, 96, 80), density=0.05, training=True, names=("dense", "cpu", "csr"),
            make=None):
    return calibrate.decide(CPU, torch.float32, None, shape, density, training,
                            lambda: list(names), make or _runs)


@pytest.mark.parametrize("ms, want", [
    ({"dense": 10.0, "cpu": 2.0, "csr": 3.0}, "cpu"),
    ({"dense": 10.0, "cpu": 12.0, "csr": 9.0}, "csr"),
    ({"dense": 1.0, "cpu": 1.01, "csr": 5.0}, "dense"),  # never a backend slower than dense
])
def test_picks_the_measured_fastest(fresh, monkeypatch, ms, want):
    _fake_times(monkeypatch, ms)
    assert _decide() == want
    entry = calibrate.entry(CPU, torch.float32, None, (64, 96, 80), 0.05, True)
    assert entry["backend"] == want and entry["ms"][want] == min(entry["ms"].values())
    assert entry["ms"][want] <= entry["ms"]["dense"]


def test_a_backend_far_behind_after_the_warm_up_is_not_timed_further(fresh, monkeypatch):
    timed = _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 7.0})
    assert _decide() == "cpu"
    # one lone call each (it sizes the rounds), a first round of every backend, then only those
    # within 3x of the best (and dense, the baseline)
    assert timed.count("csr") == 2
    assert timed.count("cpu") == timed.count("dense") == calibrate.REPEATS + 1


def test_decisions_are_reused_from_memory_and_from_the_file(fresh, monkeypatch):
    timed = _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 3.0})
    assert _decide() == "cpu"
    n = len(timed)
    # a nearby call shares the bucket: no measurement, and make_runs is not even called
    assert _decide(shape=(60, 100, 82), density=0.052, make=lambda names: pytest.fail("measured")) == "cpu"
    assert len(timed) == n
    # another mode, shape or density is another decision
    assert _decide(training=False) == "cpu" and len(timed) > n
    # a new process (memory empty) reads the file instead of measuring
    calibrate.clear()
    assert _decide(make=lambda names: pytest.fail("measured again")) == "cpu"
    data = json.loads(calibrate.cache_file(CPU).read_text())
    assert data["format"] == calibrate.FORMAT and len(data["decisions"]) == 2
    assert data["machine"]["threads"] == torch.get_num_threads()


def test_a_cached_backend_that_is_not_usable_here_is_measured_again(fresh, monkeypatch):
    _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 3.0})
    assert _decide() == "cpu"
    calibrate.clear()  # a new process, where (say) the cpu kernels are not available
    with pytest.warns(UserWarning, match="ignoring a decision for backend 'cpu'"):
        assert _decide(names=("dense", "csr")) == "csr"


def _layer_call_works(ms_dense=10.0):
    """A layer's forward with backend='auto' under the cache as it is: the output matches the
    dense masked reference."""
    torch.manual_seed(0)
    layer = StructLearnedLinear(96, 80, density=0.05)
    x = torch.randn(64, 96)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)
    return layer


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_a_cache_folder_that_cannot_be_created_is_one_warning(fresh, monkeypatch, tmp_path, where):
    timed = _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 3.0})
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        folder = tmp_path / "a_file" / "auto"  # mkdir: NotADirectoryError
    else:
        folder = type(tmp_path)("/proc/self/no_such_folder/auto")  # mkdir refused even as root
    monkeypatch.setattr(calibrate, "DIRECTORY", folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _decide() == "cpu"
        assert _decide(training=False) == "cpu"  # another decision: no second warning
        _layer_call_works()
    assert len([w for w in caught if "calibration cache" in str(w.message)]) == 1
    n = len(timed)
    assert _decide(make=lambda names: pytest.fail("measured again")) == "cpu"  # kept in memory
    assert len(timed) == n


def test_a_read_only_cache_file_is_one_warning(fresh, monkeypatch):
    _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 3.0})
    from torch_structlearn import filesystem as files

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(calibrate, "file_lock", refuse)  # as a read-only folder answers
    with pytest.warns(UserWarning, match="cannot lock the calibration cache"):
        assert _decide() == "cpu"
    monkeypatch.setattr(calibrate, "file_lock", files.file_lock)
    monkeypatch.setattr(calibrate, "write_json", refuse)
    with pytest.warns(UserWarning, match="cannot write the calibration cache"):
        assert _decide(training=False) == "cpu"


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  '{"format": "torch_structlearn-auto-calibration", "decisions": 7}',
                                  '{"format": "torch_structlearn-auto-calibration", "decisions": '
                                  '{"k": 1, "j": {"backend": 3}, "i": {"backend": "warp"}}}'])
def test_any_json_is_read_without_an_exception(fresh, monkeypatch, text):
    _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 3.0})
    path = calibrate.cache_file(CPU)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the deep and the malformed ones warn; the last does not)
        assert _decide() == "cpu"
        _layer_call_works()


def test_a_stored_decision_is_checked_against_the_layer_before_use(fresh, monkeypatch):
    """A valid file whose decision names a backend this layer cannot run (``triton`` for an
    unstructured layer, an unknown name) is not used: one warning, a measurement."""
    layer = StructLearnedLinear(96, 80, density=0.05)
    x = torch.randn(64, 96)
    path = calibrate.cache_file(CPU)
    path.parent.mkdir(parents=True)
    keys = [calibrate.bucket(CPU, torch.float32, None, (64, 96, 80), layer.density, t)
            for t in (True, False)]
    path.write_text(json.dumps({"format": calibrate.FORMAT, "decisions": {
        keys[0]: {"backend": "triton"}, keys[1]: {"backend": "warp"}}}))
    with pytest.warns(UserWarning, match="ignoring a decision for backend 'triton'"):
        y = layer(x)  # training: the triton decision is refused
    torch.testing.assert_close(y, x @ layer.dense_weight().T + layer.bias)
    with torch.no_grad():  # inference: the unknown name was dropped when the file was read
        torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)
    assert calibrate.recall(CPU, torch.float32, None, (64, 96, 80), layer.density, True) != "triton"


@pytest.mark.parametrize("text", ['{"decisions": ', "\xff not json", "[1, 2]",
                                  '{"format": "something else", "decisions": {}}'])
def test_an_unreadable_file_is_a_warning_and_a_recalibration(fresh, monkeypatch, text):
    timed = _fake_times(monkeypatch, {"dense": 10.0, "cpu": 2.0, "csr": 3.0})
    path = calibrate.cache_file(CPU)
    path.parent.mkdir(parents=True)
    path.write_text(text, errors="surrogateescape")
    with pytest.warns(UserWarning, match="ignoring the unreadable calibration cache"):
        assert _decide() == "cpu"
    assert timed  # measured
    data = json.loads(path.read_text())  # rewritten whole
    assert list(data["decisions"].values())[0]["backend"] == "cpu"


def test_the_file_is_per_machine_and_configuration(fresh, monkeypatch):
    a = calibrate.cache_file(CPU)
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        assert calibrate.cache_file(CPU) != a  # another thread count: other decisions
    finally:
        torch.set_num_threads(before)
    assert calibrate.cache_file(CPU) == a


def test_off_and_inside_compile_it_uses_the_prior(fresh, monkeypatch):
    monkeypatch.setenv("STRUCTLEARN_CALIBRATE", "0")
    fail = lambda names: pytest.fail("measured with calibration off")  # noqa: E731
    want = auto.prior(CPU, torch.float32, 0.05, None, (64, 96, 80))
    assert auto.choose(CPU, torch.float32, 0.05, None, (64, 96, 80), candidates=lambda: ["dense", "csr"],
                       make_runs=fail) == want
    monkeypatch.setenv("STRUCTLEARN_CALIBRATE", "1")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert auto.choose(CPU, torch.float32, 0.05, None, (64, 96, 80), candidates=lambda: ["dense", "csr"],
                       make_runs=fail) == want  # nothing decided eagerly: the prior
    _fake_times(monkeypatch, {"dense": 10.0, "csr": 2.0})
    calibrate.decide(CPU, torch.float32, None, (64, 96, 80), 0.05, True, lambda: ["dense", "csr"],
                     _runs)
    assert auto.choose(CPU, torch.float32, 0.05, None, (64, 96, 80), candidates=lambda: ["dense", "csr"],
                       make_runs=fail) == "csr"  # decided eagerly: reused in the trace


def test_a_model_compiled_before_any_eager_call_calibrates_while_tracing(fresh, monkeypatch):
    """torch.compile traces a layer nothing has run eagerly: auto decides at trace time as the
    first eager call would (measured on a random structure of the layer's density, kept), the
    compiled graph computes the layer, and the eager layer then reuses that decision."""
    timed = _fake_times(monkeypatch, {"dense": 10.0, "cpu": 20.0, "csr": 2.0, "torch_sparse": 50.0})
    torch.manual_seed(0)
    layer = StructLearnedLinear(24, 16, density=0.25)
    x = torch.randn(8, 24, requires_grad=True)
    torch._dynamo.reset()
    y = torch.compile(layer, fullgraph=True, backend="eager")(x)
    assert "csr" in timed and "dense" in timed  # measured while tracing
    assert calibrate.recall(CPU, torch.float32, None, (8, 24, 16), layer.density, True) == "csr"
    assert json.loads(next(fresh.glob("*.json")).read_text())  # and kept on disk
    torch.testing.assert_close(y, x @ layer.dense_weight().T + layer.bias)
    n = len(timed)
    assert resolve_backend(x, layer.values, layer.crow_indices, layer.col_indices) == "csr"
    layer(x).sum().backward()
    assert len(timed) == n  # the eager call reused it


def test_a_layer_calibrates_in_each_mode_and_builds_what_its_pick_needs(fresh, monkeypatch):
    _fake_times(monkeypatch, {"dense": 10.0, "cpu": 20.0, "csr": 2.0, "torch_sparse": 50.0})
    torch.manual_seed(0)
    layer = StructLearnedLinear(24, 16, density=0.25)
    assert layer.col_t.numel() == 0 and layer.dense_index.numel() == 0  # nothing up front
    x = torch.randn(8, 24, requires_grad=True)
    y = layer(x)
    assert layer.col_t.numel() == layer.nnz  # csr picked for training: its transpose built
    torch.testing.assert_close(y, x @ layer.dense_weight().T + layer.bias)
    y.sum().backward()
    torch.testing.assert_close(x.grad, layer.dense_weight().detach().sum(0).expand(8, 24))
    _fake_times(monkeypatch, {"dense": 1.0, "cpu": 20.0, "csr": 2.0, "torch_sparse": 50.0})
    with torch.inference_mode():
        assert resolve_backend(x, layer.values, layer.crow_indices, layer.col_indices) == "dense"
        torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)


def test_caches_built_under_inference_mode_do_not_break_training(fresh, monkeypatch):
    _fake_times(monkeypatch, {"dense": 1.0, "cpu": 20.0, "csr": 2.0, "torch_sparse": 50.0})
    torch.manual_seed(0)
    layer = StructLearnedLinear(24, 16, density=0.25)
    x = torch.randn(8, 24)
    with torch.inference_mode():
        layer(x)  # dense picked: its index and kept weight built as inference tensors
    out = layer(x.requires_grad_())  # training, dense again: rebuilt as normal tensors
    out.sum().backward()
    assert layer.values.grad is not None


WORKER = textwrap.dedent("""
    import json, sys, torch
    from torch_structlearn import StructLearnedLinear
    from torch_structlearn.ops import calibrate
    measured = []
    real = calibrate._measure
    calibrate._measure = lambda *a: measured.append(1) or real(*a)
    torch.manual_seed(0)
    layer = StructLearnedLinear(64, 48, density=0.1)
    x = torch.randn(32, 64, requires_grad=True)
    layer(x).sum().backward()
    print(json.dumps({"measured": len(measured), "file": str(calibrate.cache_file(x.device))}))
""")


def test_four_processes_starting_together_on_an_empty_cache(tmp_path):
    """Like torchrun ranks: one compiles the kernels and calibrates, the others wait for it and
    read its work; nothing is corrupted, every process runs."""
    env = {**os.environ, "STRUCTLEARN_CACHE": str(tmp_path / "cache"),
           "STRUCTLEARN_CALIBRATE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["measured"] for r in results) == 1  # one measurement, three readers
    files = {r["file"] for r in results}
    assert len(files) == 1
    data = json.loads(open(files.pop()).read())
    assert len(data["decisions"]) == 1
    libs = list((tmp_path / "cache").glob("cpu_kernel-*.so"))
    assert len(libs) == 1 and not list((tmp_path / "cache").glob("*.tmp"))


def test_a_real_measurement_never_picks_slower_than_dense(fresh):
    """No injected timer: whatever wins, it was not measured slower than dense (beyond the
    margin within which the prior's pick is kept)."""
    torch.manual_seed(0)
    for density in (0.02, 0.5):
        layer = StructLearnedLinear(128, 96, density=density)
        x = torch.randn(64, 128, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            layer(x).sum().backward()
        entry = calibrate.entry(CPU, torch.float32, None, (64, 128, 96), layer.density, True)
        assert entry["ms"][entry["backend"]] <= entry["ms"]["dense"] * (1 + calibrate.MARGIN)


@pytest.mark.parametrize("ms, want", [
    ({"dense": 10.0, "cpu": 2.0, "csr": 1.95}, "cpu"),  # within the margin: the prior's pick
    ({"dense": 10.0, "cpu": 2.0, "csr": 1.5}, "csr"),  # clearly faster: the newcomer
    ({"dense": 1.0, "cpu": 2.0, "csr": 3.0}, "dense"),  # the prior is not kept when it loses
])
def test_the_prior_pick_stays_unless_clearly_beaten(fresh, monkeypatch, ms, want):
    timed = _fake_times(monkeypatch, ms)
    got = calibrate.decide(CPU, torch.float32, None, (64, 96, 80), 0.05, True,
                           lambda: ["dense", "cpu", "csr"], _runs, lambda: "cpu")
    assert got == want
    if want != "dense":  # the newcomer and the prior's pick ran more rounds to decide
        assert timed.count("cpu") == timed.count("csr") == 2 * calibrate.REPEATS + 1  # (+ the lone call)
