import json
import math
import subprocess
import sys

import pytest
import torch

import torch_structlearn as tsl
from torch_structlearn import hub
from torch_structlearn.classifier import StructLearnedClassifier

from .conftest import require_data


def test_shipped_entries_load_and_match_their_cards():
    names = hub.list()
    assert "mnist-single-d5" in names
    for name in names:
        entry = hub.folders()[-1] / name
        assert (entry / "structure.safetensors").stat().st_size < 5 * 2**20
        card = hub.card(name)
        for key in ("dataset", "command", "density", "depth", "test_accuracy", "data_license"):
            assert key in card, (name, key)
        conns = hub.load_structure(name)
        if "timm_model" in card:  # structures learned for a timm model's nn.Linear layers
            _check_timm_entry(name, card, conns)
            continue
        model = hub.load(name)
        assert isinstance(model, StructLearnedClassifier)
        assert model.body.depth == card["depth"]
        assert abs(model.body.density - card["density"]) < 1e-9
        d = math.prod(card["input_shape"])
        assert len(conns) == card["depth"] and conns[0].shape == (card["width"], d)
        x = torch.rand(2, *model.input_shape)
        assert model(x).shape == (2, 10)


def _check_timm_entry(name, card, conns):
    import timm

    from torch_structlearn.convert import select_linears

    model = hub.load(name)
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, tsl.StructLearnedLinear)}
    fresh = timm.create_model(card["timm_model"], **card["timm_kwargs"])
    assert list(sparse) == select_linears(fresh, card["include"])
    assert [m.connectivity for m in sparse.values()] == conns
    for c in conns:
        assert abs(c.density - card["density"]) < 0.01
    size = card["timm_kwargs"].get("img_size", 224)
    assert model(torch.rand(2, 3, size, size)).shape == (2, card["timm_kwargs"]["num_classes"])


def test_timm_entry_loads_as_the_model_with_learned_structures(tmp_path, monkeypatch):
    import timm

    kw = {"img_size": 32, "patch_size": 8, "num_classes": 10, "depth": 2}
    model = timm.create_model("vit_tiny_patch16_224", **kw)
    x = torch.rand(64, 3, 32, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)
    tsl.convert(model, loader, density=0.25, include="blocks.*.mlp.fc*", verbose=False)
    entry = tmp_path / "vit-test"
    tsl.save(model, entry / "structure.safetensors")
    card = {"dataset": "none", "command": "-", "density": 0.25, "depth": None,
            "test_accuracy": 0.0, "data_license": "-", "timm_model": "vit_tiny_patch16_224",
            "timm_kwargs": kw, "include": "blocks.*.mlp.fc*"}
    (entry / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    _check_timm_entry("vit-test", card, hub.load_structure("vit-test"))
    loaded = hub.load("vit-test")  # structure only: the values are freshly initialised
    saved = model.blocks[0].mlp.fc1
    assert loaded.blocks[0].mlp.fc1.connectivity == saved.connectivity
    assert not torch.equal(loaded.blocks[0].mlp.fc1.values, saved.values)


@pytest.mark.parametrize("name, folder", [("mnist-single-d5", "MNIST"),
                                          ("mnist-stack4-d5", "MNIST"),
                                          ("fashion-mnist-stack-d5", "FashionMNIST"),
                                          ("cifar10-single-d5", "cifar10-jpeg")])
def test_entry_accuracy_matches_card(name, folder):
    from torch_structlearn.datasets import load_dataset
    from torch_structlearn.train import accuracy

    require_data(folder)
    card = hub.card(name)
    X, y = load_dataset(card["dataset"], "test")
    assert accuracy(hub.load(name), X, y) == pytest.approx(card["test_accuracy"])


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "UPPER", ".hidden", "x" * 200, 3])
def test_names_are_validated(bad):
    with pytest.raises(ValueError, match="invalid hub name|available"):
        hub.load(bad)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="mnist-single-d5"):
        hub.load("no-such-entry")


def test_extra_folder_from_env(tmp_path, monkeypatch):
    entry = tmp_path / "my-layer"
    entry.mkdir()
    layer = tsl.StructLearnedLinear(6, 4, density=0.5)
    tsl.save(layer, entry / "structure.safetensors")
    (entry / "card.json").write_text(json.dumps({"dataset": "none"}))
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    assert "my-layer" in hub.list()
    assert hub.load_structure("my-layer") == [layer.connectivity]
    assert torch.equal(hub.load("my-layer").values, layer.values)


