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
    assert "layer 0: 64 -> 32" in capsys.readouterr().out


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
    out = tmp_path / "conv.safetensors"
    rc = main(["convert", "resnet18", "--dataset", "digits", "--include", "fc", "--density", "0.5",
               "--limit", "64", "--out", str(out), "--quiet"])
    assert rc == 0
    layers = load(out)
    assert set(layers) == {"fc"} and abs(layers["fc"].density - 0.5) < 0.01
    assert out.with_suffix(".pt").exists()
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
    assert main(["convert", "resnet18", "--quiet", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; give a file path" in capsys.readouterr().err
    assert afile.read_text() == "x"
