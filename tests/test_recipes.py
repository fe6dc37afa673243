"""The recipes' result files: a long run split over sessions (``--first-seed``) extends the
earlier result only when the settings match, and never duplicates a seed."""

import argparse
import json
import subprocess
import sys
import time

import pytest
import torch

from .conftest import RECIPES, require_data


@pytest.fixture
def common(tmp_path, monkeypatch, load_recipe):
    mod = load_recipe("common.py", "recipes_common")
    monkeypatch.setattr(mod, "RUNS", tmp_path)
    monkeypatch.setattr(mod, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setattr(mod, "machine", lambda: "test machine")
    return mod


def _run(common, monkeypatch, argv, rows_for, name="single"):
    p = argparse.ArgumentParser()
    common.add_args(p)
    p.add_argument("--density", type=float, default=0.05)
    args = p.parse_args(argv)
    monkeypatch.setattr(sys, "argv", ["exp_single.py", *argv])
    cfg = {"K": 16, "epochs": 2, "dict_epochs": 1, "t_start": 0.0,
           "splits": [(None, list(range(100)))], **common.tuned(args), "flip": args.flip,
           "weight_decay": args.weight_decay}
    cfg["earlier"] = common._earlier(name, args, cfg, 100)
    rows = [{"method": "learned", "seed": s, "test_accuracy": rows_for(s)} for s in common.seed_range(args)]
    return json.loads(common.finish(name, args, cfg, rows, density=args.density).read_text())


def test_first_seed_extends_the_earlier_result(common, monkeypatch):
    first = _run(common, monkeypatch, ["--seeds", "1"], lambda s: 0.5)
    assert first["seeds"] == 1 and [r["seed"] for r in first["rows"]] == [0]
    both = _run(common, monkeypatch, ["--seeds", "2", "--first-seed", "1"], lambda s: 0.6)
    assert [r["seed"] for r in both["rows"]] == [0, 1, 2] and both["seeds"] == 3
    assert [r["test_accuracy"] for r in both["rows"]] == [0.5, 0.6, 0.6]
    assert both["command"].count("exp_single.py") == 2 and "--first-seed 1" in both["command"]
    assert both["wall_seconds"] >= first["wall_seconds"]
    assert first["machine"] == both["machine"] == "test machine"


def test_a_result_extended_on_another_machine_names_both(common, monkeypatch):
    _run(common, monkeypatch, ["--seeds", "1"], lambda s: 0.5)
    monkeypatch.setattr(common, "machine", lambda: "other machine")
    out = _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "1"], lambda s: 0.5)
    assert out["machine"] == "test machine; other machine"
    out = _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "2"], lambda s: 0.5)
    assert out["machine"] == "test machine; other machine"  # each machine named once


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1", "--first-seed", "1", "--lr", "0.1"], "other settings"),
    (["--seeds", "1", "--first-seed", "1", "--density", "0.1"], "other settings"),
    (["--seeds", "2", "--first-seed", "1"], "already has seeds [1]"),
    (["--seeds", "1", "--first-seed", "2", "--whiten-eps", "123"], "other settings"),
    (["--seeds", "1", "--first-seed", "2", "--dict-memory", "all", "--active-fraction", "0.5"],
     "other settings"),
])
def test_first_seed_refuses_what_does_not_match(common, monkeypatch, argv, message):
    _run(common, monkeypatch, ["--seeds", "2"], lambda s: 0.5)
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        _run(common, monkeypatch, argv, lambda s: 0.5)


def test_a_training_recipe_writes_its_own_result_and_extends_only_that(common, monkeypatch):
    _run(common, monkeypatch, ["--seeds", "1"], lambda s: 0.5)
    aug = ["--flip", "--weight-decay", "1e-4"]
    first = _run(common, monkeypatch, ["--seeds", "1", *aug], lambda s: 0.7)
    assert sorted(f.name for f in common.RUNS.glob("*.json")) == [
        "single-mnist-flip-wd0.0001.json", "single-mnist.json"]
    assert first["flip"] is True and first["weight_decay"] == 1e-4
    both = _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "1", *aug], lambda s: 0.8)
    assert [r["test_accuracy"] for r in both["rows"]] == [0.7, 0.8]
    plain = json.loads((common.RUNS / "single-mnist.json").read_text())
    assert [r["test_accuracy"] for r in plain["rows"]] == [0.5]
    with pytest.raises(SystemExit, match="already has seeds"):  # the flip file, not the plain one
        _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "1", "--flip", "--weight-decay",
                                   "0.0001"], lambda s: 0.8)
    with pytest.raises(SystemExit):
        _run(common, monkeypatch, ["--seeds", "1", "--weight-decay", "-1"], lambda s: 0.8)


def test_first_seed_extends_a_committed_result(common, monkeypatch):
    """A fresh checkout has no runs/repro/: seeds extend the copy in recipes/results/."""
    _run(common, monkeypatch, ["--seeds", "1"], lambda s: 0.5)
    common.SHIPPED.mkdir()
    (common.RUNS / "single-mnist.json").rename(common.SHIPPED / "single-mnist.json")
    both = _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "1"], lambda s: 0.6)
    assert [r["test_accuracy"] for r in both["rows"]] == [0.5, 0.6]
    assert (common.RUNS / "single-mnist.json").exists()  # the run's own, the copy untouched
    shipped = json.loads((common.SHIPPED / "single-mnist.json").read_text())
    assert [r["seed"] for r in shipped["rows"]] == [0]


def test_results_are_the_committed_copies_replaced_by_newer_runs(common):
    common.SHIPPED.mkdir()
    for folder, name in ((common.SHIPPED, "a.json"), (common.SHIPPED, "b.json"), (common.RUNS, "b.json"),
                         (common.RUNS, "c.json"), (common.RUNS, "d.partial.json")):
        (folder / name).write_text("{}")
    # d.partial.json: the rows of an unfinished run, not a result
    assert common.result_files() == [common.SHIPPED / "a.json", common.RUNS / "b.json",
                                     common.RUNS / "c.json"]


