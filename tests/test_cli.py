import json

import pytest

from torch_structlearn import StructLearnedStack, load
from torch_structlearn.classifier import StructLearnedClassifier
from torch_structlearn.cli import main


@pytest.mark.parametrize("kernel", [None, 3])
def test_learn_demo_on_digits_writes_loadable_outputs(tmp_path, capsys, kernel):
    out = tmp_path / "demo"
    # the convolutional-whitening case also trains with the optional recipe (flips, weight decay)
    conv = ["--whitening-kernel", str(kernel), "--flip", "--weight-decay", "1e-3"] if kernel else []
    rc = main(["learn", "--out", str(out), "--width", "32", "--epochs", "3", "--dict-epochs", "2",
               "--max-depth", "2", "--quiet", *conv])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("learned", "random", "dense"):
        assert name in text
    model = load(out / "structure.safetensors")
    assert isinstance(model, StructLearnedClassifier) and isinstance(model.body, StructLearnedStack)
    assert model.body.in_features == 64 and model.input_shape == (1, 8, 8)
    assert model.whitening.kernel_size == kernel
    assert hasattr(model.whitening, "matrix") == (kernel is None)
    res0 = json.loads((out / "results.json").read_text())["results"][0]
    from torch_structlearn.datasets import load_dataset
    from torch_structlearn.train import accuracy

    X, y = load_dataset("digits", "test")
    assert accuracy(model, X, y) == pytest.approx(res0["test_accuracy"])  # the trained model
    assert (out / "receptive_fields.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert (res["args"]["flip"], res["args"]["weight_decay"]) == ((True, 1e-3) if kernel else (False, 0))
    assert {r["structure"] for r in res["results"]} == {"learned", "random", "dense"}
    assert all(0 <= r["test_accuracy"] <= 1 for r in res["results"])
    # inspect reads it back
    assert main(["inspect", str(out / "structure.safetensors")]) == 0
    assert "  body.layers.0.0: 64 -> 32" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("structlearn inspect: error:") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["learn", "--density", "-1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["learn", "--weight-decay", "-0.1"])
    assert e.value.code == 2 and "--weight-decay: must be >= 0, got '-0.1'" in capsys.readouterr().err
    for flag, value in (("--lr", "nan"), ("--eps", "inf"), ("--weight-decay", "inf")):
        with pytest.raises(SystemExit) as e:
            main(["learn", flag, value])
        assert e.value.code == 2 and f"{flag}: must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["learn", "--dataset", "imagenet"])
    assert e.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["learn", "--active-fraction", "1.5"])
    assert e.value.code == 2 and "--active-fraction: must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["learn", "--dataset", "mnist", "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "no " in capsys.readouterr().err
    out = tmp_path / "never"
    assert main(["learn", "--width", "130", "--group-size", "4", "--quiet", "--out", str(out)]) == 2
    assert "group_size=4 must divide width=130" in capsys.readouterr().err
    assert not out.exists()  # refused before any work or output


def test_inspect_png_hub_list_and_convert(tmp_path, capsys):
    assert main(["hub", "list"]) == 0
    assert "mnist-single-d5" in capsys.readouterr().out
    from torch_structlearn import hub

    png = tmp_path / "rf.png"
    path = hub.folders()[-1] / "mnist-single-d5" / "structure.safetensors"
    assert main(["inspect", str(path), "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", str(path), "--png", str(png), "--image-shape", "1,28,28"]) == 0
    for bad in ("28x28", "1,0,28", "28,28"):
        with pytest.raises(SystemExit) as e:
            main(["inspect", str(path), "--png", str(png), "--image-shape", bad])
        assert e.value.code == 2
        assert f"--image-shape: must be C,H,W positive integers, got '{bad}'" in \
            capsys.readouterr().err
    out = tmp_path / "conv"
    rc = main(["convert", "resnet18", "--dataset", "digits", "--include", "fc", "--density", "0.5",
               "--limit", "64", "--out", str(out), "--quiet"])
    assert rc == 0
    layers = load(out / "structures.safetensors")
    assert set(layers) == {"fc"} and abs(layers["fc"].density - 0.5) < 0.01
    assert (out / "weights.safetensors").exists()
    rc = main(["convert", "resnet18", "--dataset", "digits", "--include", "fc", "--density", "0.5",
               "--pattern", "2:4", "--method", "wanda", "--limit", "64", "--out", str(out),
               "--quiet"])
    assert rc == 0
    mask = load(out / "structures.safetensors")["fc"].connectivity.to_mask()
    assert bool((mask.reshape(mask.shape[0], -1, 4).sum(2) == 2).all())
    capsys.readouterr()
    assert main(["inspect", str(out / "structures.safetensors")]) == 0  # layers by module name
    assert "  fc: 512 -> 1" in capsys.readouterr().out
    assert main(["inspect", str(path), "--png", str(png), "--image-shape", "3,28,28"]) == 2
    captured = capsys.readouterr()  # refused before anything is printed
    assert captured.out == "" and "the first layer takes 784 inputs, not 2352" in captured.err
    assert main(["convert", "resnet18", "--include", "nothing", "--limit", "8", "--quiet",
                 "--out", str(out)]) == 2
    assert "no nn.Linear matches" in capsys.readouterr().err


def test_an_out_path_of_the_wrong_kind_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import torch_structlearn.datasets as datasets

    def no_data(*args, **kw):
        raise AssertionError("the data was loaded before --out was checked")

    monkeypatch.setattr(datasets, "load_dataset", no_data)
    afile = tmp_path / "taken"
    afile.write_text("x")
    assert main(["learn", "--quiet", "--out", str(afile)]) == 2
    assert f"--out {afile} is a file; give a folder" in capsys.readouterr().err
    assert main(["convert", "resnet18", "--quiet", "--out", str(afile)]) == 2
    assert f"--out {afile} is a file; give a folder" in capsys.readouterr().err
    assert afile.read_text() == "x"


# ---------------------------------------------------------------- your own data: --data


def _digits_arrays(tmp_path):
    """The packaged digits as a user's files: (N, 1, 8, 8) uint8 images and int labels."""
    import numpy as np
    import torch

    from torch_structlearn.datasets import load_dataset

    X, y = load_dataset("digits", "train")
    images = (X * 255).round().to(torch.uint8).numpy()
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", y.numpy())
    return images, y.numpy()


@pytest.mark.parametrize("fmt", ["npy", "pt", "safetensors", "folder", "flat"])
def test_learn_from_your_own_data_without_labels(tmp_path, capsys, fmt):
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from torch_structlearn import ZCAWhitening

    images, _ = _digits_arrays(tmp_path)
    data = tmp_path / "x.npy"
    if fmt == "pt":
        data = tmp_path / "x.pt"
        torch.save(torch.from_numpy(images), data)
    elif fmt == "safetensors":
        data = tmp_path / "x.safetensors"
        save_file({"pixels": torch.from_numpy(images)}, data)
    elif fmt == "flat":  # (N, d) feature vectors: no images, no receptive fields
        data = tmp_path / "f.npy"
        np.save(data, images.reshape(len(images), -1).astype(np.float32) / 255)
    elif fmt == "folder":
        from PIL import Image

        data = tmp_path / "imgs"
        for i, img in enumerate(images[:300]):
            (data / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(data / f"part{i % 3}" / f"{i}.png")
    out = tmp_path / "out"
    assert main(["learn", "--data", str(data), "--width", "32", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "test acc" not in text  # nothing trained
    stack = load(out / "structure.safetensors")
    assert isinstance(stack, StructLearnedStack) and stack.in_features == 64
    whiten = ZCAWhitening(64)
    whiten.load_state_dict(load_file(out / "whitening.safetensors"))
    assert whiten.fitted
    assert (out / "receptive_fields.png").exists() == (fmt != "flat")
    assert json.loads((out / "results.json").read_text())["results"] == []


def test_learn_from_your_own_data_with_labels_trains_and_compares(tmp_path, capsys):
    _digits_arrays(tmp_path)
    out = tmp_path / "out"
    assert main(["learn", "--data", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--width", "32", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    assert "test acc" in capsys.readouterr().out
    assert isinstance(load(out / "structure.safetensors"), StructLearnedClassifier)
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["structure"] for r in rows] == ["learned", "random", "dense"]


def test_npy_data_is_memory_mapped():
    import tempfile

    import numpy as np

    from torch_structlearn.datasets import open_data
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/x.npy", np.zeros((1000, 64), np.float32))
        ds = open_data(f"{d}/x.npy")
        assert isinstance(ds._array, np.memmap) and len(ds) == 1000 and ds.example_shape == (64,)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "3"], "--epochs: train the structure, which needs labels"),
    (["--data-root", "x"], "--data-root: only apply to a named --dataset"),
    (["--test-fraction", "0.2"], "--test-fraction: only applies with --data and --labels"),
])
def test_options_that_would_be_ignored_are_refused(tmp_path, capsys, argv, message):
    _digits_arrays(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["learn", "--data", str(tmp_path / "x.npy"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["learn", "--labels", str(tmp_path / "y.npy")])  # a named data set has its labels
    assert e.value.code == 2 and "--labels: only apply with --data" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("text", "expected a .npy"), ("1d", "expected an (N, d)"),
    ("labels_short", "expected 1437 non-negative integer class labels"),
    ("empty_folder", "no images"), ("key_on_folder", "--key is for array files"),
])
def test_bad_data_is_one_line_before_any_work(tmp_path, capsys, case, message):
    import numpy as np

    _digits_arrays(tmp_path)
    args = ["--data", str(tmp_path / "x.npy")]
    if case == "missing":
        args = ["--data", str(tmp_path / "nope.npy")]
    elif case == "text":
        (tmp_path / "x.txt").write_text("1 2 3")
        args = ["--data", str(tmp_path / "x.txt")]
    elif case == "1d":
        np.save(tmp_path / "v.npy", np.zeros(5))
        args = ["--data", str(tmp_path / "v.npy")]
    elif case == "labels_short":
        np.save(tmp_path / "y2.npy", np.zeros(10, np.int64))
        args += ["--labels", str(tmp_path / "y2.npy")]
    elif case in ("empty_folder", "key_on_folder"):
        (tmp_path / "empty").mkdir()
        args = ["--data", str(tmp_path / "empty")] + (["--key", "x"] if case == "key_on_folder" else [])
    out = tmp_path / "out"
    assert main(["learn", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("structlearn learn: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_every_option_of_every_command_has_help_and_shows_its_default(capsys):
    import argparse

    from torch_structlearn.bench import TOOLS, _parser

    def actions(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from actions(sp, [*path, name])
            elif not isinstance(a, argparse._HelpAction):
                yield " ".join(path), a, p

    with pytest.raises(SystemExit):  # the main parser is built inside main(): read its help
        main(["learn", "--help"])
    assert "(default: 0.25)" in capsys.readouterr().out
    for command in ("inspect", "convert"):  # (hub has only a positional action)
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "default:" in capsys.readouterr().out
    parsers = [(_parser(), ["bench"])] + [(tool.parser(), ["bench", name])
                                          for name, tool in TOOLS.items()]
    for parser, root in parsers:
        for path, a, p in actions(parser, root):
            assert a.help, f"{path} {a.option_strings}: no help text"
            if path != "bench" and a.option_strings:
                assert p.formatter_class is argparse.ArgumentDefaultsHelpFormatter, path


def test_bench_options_before_the_subcommand_are_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--shapes", "64,784,512", "infer"])
    assert e.value.code == 2 and "options go after the subcommand" in capsys.readouterr().err


# ---------------------------------------------------------------- your own model: convert


MODELS_PY = """
import torch
from torch import nn
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
"""


def test_convert_your_own_model_from_a_factory_and_checkpoint(tmp_path, monkeypatch, capsys):
    import sys

    import torch
    from safetensors.torch import load_file

    from torch_structlearn import convert_structure

    (tmp_path / "my_models.py").write_text(MODELS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_models", None)
    import my_models

    trained = my_models.mlp()
    with torch.no_grad():
        trained[1].weight.mul_(3)  # "trained" weights, not the factory's
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    _digits_arrays(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", "my_models:mlp", "--checkpoint", str(tmp_path / "ckpt.pt"),
                 "--data", str(tmp_path / "x.npy"), "--density", "0.5", "--limit", "100",
                 "--out", str(out), "--quiet"]) == 0
    # the documented way back: the factory, the structures, then the weights
    model = my_models.mlp()
    assert convert_structure(model, out / "structures.safetensors", weights=False) == ["1", "3"]
    model.load_state_dict(load_file(out / "weights.safetensors"))
    kept = model[1].csr_values().detach()
    dense_at_mask = trained[1].weight.detach()[model[1].dense_weight().detach() != 0]
    assert model[1].density == 0.5 and kept.abs().mean() > 0
    assert (dense_at_mask.abs().mean() / kept.abs().mean() - 1).abs() < 0.5  # ~ the trained scale
    # a saved module needs --trust-pickle
    torch.save(trained, tmp_path / "whole.pt")
    assert main(["convert", str(tmp_path / "whole.pt"), "--data", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "whole.pt"), "--trust-pickle", "--data",
                 str(tmp_path / "x.npy"), "--limit", "64", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert set(load(tmp_path / "o2" / "structures.safetensors")) == {"1", "3"}


def test_convert_out_file_spelling_is_deprecated_but_works(tmp_path):
    out = tmp_path / "conv.safetensors"
    with pytest.warns(FutureWarning, match="--out is a folder"):
        assert main(["convert", "resnet18", "--include", "fc", "--limit", "16", "--out", str(out),
                     "--quiet"]) == 0
    assert set(load(out)) == {"fc"} and out.with_suffix(".pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["no_such_module:f"], "cannot import"),
    (["resnet18", "--key", "x"], "--key and --image-size only apply with --data"),
    (["not_a_timm_model"], "not a timm model name"),
    (["resnet18", "--method", "wanda", "--init", "random"], "--init random is for --method "
                                                             "dictionary"),
    (["resnet18", "--method", "dictionary", "--sequential"], "--sequential is for the pruning"),
    (["resnet18", "--pattern", "2-4"], "pattern must be None, 'n:m'"),
])
def test_convert_bad_model_or_options_are_one_line(tmp_path, capsys, argv, message):
    assert main(["convert", *argv, "--limit", "8", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_progress_in_a_log_is_plain_lines(tmp_path):
    """Not on a terminal (a pipe, CI): progress as whole lines, no carriage returns or cursor
    moves from nested bars."""
    import subprocess
    import sys

    _digits_arrays(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "torch_structlearn.cli", "learn", "--data",
                           str(tmp_path / "x.npy"), "--width", "16", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layers" in proc.stderr and "dictionary" in proc.stderr  # the bars' lines
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    # a bar's first and finished states (and one per 30 s), not one line per refresh
    assert len(proc.stderr.splitlines()) <= 12, proc.stderr