@pytest.mark.parametrize("text, match", [('{"dataset": ', "is not valid JSON"),
                                         (b"\xff\xfe{}", "is not valid JSON"),
                                         ("[1, 2]", "must hold a JSON object, got list")])
def test_corrupted_card_is_a_clear_error(tmp_path, monkeypatch, text, match):
    entry = tmp_path / "broken"
    entry.mkdir()
    tsl.save(tsl.StructLearnedLinear(6, 4, density=0.5), entry / "structure.safetensors")
    card_path = entry / "card.json"
    card_path.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    for call in (hub.card, hub.load):
        with pytest.raises(ValueError, match=f"hub entry 'broken': .*card.json {match}"):
            call("broken")


@pytest.mark.parametrize("card", [{"timm_model": 3}, {"timm_model": "resnet18", "timm_kwargs": [10]}])
def test_card_with_a_bad_timm_model_is_a_clear_error(tmp_path, monkeypatch, card):
    entry = tmp_path / "bad-timm"
    entry.mkdir()
    tsl.save(tsl.StructLearnedLinear(6, 4, density=0.5), entry / "structure.safetensors")
    (entry / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path))
    with pytest.raises(ValueError, match="hub entry 'bad-timm': timm_(model|kwargs) must be"):
        hub.load("bad-timm")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "UPPER"])
def test_publishing_recipes_reject_bad_names_before_work(bad, tmp_path, capsys, load_recipe):
    for script, argv in (("hub_entry.py", [bad, "--license", "x", "--", "--dataset", "digits"]),
                         ("finetune_timm.py", ["--quick", "--hub", bad, "--hub-root", str(tmp_path)])):
        mod = load_recipe(script)
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2 and "invalid hub name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_hub_entry_recipe_publishes_a_loadable_entry_with_its_card(tmp_path, monkeypatch, load_recipe):
    import shlex

    from torch_structlearn.datasets import load_dataset
    from torch_structlearn.train import accuracy

    mod = load_recipe("hub_entry.py")
    root = tmp_path / "hub"
    argv = ["digits-single", "--license", "BSD-3-Clause", "--hub-root", str(root), "--",
            "--dataset", "digits", "--width", "32", "--epochs", "2", "--dict-epochs", "1"]
    assert mod.main(argv) == 0
    assert sorted(p.name for p in (root / "digits-single").iterdir()) == ["card.json",
                                                                          "structure.safetensors"]
    card = json.loads((root / "digits-single" / "card.json").read_text())
    results = json.loads((tmp_path / "runs" / "hub" / "digits-single" / "results.json").read_text())
    rows = {r["structure"]: r["test_accuracy"] for r in results["results"]}
    assert card["command"] == "python recipes/hub_entry.py " + shlex.join(argv)
    assert (card["dataset"], card["width"], card["depth"], card["data_license"]) == ("digits", 32, 1,
                                                                                    "BSD-3-Clause")
    assert card["test_accuracy"] == rows["learned"]
    assert card["baselines_same_recipe"] == {"random": rows["random"], "dense": rows["dense"]}
    assert "threads" in card["hardware"] and "torch" in card["hardware"]  # the machine it ran on
    monkeypatch.setenv("STRUCTLEARN_HUB", str(root))
    X, y = load_dataset("digits", "test")
    assert accuracy(hub.load("digits-single"), X, y) == pytest.approx(card["test_accuracy"])


def test_hub_is_reachable_from_the_package():
    # a fresh interpreter: here the import above has already set the attribute
    code = "import torch_structlearn as tsl; print(tsl.hub.list())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "mnist-single-d5" in out.stdout


def test_converted_trained_entry_reproduces_its_one_shot_accuracy():
    """The shipped converted trained ViT (all weights in the entry) gives the one-shot CIFAR-10
    test accuracy its card states."""
    from torch_structlearn.datasets import load_dataset
    from torch_structlearn.train import accuracy

    name = "vit-tiny-cifar10-refit-d10"
    if name not in hub.list():
        pytest.skip(f"{name} is not in this checkout's hub")
    require_data("cifar10-jpeg")
    card = hub.card(name)
    model = hub.load(name).eval()
    X, y = load_dataset("cifar10", "test")
    # within 3 of 10 000 images: another machine or backend sums in another order
    assert accuracy(model, X, y) == pytest.approx(card["one_shot_accuracy"], abs=3e-4)