def test_resume_continues_an_interrupted_run_of_the_same_command(common, monkeypatch):
    p = argparse.ArgumentParser()
    common.add_args(p, resumable=True)
    argv = ["--dataset", "cifar10", "--seeds", "1", "--flip"]

    def cfg_for(args, wall_before, elapsed):
        return {"K": 16, "epochs": 2, "dict_epochs": 1, "splits": [(None, list(range(100)))],
                **common.tuned(args), "flip": args.flip, "weight_decay": args.weight_decay,
                "wall_before": wall_before, "t_start": time.perf_counter() - elapsed}

    monkeypatch.setattr(sys, "argv", ["exp_density.py", *argv])
    args = p.parse_args(argv)
    saved = [{"method": "dense", "density": 1.0, "seed": 0, "test_accuracy": 0.5}]
    common.checkpoint("density", args, cfg_for(args, 0.0, 5.0), saved)  # then interrupted
    partial = common.RUNS / "density-cifar10-flip.partial.json"
    assert partial.exists()

    monkeypatch.setattr(sys, "argv", ["exp_density.py", *argv, "--lr", "0.1", "--resume"])
    with pytest.raises(SystemExit, match="from another command"):
        common._resumed("density", p.parse_args([*argv, "--lr", "0.1", "--resume"]))
    monkeypatch.setattr(sys, "argv", ["exp_density.py", *argv, "--resume"])
    args = p.parse_args([*argv, "--resume"])
    part = common._resumed("density", args)
    assert part["rows"] == saved and part["wall_seconds"] >= 5.0
    rows = part["rows"] + [{"method": "learned", "density": 0.01, "seed": 0, "test_accuracy": 0.6}]
    monkeypatch.setattr(common, "machine", lambda: "other machine")  # resumed elsewhere
    out = json.loads(common.finish("density", args, {**cfg_for(args, part["wall_seconds"], 2.0),
                                                     "machine_before": part["machine"]},
                                   rows).read_text())
    assert out["machine"] == "test machine; other machine"
    assert [r["test_accuracy"] for r in out["rows"]] == [0.5, 0.6]
    assert out["wall_seconds"] >= 7.0  # both parts of the run
    assert out["command"] == "python exp_density.py " + " ".join(argv)  # the command run once
    assert not partial.exists()
    with pytest.raises(SystemExit, match="no interrupted run"):
        common._resumed("density", args)
    for junk in ("{trunc", "[]", '{"rows": []}'):  # a torn or foreign file: a clear error
        partial.write_text(junk)
        with pytest.raises(SystemExit, match="is not a partial result"):
            common._resumed("density", args)
    plain = argparse.ArgumentParser()
    common.add_args(plain)  # an experiment that does not save rows as it goes has no --resume
    with pytest.raises(SystemExit):
        plain.parse_args(["--resume"])


def test_first_seed_needs_an_earlier_result(common, monkeypatch):
    with pytest.raises(SystemExit, match="no earlier result"):
        _run(common, monkeypatch, ["--first-seed", "3"], lambda s: 0.5)


def test_a_result_from_before_the_recorded_settings_extends_with_those_settings(common, monkeypatch):
    """Files written before the whitening and learner settings were recorded were run with
    LEGACY's; they extend with exactly those, and with nothing else."""
    first = _run(common, monkeypatch, ["--seeds", "1"], lambda s: 0.5)
    for k in (*common.LEGACY, *common.PLAIN):
        del first[k]
    (common.RUNS / "single-mnist.json").write_text(json.dumps(first))
    legacy = ["--whiten-eps", "0.1", "--active-fraction", "0.05", "--dict-memory", "short"]
    both = _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "1", *legacy], lambda s: 0.6)
    assert [r["seed"] for r in both["rows"]] == [0, 1]
    with pytest.raises(SystemExit, match="other settings.*whiten_eps"):
        _run(common, monkeypatch, ["--seeds", "1", "--first-seed", "2", *legacy[2:],
                                   "--whiten-eps", "0.5"], lambda s: 0.5)


@pytest.fixture
def make_results(load_recipe):
    return load_recipe("make_results.py", "recipes_make_results")


@pytest.mark.parametrize("settings, label", [
    ({}, "### Depth — mnist (--quick) (not the validation choices)"),  # predates recording them
    ({"whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short"}, "### Depth — mnist (--quick)"),
    ({"whiten_eps": 8.0, "active_fraction": 0.05, "dict_memory": "short"},
     "### Depth — mnist (--quick) (not the validation choices)"),
    ({"whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short", "flip": True,
      "weight_decay": 1e-4}, "### Depth — mnist (--quick) (training: random flips, weight decay 0.0001)"),
])
def test_header_names_results_made_with_other_than_the_validation_choices(settings, label, make_results):
    res = {"experiment": "depth", "dataset": "mnist", "quick": True, "command": "python x",
           "machine": "m", "wall_seconds": 60, "n_train": 10, "width": 8, "group_size": 4,
           "epochs": 1, "dict_epochs": 1, "seeds": 1, **settings}
    assert make_results._header(res, "Depth")[0] == label


def test_dst_density_section_gives_seconds_per_epoch_per_method_and_density(make_results):
    rows = [{"method": "dense", "density": 1.0, "seed": s, "test_accuracy": 0.5,
             "train_seconds": 40.0 + 8 * s} for s in (0, 1)]
    rows += [{"method": m, "density": d, "seed": s, "test_accuracy": 0.6, "actual_density": d,
              "train_seconds": t * (1 + s)} for m, t in [("learned", 4.0), ("rigl", 6.0)]
             for d in (0.01, 0.05) for s in (0, 1)]
    res = {"experiment": "density", "dataset": "cifar10", "quick": False, "command": "python x",
           "machine": "m", "wall_seconds": 60, "n_train": 10, "width": 8, "group_size": 4,
           "epochs": 4, "dict_epochs": 1, "seeds": 2, "whiten_eps": 8.0, "active_fraction": 0.3,
           "dict_memory": "short", "rows": rows}
    text = "\n".join(make_results.density_section(res))
    assert "against dynamic sparse training" in text
    # dense: (40 + 48) / 2 / 4 epochs; learned: (4 + 8) / 2 / 4; rigl: (6 + 12) / 2 / 4
    assert "mask updates included; dense 11.00 s" in text
    assert "| learned | 1.50 | 1.50 |" in text and "| rigl | 2.25 | 2.25 |" in text


