import json
import math
import os

import pytest
import torch

import torch_structlearn as tsl
from torch_structlearn import hub
from torch_structlearn.classifier import StructLearnedClassifier


def test_shipped_entries_load_and_match_their_cards():
    names = hub.list()
    assert "mnist-single-d5" in names
    for name in names:
        entry = hub.folders()[-1] / name
        assert (entry / "structure.safetensors").stat().st_size < 5 * 2**20
        card = hub.card(name)
        for key in ("dataset", "command", "density", "depth", "test_accuracy", "data_license"):
            assert key in card, (name, key)
        model = hub.load(name)
        assert isinstance(model, StructLearnedClassifier)
        assert model.body.depth == card["depth"]
        assert abs(model.body.density - card["density"]) < 1e-9
        conns = hub.load_structure(name)
        d = math.prod(card["input_shape"])
        assert len(conns) == card["depth"] and conns[0].shape == (card["width"], d)
        x = torch.rand(2, *model.input_shape)
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name, folder", [("mnist-single-d5", "MNIST"),
                                          ("cifar10-single-d5", "cifar10-jpeg")])
def test_entry_accuracy_matches_card(name, folder):
    from torch_structlearn.datasets import data_root, load_dataset
    from torch_structlearn.train import accuracy

    if not (data_root() / folder).is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{folder} not found under {data_root()}")
        pytest.skip(f"{folder} not found (set STRUCTLEARN_DATA)")
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
