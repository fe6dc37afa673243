"""The benchmark CLI on tiny shapes: it runs, writes JSON and its BENCHMARKS.md section, rejects
bad arguments, and its memory measurement counts the gradients a step allocates."""

import importlib.util
import json

import pytest
import torch
from torch import nn

from torch_structlearn import bench


def _script(name: str):
    """A ``structlearn bench`` tool's module (markdown, prior, ...)."""
    import importlib

    return importlib.import_module(f"torch_structlearn.bench.{name}")


def test_kernels_writes_json_and_markdown_section(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nanalysis kept\n")
    out = tmp_path / "k.json"
    assert bench.main(["kernels", "--shapes", "8,32,48", "--densities", "0.25", "--blocks", "0",
                       "--repeats", "1", "--backends", "csr", "dense", "auto", "--json", str(out),
                       "--tag", "t"]) == 0
    assert md.read_text() == "# Benchmarks\n\nanalysis kept\n"  # bench edits no file of ours
    assert _script("markdown").main([str(md), str(out)]) == 0
    res = json.loads(out.read_text())
    got = {(r["backend"], r["density"]) for r in res["rows"]}
    assert {("nn.Linear", 1.0), ("csr", 0.25), ("dense", 0.25), ("auto", 0.25)} <= got
    csr = next(r for r in res["rows"] if r["backend"] == "csr")
    nnz = round(csr["actual_density"] * 32 * 48)
    # eval: float32 values + int32 columns, bias, row pointers; training adds the transpose
    assert csr["eval_param_bytes"] == nnz * 8 + 48 * 4 + 49 * 4
    assert csr["param_bytes"] == csr["eval_param_bytes"] + nnz * 8 + 33 * 4
    text = md.read_text()
    assert "analysis kept" in text and "<!-- bench:kernels-t-cpu -->" in text
    assert "bench kernels --shapes 8,32,48" in text


def test_mlp_writes_json_with_training_peak(tmp_path):
    out = tmp_path / "m.json"
    assert bench.main(["mlp", "--sizes", "16", "32", "32", "4", "--densities", "0.25",
                       "--blocks", "0", "--n", "64", "--batch-size", "32", "--backend", "csr",
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["backend"] == "csr" and [r["variant"] for r in res["rows"]] == ["nn.Linear", "25%"]
    dense = res["rows"][0]
    # parameters + SGD momentum of 16*32 + 32*32 + 32*4 weights and 68 biases, float32
    n_params = 16 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    assert dense["held_bytes"] == 2 * 4 * n_params


def test_mlp_dynamic_rows_update_the_masks_in_the_epoch(tmp_path):
    out, md = tmp_path / "m.json", tmp_path / "B.md"
    # 128 samples in batches of 16: 8 steps, an update every 3 -> updates after steps 3 and 6
    assert bench.main(["mlp", "--sizes", "32", "64", "4", "--densities", "0.25", "--blocks", "0",
                       "32", "--n", "128", "--batch-size", "16", "--dynamic", "rigl",
                       "--update-every", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    # block layers cannot be updated: only the unstructured MLP gets a rigl row
    assert list(rows) == ["nn.Linear", "25%", "25% block 32", "25% rigl"]
    assert rows["25% rigl"]["mask_updates"] == 2 and rows["25% rigl"]["dynamic"] == "rigl"
    assert 0 < rows["25% rigl"]["update_seconds"] < rows["25% rigl"]["epoch_seconds"]
    assert rows["25%"]["mask_updates"] == 0
    assert _script("markdown").main([str(md), str(out)]) == 0
    text = md.read_text()
    assert "<!-- bench:mlp-rigl-cpu -->" in text and "| 25% rigl |" in text and "2 × " in text


def test_epoch_of_a_hub_entry_against_its_dense_copy(tmp_path):
    from torch_structlearn import hub

    out, md = tmp_path / "e.json", tmp_path / "B.md"
    assert bench.main(["mlp", "--hub", "mnist-stack-d5", "--n", "64", "--batch-size", "32",
                       "--json", str(out)]) == 0
    assert _script("markdown").main([str(md), str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["hub"] == "mnist-stack-d5" and res["input_shape"] == [1, 28, 28]
    dense, learned = res["rows"]
    assert dense["variant"] == "nn.Linear" and learned["variant"].startswith("mnist-stack-d5")
    model = hub.load("mnist-stack-d5")
    layers = [m for m in model.modules() if hasattr(m, "nnz")]
    assert learned["density"] == pytest.approx(
        sum(m.nnz for m in layers) / sum(m.in_features * m.out_features for m in layers))
    # the dense copy holds every weight of the sparse layers: more than the sparse model
    assert dense["held_bytes"] > learned["held_bytes"]
    assert "<!-- bench:epoch-mnist-stack-d5-cpu -->" in md.read_text()


@pytest.mark.parametrize("argv", [["kernels", "--repeats", "0"], ["mlp", "--sizes", "4", "4"],
                                  ["mlp", "--backend", "nope"], ["kernels", "--densities", "0"],
                                  ["mlp", "--hub", "no-such-entry"], ["mlp", "--n", "0"],
                                  ["mlp", "--sizes", "8", "0", "2"], ["kernels", "--shapes", "0,8,8"],
                                  ["coding", "--lam", "-1"], ["coding", "--lam", "nan"],
                                  ["coding", "--atoms", "0"], ["coding", "--passes", "0"],
                                  ["mlp", "--dynamic", "nope"], ["mlp", "--update-every", "0"],
                                  ["mlp", "--hub", "mnist-stack-d5", "--dynamic", "rigl"]])
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main([*argv, "--json", str(tmp_path / "x.json")])
    assert e.value.code == 2


def test_peak_counts_the_gradients_of_the_step():
    layer = nn.Linear(256, 512)
    x = torch.randn(64, 256)
    _, fwd_bwd, clear = bench.timing.steps(layer, x)
    fwd_bwd()  # a previous step's gradients exist, as in the timing loop
    grads = (512 * 256 + 512 + 64 * 256) * 4  # weight, bias and input gradients
    # twice: the profiler knows the sizes of blocks allocated under an earlier profile, so a
    # measurement that frees the previous gradients inside the step would subtract them
    for _ in range(2):
        assert bench.timing.peak_of_step(fwd_bwd, clear, x.device) >= grads


def test_crossover_table_from_json_per_shape(tmp_path, monkeypatch):
    from torch_structlearn.ops import auto

    monkeypatch.setenv("STRUCTLEARN_CALIBRATE", "0")  # choose() below reads the prior
    monkeypatch.setattr(auto, "TABLE_PATH", tmp_path / "crossover.json")
    monkeypatch.setattr(auto, "TABLE", {"cuda": {"bfloat16": 0.2}})
    monkeypatch.setattr(auto, "BY_SHAPE", {})
    here = auto.table_device(torch.device("cpu"))  # cpu/<this machine's instruction set>

    def row(shape, density, ms, backend="cpu", dev=here):
        return {"device": "cpu", "table_device": dev, "dtype": "float32", "block": 0,
                "shape": shape, "backend": backend, "actual_density": density,
                "forward_backward_ms": ms, "baseline_forward_backward_ms": 10.0}

    rows = [row([8, 64, 48], 0.1, 2.0), row([8, 64, 48], 0.25, 8.0), row([8, 64, 48], 0.5, 12.0),
            row([512, 64, 48], 0.1, 9.0), row([512, 64, 48], 0.25, 11.0),
            row([8, 64, 48], 0.1, 6.0, "csr"), row([8, 64, 48], 0.25, 12.0, "csr"),  # stand-in
            row([512, 64, 48], 0.1, 1.0, backend="dense"),  # not a sparse kernel: ignored
            row([512, 64, 48], 0.25, 1.0, backend="torch_sparse"),  # neither
            row([8, 64, 48], 0.5, 1.0, dev="cpu/other")]  # another instruction set: its own entry
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"rows": rows, "machine": {"cpu": "Test CPU", "threads": 2}}))
    assert _script("prior").main([str(f)]) == 0
    written = json.loads((tmp_path / "crossover.json").read_text())
    assert written["by_shape"][here]["float32"] == {"8x64x48": 0.25, "512x64x48": 0.1}
    assert written["by_shape"][here]["float32@csr"] == {"8x64x48": 0.1}
    assert written["crossover"] == {"cuda": {"bfloat16": 0.2},
                                    here: {"float32": 0.1, "float32@csr": 0.1},
                                    "cpu/other": {"float32": 0.5}}
    assert written["machines"][here] == {"file": "k.json", "cpu": "Test CPU", "threads": 2}
    assert "structlearn bench prior" in written["generated_by"]
    cpu = torch.device("cpu")
    sparse = auto.sparse_backend(cpu, None)  # 'cpu', or 'csr' without a compiler
    assert auto.choose(cpu, torch.float32, 0.2, None, (16, 64, 48)) == (  # reloaded
        "cpu" if sparse == "cpu" else "dense")  # csr's own entry: 0.1 at that shape
    assert auto.choose(cpu, torch.float32, 0.2, None, (1024, 64, 48)) == "dense"


def test_crossover_needs_the_instruction_set_of_an_old_file(tmp_path, monkeypatch):
    """Files written before results were kept per instruction set say nothing about theirs:
    `crossover` refuses them unless told (--isa), and files on CUDA need no ISA."""
    from torch_structlearn.ops import auto

    monkeypatch.setattr(auto, "TABLE_PATH", tmp_path / "crossover.json")
    monkeypatch.setattr(auto, "TABLE", {})
    monkeypatch.setattr(auto, "BY_SHAPE", {})
    old = {"device": "cpu", "dtype": "float32", "block": 0, "shape": [8, 64, 48],
           "backend": "cpu", "actual_density": 0.1, "forward_backward_ms": 1.0,
           "baseline_forward_backward_ms": 10.0}
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"rows": [old]}))
    with pytest.raises(SystemExit) as e:
        _script("prior").main([str(f)])
    assert e.value.code == 2
    assert _script("prior").main([str(f), "--isa", "avx512"]) == 0
    assert json.loads((tmp_path / "crossover.json").read_text())["crossover"] == {
        "cpu/avx512": {"float32": 0.1}}


def test_crossover_rejects_a_non_benchmark_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as e:
        _script("prior").main([str(bad)])
    assert e.value.code == 2


def test_kernels_with_peers_times_them_beside_ours(tmp_path):
    out = tmp_path / "k.json"
    assert bench.main(["kernels", "--shapes", "8,32,48", "--densities", "0.25", "--blocks", "0",
                       "--repeats", "1", "--backends", "dense", "--peers",
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    backends = {r["backend"] for r in res["rows"]}
    assert {"nn.Linear", "dense", "peer:torch-csr"} <= backends
    assert ("peer:sparseprop" in backends) == (importlib.util.find_spec("sparseprop") is not None)
    assert res["machine"]["cpu_flags"] == sorted(res["machine"]["cpu_flags"])
    assert res["rows"][0]["table_device"].startswith("cpu/")


def test_the_torch_csr_peer_is_the_same_function():
    """The peer is built from our layer and must compute the same thing (else its row would
    time another function): forward and gradients against the dense reference."""
    from torch_structlearn import StructLearnedLinear
    from torch_structlearn.bench.peers import TorchCSRLinear

    torch.manual_seed(0)
    layer = StructLearnedLinear(20, 12, density=0.3)
    peer = TorchCSRLinear(layer)
    x = torch.randn(5, 20, requires_grad=True)
    w = layer.dense_weight().detach()
    y = peer(x)
    torch.testing.assert_close(y, x @ w.T + layer.bias)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 20))
    g = peer.weight.grad.to_dense()
    torch.testing.assert_close(g, (torch.ones(5, 12).T @ x.detach()) * (w != 0))
    with pytest.raises(ValueError, match="unstructured"):
        TorchCSRLinear(StructLearnedLinear(32, 32, block=(8, 8), density=0.5))


def test_infer_times_forward_only_in_eval_and_inference_mode(tmp_path):
    out, md = tmp_path / "i.json", tmp_path / "B.md"
    assert bench.main(["infer", "--shapes", "1,32,48", "16,32,48", "--densities", "0.25",
                       "--repeats", "2", "--backends", "csr", "auto", "--json", str(out)]) == 0
    assert _script("markdown").main([str(md), str(out)]) == 0
    res = json.loads(out.read_text())
    assert {(r["shape"][0], r["backend"]) for r in res["rows"]} == {
        (1, "csr"), (1, "auto"), (16, "csr"), (16, "auto")}
    autos = [r for r in res["rows"] if r["backend"] == "auto"]
    assert all(r["auto_picked"] in ("cpu", "csr", "dense", "torch_sparse") for r in autos)
    assert "<!-- bench:infer-cpu -->" in md.read_text() and "inference_mode" in md.read_text()


def test_calibrate_measures_and_prints_the_decisions(tmp_path, monkeypatch, capsys):
    from torch_structlearn.ops import calibrate

    monkeypatch.setattr(calibrate, "DIRECTORY", tmp_path / "auto")
    calibrate.clear()
    out = tmp_path / "c.json"
    assert bench.main(["calibrate", "--shapes", "4,32,48", "--densities", "0.1", "0.5",
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["density"], r["mode"]) for r in res["rows"]] == [
        (0.1, "train"), (0.1, "infer"), (0.5, "train"), (0.5, "infer")]
    for r in res["rows"]:  # the pick is the fastest measured (or the prior's pick within the
        # margin that overturns it), never slower than dense beyond that margin
        fastest = min(r["ms"].values())
        assert r["ms"][r["backend"]] <= fastest * (1 + calibrate.MARGIN)
        assert r["ms"][r["backend"]] <= r["ms"]["dense"] * (1 + calibrate.MARGIN)
    cached = json.loads(calibrate.cache_file(torch.device("cpu")).read_text())["decisions"]
    assert len(cached) == 4
    printed = capsys.readouterr().out
    assert "picks" in printed and "dense" in printed
    # --keep reads them back without measuring
    monkeypatch.setattr(calibrate, "_measure", lambda *a: pytest.fail("measured with --keep"))
    assert bench.main(["calibrate", "--shapes", "4,32,48", "--densities", "0.1", "0.5",
                       "--keep", "--json", str(out)]) == 0


def test_structlearn_bench_help_exits_0(capsys):
    from torch_structlearn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    assert "calibrate" in capsys.readouterr().out


def test_learn_times_the_defaults_against_v01_and_renders(tmp_path, monkeypatch, capsys):
    """``bench learn`` on digits (shipped with scikit-learn): every setting's row, the v0.1
    learner as the speed reference, its own mask overlap 1, and SPAMS skipped with a message
    where it is not installed."""
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "spams" else real(name, *a))
    out, md = tmp_path / "l.json", tmp_path / "B.md"
    assert bench.main(["learn", "--dataset", "digits", "--n", "600", "--held-out", "100",
                       "--atoms", "32", "--group-size", "2", "--density", "0.25",
                       "--json", str(out), "--tag", "t"]) == 0
    assert "spams: not installed" in capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"defaults", "defaults, float32", "defaults, input space", "v0.1"}
    assert rows["v0.1"]["passes"] == 5 and rows["defaults"]["passes"] == 2
    assert rows["v0.1"]["mask_overlap_v01"] == 1 and rows["v0.1"]["speedup"] == 1
    assert rows["defaults"]["speedup"] == pytest.approx(rows["v0.1"]["seconds"] / rows["defaults"]["seconds"])
    assert all(r["held_out_objective"] > 0 for r in rows.values())
    assert _script("markdown").main([str(md), str(out)]) == 0
    text = md.read_text()
    assert "<!-- bench:learn-digits-t-cpu -->" in text and "| v0.1 | " in text and "CPU flags:" in text