def test_tune_section_marks_the_choice_and_shows_no_test_accuracy(make_results):
    mod = make_results
    rows = [{"whiten_eps": e, "method": "random-local", "seed": 0, "val_accuracy": 0.5} for e in (0.1, 2.0)]
    rows += [{"whiten_eps": e, "method": "learned", "seed": 0, "active_fraction": a,
              "dict_memory": "short", "val_accuracy": v, "active_codes": 0.01}
             for e, a, v in [(0.1, 0.05, 0.6), (0.1, 0.3, 0.61), (2.0, 0.05, 0.7), (2.0, 0.3, 0.65)]]
    res = {"experiment": "tune", "dataset": "mnist", "quick": True, "command": "python x",
           "machine": "m", "wall_seconds": 60, "n_train": 10, "width": 8, "group_size": 4,
           "epochs": 1, "dict_epochs": 1, "seeds": 1, "density": 0.05, "rows": rows,
           "choice": {"whiten_eps": 2.0, "active_fraction": 0.05, "dict_memory": "short"}}
    text = "\n".join(mod.tune_section(res))
    assert "| 2.0 | 50.00% | **70.00%** (1.0%) | 65.00% (1.0%) |" in text
    assert text.count("**") == 2 and "test" not in text.lower().replace("the test set is not", "")
    assert "ZCA ε 2.0, active fraction 0.05, dictionary memory short" in text


def test_training_tune_section_marks_the_choice_and_shows_no_test_accuracy(make_results):
    mod = make_results
    rows = [{"whiten_eps": 8.0, "method": "learned", "seed": 0, "flip": f, "weight_decay": w,
             "val_accuracy": v} for f, w, v in [(False, 0.0, 0.5), (False, 1e-3, 0.52),
                                               (True, 0.0, 0.6), (True, 1e-3, 0.55)]]
    res = {"experiment": "tune-training", "dataset": "cifar10", "quick": False, "command": "python x",
           "machine": "m", "wall_seconds": 60, "n_train": 10, "width": 8, "group_size": 4,
           "epochs": 1, "dict_epochs": 1, "seeds": 1, "density": 0.05, "rows": rows,
           "whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short",
           "flip": [False, True], "weight_decay": [0.0, 1e-3], "choice": {"flip": True, "weight_decay": 0.0}}
    text = "\n".join(mod.training_tune_section(res))
    assert text.startswith("### Validation choice of the training recipe — cifar10\n")
    assert "| yes | **60.00%** | 55.00% |" in text and "| no | 50.00% | 52.00% |" in text
    assert text.count("**") == 2 and "Choice (bold): random flips;" in text
    assert "test" not in text.lower().replace("the test set is not", "")


def test_training_tune_section_of_the_fully_connected_layer_names_it_and_no_dictionary(make_results):
    mod = make_results
    rows = [{"whiten_eps": 8.0, "method": "fully connected", "seed": 0, "flip": True,
             "weight_decay": w, "val_accuracy": v} for w, v in [(1e-3, 0.55), (1e-2, 0.58)]]
    res = {"experiment": "tune-training-fc", "dataset": "cifar10", "quick": False,
           "command": "python x", "machine": "m", "wall_seconds": 60, "n_train": 10, "width": 8,
           "group_size": 4, "epochs": 1, "dict_epochs": 1, "seeds": 1, "density": 0.05,
           "rows": rows, "whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short",
           "flip": [True], "weight_decay": [1e-3, 1e-2], "choice": {"flip": True, "weight_decay": 1e-2}}
    text = "\n".join(mod.training_tune_section(res))
    assert text.startswith("### Validation choice of the training recipe, fully connected layer — ")
    assert "Validation accuracy of the fully connected single layer" in text
    assert "dictionary" not in text and "| yes | 55.00% | **58.00%** |" in text
    assert "Choice (bold): random flips, weight decay 0.01." in text


def test_exp_tune_refuses_a_network_without_training(capsys, load_recipe):
    mod = load_recipe("exp_tune.py")
    with pytest.raises(SystemExit):
        mod.main(["--dataset", "cifar10", "--network", "fully-connected"])
    assert "--network fully-connected needs --training" in capsys.readouterr().err


def test_depth_experiment_truncates_one_grown_stack_as_the_stopping_rule_would(load_recipe):
    """exp_depth trains forced depth k as the first k layers of one stack grown with the rule off,
    and the rule's pick as the prefix ``rule_depth`` reads off that stack's gains: growth is greedy,
    so both must equal what ``learn_structure`` builds with the rule on."""
    from tests.test_learn import _loader, _photo_crops
    from torch_structlearn import StructLearnedStack, ZCAWhitening

    exp = load_recipe("exp_depth.py")
    X = _photo_crops(n=2000, size=8)
    X = ZCAWhitening(64).fit(_loader(X, 500))(X)

    def grow(min_gain, max_depth=3):
        s = StructLearnedStack(64, 32, max_depth=max_depth, density=0.25, group_size=4,
                               min_gain=min_gain, epochs=1, seed=0, verbose=False)
        return s.learn_structure(_loader(X, 250))

    forced = grow(float("-inf"))
    gains = [r["gain"] for r in forced.report]
    for min_gain in (0.01, min(gains[1:]) - 1.0, max(gains[1:]) + 1.0):
        ruled = grow(min_gain)
        assert ruled.depth == exp.rule_depth(gains, min_gain)
        for a, b in zip(ruled.layers, forced.layers[: ruled.depth], strict=True):
            assert a[0].connectivity == b[0].connectivity
            torch.testing.assert_close(a[0].values, b[0].values)
    assert exp.rule_depth(gains, min(gains[1:]) - 1.0) == 3
    assert exp.rule_depth(gains, max(gains[1:]) + 1.0) == 1
    assert exp.rule_depth([0.5, 0.2, -0.1, 0.3], 0.0) == 2


