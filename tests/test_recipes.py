"""The recipes' result files: a long run split over sessions (``--first-seed``) extends the
earlier result only when the settings match, and never duplicates a seed."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture
def common(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    spec = importlib.util.spec_from_file_location("recipes_common", RECIPES / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "RUNS", tmp_path)
    monkeypatch.setattr(mod, "machine", lambda: "test machine")
    return mod


def _run(common, monkeypatch, argv, rows_for, name="single"):
    p = argparse.ArgumentParser()
    common.add_args(p)
    p.add_argument("--density", type=float, default=0.05)
    args = p.parse_args(argv)
    monkeypatch.setattr(sys, "argv", ["exp_single.py", *argv])
    cfg = {"K": 16, "epochs": 2, "dict_epochs": 1, "t_start": 0.0,
           "splits": [(None, list(range(100)))]}
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


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1", "--first-seed", "1", "--lr", "0.1"], "other settings"),
    (["--seeds", "1", "--first-seed", "1", "--density", "0.1"], "other settings"),
    (["--seeds", "2", "--first-seed", "1"], "already has seeds [1]"),
])
def test_first_seed_refuses_what_does_not_match(common, monkeypatch, argv, message):
    _run(common, monkeypatch, ["--seeds", "2"], lambda s: 0.5)
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        _run(common, monkeypatch, argv, lambda s: 0.5)


def test_first_seed_needs_an_earlier_result(common, monkeypatch):
    with pytest.raises(SystemExit, match="no earlier result"):
        _run(common, monkeypatch, ["--first-seed", "3"], lambda s: 0.5)