@pytest.mark.skipif(importlib.util.find_spec("spams") is None,
                    reason="SPAMS (pip install spams-bin) is an optional peer, not installed")
def test_spams_dictionary_is_scored_like_ours():
    from torch_structlearn.bench.coding import spams_dictionary
    from torch_structlearn.coding import fista, objective

    from .test_coding import _planted

    X, _ = _planted(n=2000, d=32, k=16, width=6)
    D, seconds = spams_dictionary(X, 16, 0.1, 3, 256, seed=0)
    assert D.shape == (32, 16) and seconds >= 0
    assert torch.allclose(D.norm(dim=0), torch.ones(16), atol=1e-5)
    # it learned: the same encoder gives a lower objective than with its starting atoms
    pick = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:16]
    D0 = torch.nn.functional.normalize(X[pick].T, dim=0)

    def f(D):
        return float(objective(X, D, fista(X, D, lam1=0.1, max_iter=500), 0.1).mean())

    assert f(D) < 0.9 * f(D0)


def test_overhead_times_auto_against_linear_and_renders(tmp_path, capsys):
    out, md = tmp_path / "o.json", tmp_path / "B.md"
    assert bench.main(["overhead", "--layers", "32,48", "--batches", "1", "8",
                       "--train-batches", "8", "--densities", "0.1", "0.5", "--runs", "2",
                       "--fixed", "32,48,0.1", "--json", str(out)]) == 0
    assert "worst ratio" in capsys.readouterr().out
    assert _script("markdown").main([str(md), str(out)]) == 0
    res = json.loads(out.read_text())
    cells = {(r["batch"], r["density"], r["mode"]) for r in res["rows"]}
    assert cells == {(b, d, "infer") for b in (1, 8) for d in (0.1, 0.5)} | {
        (8, d, "train") for d in (0.1, 0.5)}
    for r in res["rows"]:
        assert r["ratio"] == pytest.approx(r["linear_us"] / r["auto_us"])
        assert r["auto_picked"] in ("cpu", "csr", "dense", "torch_sparse")
    assert res["worst"]["ratio"] == min(r["ratio"] for r in res["rows"])
    assert [r["grad"] for r in res["fixed"]] == [False, True]
    assert all(r["fixed_us"] == pytest.approx(r["cpu_us"] - r["kernel_us"]) for r in res["fixed"])
    assert [r["batch"] for r in res["mlp"]] == [1, 64]
    text = md.read_text()
    assert "<!-- bench:overhead-cpu -->" in text and "Worst cell" in text


@pytest.mark.parametrize("argv", [["overhead", "--layers", "32"], ["overhead", "--fixed", "8,8"],
                                  ["overhead", "--fixed", "8,8,2"]])
def test_overhead_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main([*argv, "--json", str(tmp_path / "x.json")])
    assert e.value.code == 2


@pytest.mark.parametrize("tool", ["compile-time", "convert-time", "page-faults", "markdown", "prior"])
def test_bench_tools_run_as_subcommands_with_their_own_help(tool, capsys):
    from torch_structlearn.bench import main

    with pytest.raises(SystemExit) as e:
        main([tool, "--help"])
    assert e.value.code == 0
    assert f"structlearn bench {tool}" in capsys.readouterr().out


def test_old_benchmark_scripts_forward_with_a_deprecation_warning(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "update_markdown.py"
    md, res = tmp_path / "B.md", tmp_path / "r.json"
    res.write_text(json.dumps({"benchmark": "nope"}))
    r = subprocess.run([sys.executable, str(script), str(md), str(res)], capture_output=True,
                       text=True)
    assert "DeprecationWarning" in r.stderr and "structlearn bench markdown" in r.stderr
    assert r.returncode == 2 and "not a `structlearn bench` result" in r.stderr