def test_code_version_is_unknown_outside_a_git_checkout(common, monkeypatch, tmp_path):
    common.code_version.cache_clear()
    monkeypatch.setattr(common, "ROOT", tmp_path)
    try:
        assert common.code_version() == "unknown"
    finally:
        common.code_version.cache_clear()


def test_code_version_marks_changed_tracked_files(common, monkeypatch, tmp_path):
    """A commit plus ``-dirty`` when a tracked file differs from it (an untracked one does not)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    (tmp_path / "untracked.txt").write_text("x")
    versions = []
    for change in (None, "2"):
        if change:
            (tmp_path / "a.txt").write_text(change)
        common.code_version.cache_clear()
        versions.append(common.code_version())
    common.code_version.cache_clear()
    assert versions == [git("rev-parse", "HEAD"), git("rev-parse", "HEAD") + "-dirty"]


def test_score_parts_add_up_to_the_score_and_match_scipy(common):
    """E = H − TC is the library's coding_efficiency; the kurtosis is scipy's (Fisher, biased)
    over the non-constant units, and the zero fraction counts exact zeros."""
    stats = pytest.importorskip("scipy.stats")
    from torch_structlearn.entropy import coding_efficiency

    g = torch.Generator().manual_seed(0)
    hidden = torch.cat([torch.relu(torch.randn(2000, 5, generator=g)),  # half zeros, skewed
                        torch.randn(2000, 3, generator=g) ** 3,  # heavy-tailed
                        torch.zeros(2000, 1)], 1)  # a dead unit: no kurtosis, all zeros
    parts = common.score_parts(hidden)
    assert parts["score"] == pytest.approx(coding_efficiency(hidden), abs=1e-9)
    assert parts["score"] == pytest.approx(parts["score_entropy"] - parts["score_tc"], abs=1e-12)
    ref = stats.kurtosis(hidden[:, :8].double().numpy(), axis=0, fisher=True, bias=True)
    assert parts["excess_kurtosis"] == pytest.approx(float(ref.mean()), rel=1e-9)
    assert parts["zero_fraction"] == pytest.approx(float((hidden == 0).double().mean()))
    assert 0.36 < parts["zero_fraction"] < 0.42  # (5 · ½ + 1) / 9: half-zero units, a dead one


def test_score_parts_section_pairs_learned_with_random_of_the_same_density_and_seed(make_results):
    """The learned−random table differences the rows of one (density, seed); networks without the
    recorded terms (older results) are left out; the analysis counts the cells' signs."""
    mod = make_results

    def net(method, density, seed, acc, H, tc, kurt):
        return {"method": method, "density": density, "seed": seed, "test_accuracy": acc,
                "score": H - tc, "score_entropy": H, "score_tc": tc, "excess_kurtosis": kurt}

    rows = []
    for seed in (0, 1):
        for d, gain in ((0.05, 0.02), (0.25, -0.01)):
            rows += [net("learned", d, seed, 0.9 + gain, 1.0 + seed, 0.2, 2.0),
                     net("random", d, seed, 0.9, 1.2 + seed, 0.3, 0.0),
                     net("snip", d, seed, 0.85, 1.3, 0.4, 0.1)]
    rows.append({"method": "random", "density": 0.05, "seed": 2, "test_accuracy": 0.5, "score": 9.0})
    res = {"experiment": "density", "dataset": "mnist", "quick": True, "rows": rows,
           "whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short"}
    text = "\n".join(mod.score_parts_section([res]))
    assert "| mnist (--quick) | 5% | +2.00 points | -0.100 | -0.200 | -0.100 | +2.00 |" in text
    assert "| mnist (--quick) | 25% | -1.00 points | -0.100 | -0.200 | -0.100 | +2.00 |" in text
    assert "| density mnist (--quick) | 12 |" in text  # the row without terms is not counted
    assert "In 1 of the 2 density cells above the learned mask is the more accurate" in text
    assert "in 2 its units have the lower H" in text and "E is lower in 2." in text
    assert mod.score_parts_section([{**res, "rows": rows[-1:]}]) == []


def test_targets_section_judges_each_result_as_its_own_section_does(make_results):
    """The summary judges the full CIFAR-10 single-layer results (63.0 % and +2.5 points, means
    over seeds), every density sweep (a baseline level with learned at a density ≤ 10 % misses
    it; 25 % does not count) and the pooled entropy–accuracy ρ, with the same words as the
    sections below."""
    mod = make_results
    base = {"quick": False, "command": "python x", "machine": "m", "wall_seconds": 60, "n_train": 10,
            "width": 8, "group_size": 4, "epochs": 1, "dict_epochs": 1, "seeds": 2,
            "whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short"}

    def single(learned, fc):
        rows = [{"method": m, "seed": s, "test_accuracy": a + 0.001 * (2 * s - 1), "val_accuracy": a,
                 "score": a} for s in (0, 1) for m, a in (("learned", learned), ("fully connected", fc))]
        return {**base, "experiment": "single", "dataset": "cifar10", "rows": rows}

    def density(random_at):
        rows = [{"method": m, "density": d, "seed": s, "test_accuracy": acc}
                for s in (0, 1, 2) for d in (0.02, 0.25)
                for m, acc in (("learned", 0.9), ("random", random_at[d]))]
        return {**base, "experiment": "density", "dataset": "mnist", "seeds": 3, "rows": rows}

    met = single(0.635, 0.60)
    close = single(0.635, 0.615)  # +2.0 points only
    low = single(0.62, 0.50)  # far ahead but under 63 %
    wins = density({0.02: 0.8, 0.25: 0.95})  # behind only at 25 %, which the target leaves out
    tie = density({0.02: 0.9, 0.25: 0.8})
    rows = mod.targets_section([met, close, low, wins, tie, {**met, "dataset": "mnist"}])
    table = [r for r in rows if r.startswith("| learned")]
    assert [r.split(" | ")[2].split(" — ")[0] for r in table] == [
        "met", "**missed**", "**missed**", "met", "**missed**"]
    assert "learned 63.50%, fully connected 60.00% (+3.50 points)" in table[0]
    assert "2%: learned **not** best (beaten or tied by random)" in table[4]
    for res, row in zip((met, close, low, wins, tie), table, strict=True):
        section = (mod.grouped_section(res, "Single layer") if res["experiment"] == "single"
                   else mod.density_section(res))
        assert any(line.endswith(row.split(" | ")[2].removesuffix(" |") + ".") for line in section)
    stats = pytest.importorskip("scipy.stats")
    scored = [(r["score"], r["test_accuracy"]) for res in (met, close, low, met) for r in res["rows"]]
    x, y = zip(*scored, strict=True)
    rho = stats.spearmanr(x, y).statistic  # the density rows have no score
    entropy = [r for r in rows if r.startswith("| positive")]
    assert entropy == ["| positive entropy–accuracy rank correlation | all 16 trained networks "
                       f"with a score | met — Spearman ρ {rho:+.3f} |"] and rho > 0
    negative = mod.targets_section([{**met, "rows": [{**r, "score": -r["score"]} for r in met["rows"]]}])
    assert negative[-2].endswith(f"| **missed** — Spearman ρ {-stats.spearmanr(x[:4], y[:4]).statistic:+.3f} |")


# A parallel multiply of denormals: zeros only if every OpenMP thread flushes them.
_DENORMALS_FLUSHED = ("import torch; torch.set_num_threads(2); "
                      "print(int(torch.full((1 << 20,), 1e-40).mul(1.0).count_nonzero()))")


@pytest.mark.parametrize("setup", [
    "import sys; sys.path.insert(0, {recipes!r}); import common",
    "import contextlib\nfrom torch_structlearn import cli\n"
    "with contextlib.suppress(SystemExit): cli.main(['learn', '--width', '0'])",
], ids=["recipes", "cli"])
def test_recipes_and_cli_flush_denormals_in_every_thread(setup):
    """Adam's weight decay drives the weights of units that never fire into the denormal range,
    where a CPU matmul is ~100x slower (measured in common.py); recipes and CLI flush them."""
    code = setup.format(recipes=str(RECIPES)) + "\n" + _DENORMALS_FLUSHED
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    plain = subprocess.run([sys.executable, "-c", _DENORMALS_FLUSHED], capture_output=True,
                           text=True, check=True)
    assert plain.stdout.strip() == str(1 << 20)  # the check itself sees denormals otherwise


def _recipe_writing_to(tmp_path, monkeypatch, load_recipe, script: str):
    """``(recipe, common)``: the recipe ``script`` and the ``common`` module it imports, which
    then writes runs and shipped results under ``tmp_path`` (end-to-end tests)."""
    exp = load_recipe(script)
    common = sys.modules["common"]
    monkeypatch.setattr(common, "RUNS", tmp_path)
    monkeypatch.setattr(common, "SHIPPED", tmp_path / "shipped")
    return exp, common


def test_an_interrupted_experiment_resumes_with_the_rows_it_saved(monkeypatch, tmp_path, load_recipe):
    """End to end on MNIST (tiny settings): exp_single stopped after its first network, then run
    again with --resume, trains only the second one (learning no dictionary: the fully connected
    layer needs none) and keeps the first one's row unchanged."""
    require_data("MNIST/raw")
    exp, common = _recipe_writing_to(tmp_path, monkeypatch, load_recipe, "exp_single.py")
    argv = ["--quick", "--seeds", "1", "--width", "16", "--epochs", "1", "--dict-epochs", "1"]
    trained, real = [], exp.train_eval

    def interrupted_after_one(model, splits, **kw):
        if trained:
            raise KeyboardInterrupt
        trained.append(model)
        return real(model, splits, **kw)

    monkeypatch.setattr(sys, "argv", ["exp_single.py", *argv])
    monkeypatch.setattr(exp, "train_eval", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        exp.main(argv)
    partial = json.loads((tmp_path / "single-mnist-quick.partial.json").read_text())
    assert [r["method"] for r in partial["rows"]] == ["learned"]

    trained.clear()
    monkeypatch.setattr(exp, "train_eval", lambda model, splits, **kw: (
        trained.append(model), real(model, splits, **kw))[1])
    monkeypatch.setattr(exp, "learn_structure", lambda *a, **kw: pytest.fail("relearned"))
    monkeypatch.setattr(sys, "argv", ["exp_single.py", *argv, "--resume"])
    assert exp.main([*argv, "--resume"]) == 0
    assert len(trained) == 1  # only the fully connected network
    out = json.loads((tmp_path / "single-mnist-quick.json").read_text())
    assert [r["method"] for r in out["rows"]] == ["learned", "fully connected"]
    assert out["rows"][0] == partial["rows"][0]
    head = subprocess.run(["git", "-C", str(RECIPES.parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"
    for r in out["rows"]:
        assert 0.1 < r["train_accuracy"] <= 1 and r["train_loss"] > 0
        assert r["machine"] == common.machine() and r["code"].removesuffix("-dirty") == head
    assert "--resume" not in out["command"] and not (tmp_path / "single-mnist-quick.partial.json").exists()


@pytest.mark.parametrize("script, argv, message", [
    ("exp_single.py", ["--density", "0"], "--density: density must be in (0, 1], got 0"),
    ("exp_depth.py", ["--density", "1.5"], "--density: density must be in (0, 1], got 1.5"),
    ("exp_depth.py", ["--max-depth", "0"], "--max-depth: must be > 0, got 0"),
    ("exp_density.py", ["--densities", "0.05", "nan"], "--densities: density must be in (0, 1], got nan"),
    ("exp_mask.py", ["--group-size", "0"], "--group-size: must be > 0, got 0"),
    ("exp_single.py", ["--lr", "nan"], "--lr: must be > 0, got nan"),
    ("exp_single.py", ["--seeds", "0"], "--seeds: must be > 0, got 0"),
    ("finetune_timm.py", ["--density", "-0.1"], "--density: density must be in (0, 1], got -0.1"),
    ("distributed_learn.py", ["--batch-size", "0"], "--batch-size: must be > 0, got 0"),
])
def test_recipe_arguments_are_checked_when_parsed(script, argv, message, capsys, load_recipe):
    with pytest.raises(SystemExit) as e:
        load_recipe(script).main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_exp_convert_runs_every_method_and_writes_its_table(load_recipe, tmp_path, monkeypatch):
    """recipes/exp_convert.py end to end on a small stand-in data set (the real run reads
    Fashion-MNIST / MNIST): a trained MLP converted by each method and seed, one-shot and
    fine-tuned accuracies, errors and the calibration sweep written."""
    import json

    import torch

    mod = load_recipe("exp_convert.py")
    g = torch.Generator().manual_seed(0)
    data = {"train": (torch.rand(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g)),
            "test": (torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))}
    monkeypatch.setattr(mod, "load_dataset", lambda name, split, root=None: data[split])
    monkeypatch.setitem(mod.MODELS, "mlp", (lambda n_out: torch.nn.Sequential(  # narrower
        torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, n_out)),
        None))
    out = tmp_path / "r.json"
    assert mod.main(["--epochs", "1", "--calib", "64", "--densities", "0.5", "2:4",
                     "--methods", "magnitude", "refit-seq", "--seeds", "2", "--finetune-steps", "2",
                     "--calib-sweep", "32", "--checkpoint", str(tmp_path / "m.pt"),
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["method"], r["density"], r["seed"]) for r in res["rows"]] == [
        (m, d, s) for d in ("0.5", "2:4") for m in ("magnitude", "refit-seq") for s in (0, 1)]
    assert res["rows"][0]["output_error"] is None and 0 <= res["rows"][2]["output_error"] < 1
    assert all(0 <= r["one_shot"] <= 1 and 0 <= r["finetuned"] <= 1 for r in res["rows"])
    assert len(res["dense_finetuned"]) == 2
    assert [(r["calib"], r["method"]) for r in res["calib_sweep"]][::2] == [
        (32, "wanda"), (32, "sparsegpt"), (32, "refit")]
    assert (tmp_path / "m.pt").exists()  # the trained model is kept for the next run


def test_exp_convert_resumes_an_interrupted_run_without_redoing_its_rows(load_recipe, tmp_path,
                                                                         monkeypatch):
    """Each row is saved as it is made (<out>.partial.json); a run cut off on its third
    conversion keeps two rows, and --resume of the same command converts only the rest and
    gives the same rows; --resume of another command, or with nothing saved, exits clearly."""
    import json

    import torch

    mod = load_recipe("exp_convert.py")
    g = torch.Generator().manual_seed(0)
    data = {"train": (torch.rand(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)),
            "test": (torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))}
    monkeypatch.setattr(mod, "load_dataset", lambda name, split, root=None: data[split])
    monkeypatch.setitem(mod.MODELS, "mlp", (lambda n_out: torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, n_out)),
        None))
    out = tmp_path / "r.json"
    argv = ["--epochs", "1", "--calib", "32", "--densities", "0.5", "--methods", "magnitude",
            "wanda", "--seeds", "2", "--finetune-steps", "0", "--calib-sweep",
            "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out)]
    with pytest.raises(SystemExit, match="no interrupted run"):
        mod.main([*argv, "--resume"])
    real, calls = mod._convert, []

    def cut_off(*a, **k):
        calls.append(a[3])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mod, "_convert", cut_off)
    with pytest.raises(KeyboardInterrupt):
        mod.main(argv)
    partial = json.loads((tmp_path / "r.partial.json").read_text())
    assert [(r["method"], r["seed"]) for r in partial["rows"]] == [("magnitude", 0), ("magnitude", 1)]
    with pytest.raises(SystemExit, match="another command"):
        mod.main([*argv[:-2], "--out", str(out), "--lr", "0.01", "--resume"])
    calls.clear()
    assert mod.main([*argv, "--resume"]) == 0
    assert calls == ["wanda", "wanda"]  # only the rows it lacked
    res = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in res["rows"]] == [
        ("magnitude", 0), ("magnitude", 1), ("wanda", 0), ("wanda", 1)]
    assert res["rows"][:2] == partial["rows"] and "--resume" not in res["command"]
    assert not (tmp_path / "r.partial.json").exists()


def test_the_character_model_is_causal_and_its_perplexity_is_exp_cross_entropy(load_recipe):
    """The language-model stand-in of exp_convert: the corpus windows are the text shifted by
    one; a prediction never reads later characters; a model whose logits are all equal has
    perplexity = the vocabulary size (an independent closed form)."""
    import torch

    mod = load_recipe("exp_convert.py")
    Xtr, ytr, Xte, yte, vocab = mod.char_corpus()
    assert Xtr.shape[1] == mod.CONTEXT and torch.equal(Xtr[:, 1:], ytr[:, :-1])
    assert torch.equal(Xtr[1, : mod.CONTEXT - mod.STRIDE], Xtr[0, mod.STRIDE :])
    assert torch.equal(Xte[1:, 0], yte[:-1, -1])  # each test character predicted once
    assert 50 < vocab < 200 and int(Xtr.max()) < vocab
    torch.manual_seed(0)
    model = mod.CharLM(vocab, dim=32, depth=2, heads=2).eval()
    x = Xtr[:3].clone()
    y0 = model(x)
    x[:, 40:] = (x[:, 40:] + 1) % vocab
    y1 = model(x)
    torch.testing.assert_close(y0[:, :40], y1[:, :40])
    assert not torch.allclose(y0[:, 40:], y1[:, 40:])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    assert abs(mod.perplexity(model, Xte[:20], yte[:20]) - vocab) < 1e-5 * vocab  # float32 sums


def test_exp_convert_runs_the_language_model_and_renders_perplexity(load_recipe, tmp_path,
                                                                     monkeypatch):
    """exp_convert --model charlm end to end on a slice of the corpus and a narrow model:
    perplexities (> 1) recorded as the metric, and make_results renders them with "lower is
    better" targets."""
    import json

    mod = load_recipe("exp_convert.py")
    full = mod.char_corpus()
    monkeypatch.setattr(mod, "char_corpus", lambda: (full[0][:256], full[1][:256], full[2][:16],
                                                     full[3][:16], full[4]))
    monkeypatch.setitem(mod.MODELS, "charlm", (lambda n: mod.CharLM(n, dim=32, depth=1, heads=2),
                                               "blocks.*"))
    out = tmp_path / "lm.json"
    assert mod.main(["--model", "charlm", "--epochs", "1", "--calib", "32", "--densities", "0.5", "0.25",
                     "--methods", "wanda", "refit", "--seeds", "1", "--finetune-steps", "1",
                     "--calib-sweep", "16", "--checkpoint", str(tmp_path / "lm.pt"),
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["metric"] == "perplexity" and res["dense_test_perplexity"] > 1
    assert all(r["one_shot"] > 1 and r["finetuned"] > 1 for r in res["rows"])
    mr = load_recipe("make_results.py")
    monkeypatch.setattr(mr, "FIG", tmp_path / "figures")  # not the repository's figures
    text = "\n".join(mr.convert_section(res))
    assert (tmp_path / "figures" / "convert-charlm-pydoc-topics.png").exists()
    assert "Test perplexity, one-shot" in text and "lower perplexity" in text
    ours = next(r["one_shot"] for r in res["rows"] if r["method"] == "refit")
    theirs = next(r["one_shot"] for r in res["rows"] if r["method"] == "wanda")
    assert ("| met |" if ours <= theirs else "**missed**") in text


def test_a_converted_trained_model_round_trips_through_the_hub(load_recipe, tmp_path, monkeypatch):
    """exp_convert.publish writes a converted *trained* timm model as a hub entry (structure,
    the other weights, card); hub.load gives back the same function. A weights file that does
    not fit the architecture is a HubEntryError, not a silently half-loaded model."""
    import json

    import timm
    import torch

    from torch_structlearn import convert, hub

    mod = load_recipe("exp_convert.py")
    kw = {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 2}
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **kw).eval()
    x = torch.rand(32, 3, 32, 32)
    convert(model, [(x,)], density=0.25, include="blocks.*", verbose=False)
    card = {"dataset": "none", "command": "-", "density": 0.25, "depth": None,
            "test_accuracy": 0.0, "data_license": "-", "timm_model": "vit_tiny_patch16_224",
            "timm_kwargs": kw, "include": "blocks.*"}
    mod.publish(tmp_path / "vit-trained", model, card)
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    loaded = hub.load("vit-trained").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    card["timm_kwargs"] = {**kw, "depth": 3}  # a third block the weights file lacks
    (tmp_path / "vit-trained" / "card.json").write_text(json.dumps(card))
    with pytest.raises(hub.HubEntryError, match="weights.safetensors"):
        hub.load("vit-trained")


def test_convert_tables_list_densities_in_a_fixed_order(make_results):
    # 2:4 and 50 % have the same density: 2:4 comes right after 50 %, whatever the rows' order
    for order in (["0.1", "2:4", "0.5", "0.05", "0.25"], ["2:4", "0.5", "0.25", "0.1", "0.05"]):
        assert make_results._densities([{"density": d} for d in order]) == [
            "0.5", "2:4", "0.25", "0.1", "0.05"]


def test_exp_learner_trains_the_structure_each_threshold_stops_at(monkeypatch, tmp_path, load_recipe,
                                                                  make_results):
    """End to end on MNIST (tiny settings): the structure trained for each threshold is the one
    ``learn_structure(..., settle=t)`` returns — the rule run for real, not replayed — and the
    trajectory's overlaps are those of the checks."""
    require_data("MNIST/raw")
    exp, common = _recipe_writing_to(tmp_path, monkeypatch, load_recipe, "exp_learner.py")
    argv = ["--quick", "--seeds", "1", "--width", "16", "--epochs", "1", "--max-passes", "2",
            "--check-every", "2000", "--thresholds", "0.3", "0.999"]
    trained, real = [], exp.train_eval
    monkeypatch.setattr(exp, "train_eval", lambda model, splits, **kw: (
        trained.append(model[0].connectivity), real(model, splits, **kw))[1])
    monkeypatch.setattr(sys, "argv", ["exp_learner.py", *argv])
    assert exp.main(argv) == 0
    out = json.loads((tmp_path / "learner-mnist-quick.json").read_text())
    checks = out["trajectories"][0]["checks"]
    assert len(checks) >= 5 and checks[-1]["overlap_last"] > checks[0]["overlap_last"]
    assert [r["method"] for r in out["rows"]][-1] == "last"
    from torch.utils.data import DataLoader, TensorDataset

    from torch_structlearn import learn_structure

    (Xtr, _), *_ = common.data("mnist", 10_000, 5_000, None, eps=8.0)[0]
    loader = DataLoader(TensorDataset(Xtr), batch_size=250)
    for row, conn in zip(out["rows"], trained, strict=True):
        for t in row["thresholds"]:
            want = learn_structure(loader, 16, density=0.05, group_size=4, seed=0, epochs=2,
                                   settle=t, check_every=2000, active_fraction=0.3,
                                   verbose=False)[0]
            assert torch.equal(want.crow_indices, conn.crow_indices)
            assert torch.equal(want.col_indices, conn.col_indices), t
    assert out["rows"][0]["thresholds"] == [0.3] and out["rows"][0]["passes"] < 2
    text = "\n".join(make_results.learner_section(out))
    assert "### Time to a structure — mnist (--quick)" in text
    assert "| 0.3 | " in text and "| end of the run (at most 2 passes) | 0.999 | " in text
    assert text.count("\n| 1 | ") == 1  # the stability table's first check


def test_density_sweep_runs_rigl_set_and_learned_then_rigl(monkeypatch, tmp_path, load_recipe):
    """End to end on MNIST (tiny settings, two epochs: one mask update at step 100): the three
    dynamic-sparse-training structures train, and their masks moved away from where they
    started while every unit kept its fan-in."""
    require_data("MNIST/raw")
    exp, common = _recipe_writing_to(tmp_path, monkeypatch, load_recipe, "exp_density.py")
    argv = ["--quick", "--seeds", "1", "--width", "16", "--epochs", "2", "--dict-epochs", "1",
            "--densities", "0.1", "--methods", "rigl", "set", "learned-rigl"]
    trained, real = [], exp.train_eval

    def keep(model, splits, **kw):
        sparse = hasattr(model[0], "connectivity")  # (the dense network has an nn.Linear)
        start = model[0].connectivity.to_mask() if sparse else None
        r = real(model, splits, **kw)
        trained.append((start, model[0].connectivity.to_mask() if sparse else None))
        return r

    monkeypatch.setattr(exp, "train_eval", keep)
    monkeypatch.setattr(sys, "argv", ["exp_density.py", *argv])
    assert exp.main(argv) == 0
    out = json.loads((tmp_path / "density-mnist-quick.json").read_text())
    assert [r["method"] for r in out["rows"]] == ["dense", "rigl", "set", "learned-rigl"]
    assert all(0 <= r["test_accuracy"] <= 1 for r in out["rows"])
    assert len(trained) == 4
    for start, end in trained[1:]:  # (the first is the dense network's nn.Linear: no mask)
        assert not torch.equal(start, end) and torch.equal(start.sum(1), end.sum(1))


def test_density_sweep_dense_at_the_same_parameter_count(monkeypatch, tmp_path, load_recipe):
    """``dense-params``: a dense first layer with as many weights as the sparse layer at that
    density (density·K units, a multiple of the group size, at least one group)."""
    require_data("MNIST/raw")
    exp, common = _recipe_writing_to(tmp_path, monkeypatch, load_recipe, "exp_density.py")
    argv = ["--quick", "--seeds", "1", "--width", "64", "--epochs", "1", "--dict-epochs", "1",
            "--densities", "0.01", "0.25", "--methods", "dense-params"]
    widths, real = [], exp.train_eval

    def keep(model, splits, **kw):
        widths.append((type(model[0]).__name__, model[0].out_features, model[-1].in_features))
        return real(model, splits, **kw)

    monkeypatch.setattr(exp, "train_eval", keep)
    monkeypatch.setattr(sys, "argv", ["exp_density.py", *argv])
    assert exp.main(argv) == 0
    out = json.loads((tmp_path / "density-mnist-quick.json").read_text())
    # dense (64 units), then 1 % → 0.64 units: one group of 4; 25 % → 16 units
    assert widths == [("Linear", 64, 16), ("Linear", 4, 1), ("Linear", 16, 4)]
    assert [(r["method"], r["width"], r["actual_density"]) for r in out["rows"]] == [
        ("dense", 64, 1.0), ("dense-params", 4, 4 / 64), ("dense-params", 16, 0.25)]


def test_depth_experiment_trains_each_depth_with_rigl_set_and_learned_rigl(monkeypatch, tmp_path,
                                                                          load_recipe):
    """``exp_depth --dynamic`` on MNIST (tiny settings; two epochs: one mask update at step 100):
    RigL and SET start from random stacks of the learned stack's shapes and fan-in,
    learned-RigL from the learned stack itself, erk/rigl-erk from random stacks with ERK layer
    densities; the dynamic ones' masks move, the static ERK one's stay; fan-in kept."""
    require_data("MNIST/raw")
    exp, common = _recipe_writing_to(tmp_path, monkeypatch, load_recipe, "exp_depth.py")
    argv = ["--quick", "--seeds", "1", "--width", "64", "--epochs", "2", "--dict-epochs", "1",
            "--max-depth", "2", "--dynamic"]
    trained, real = [], exp.train_eval

    def keep(model, splits, **kw):
        layers = [b[0] for b in model[0].layers]
        start = [layer.connectivity.to_mask() for layer in layers]
        r = real(model, splits, **kw)
        trained.append((start, [layer.connectivity.to_mask() for layer in layers],
                        "after_step" in kw))
        return r

    monkeypatch.setattr(exp, "train_eval", keep)
    monkeypatch.setattr(sys, "argv", ["exp_depth.py", *argv])
    assert exp.main(argv) == 0
    out = json.loads((tmp_path / "depth-mnist-quick.json").read_text())
    methods = [r["method"] for r in out["rows"] if r["method"] != "stopping rule"]
    each = ["rigl", "set", "learned-rigl", "erk", "rigl-erk"]
    assert methods == ["forced depth 1", "forced depth 2", *(f"{m} depth {k}" for k in (1, 2)
                                                              for m in each)]
    assert [t[2] for t in trained] == [False, False] + [m != "erk" for m in each] * 2
    learned = trained[1][0]  # forced depth 2's masks: the learned stack
    for i, (start, end, dynamic) in enumerate(trained[2:]):
        method = methods[2 + i]
        assert len(start) == int(method[-1])
        assert all(torch.equal(a.sum(1), b.sum(1)) for a, b in zip(start, end, strict=True))
        assert any(not torch.equal(a, b) for a, b in zip(start, end, strict=True)) == dynamic
        from_learned = all(torch.equal(a, b) for a, b in zip(start, learned, strict=False))
        assert from_learned == method.startswith("learned-rigl"), method
        if method.startswith(("erk", "rigl-erk")) and len(start) == 2:  # ERK: the same weights,
            uniform = [m.sum() for m in learned]  # the narrow second layer denser
            assert start[1].float().mean() > learned[1].float().mean()
            assert abs(sum(m.sum() for m in start) - sum(uniform)) <= 0.02 * sum(uniform)
