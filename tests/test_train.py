"""The shared training loop: flip augmentation and argument checks."""

import numpy as np
import pytest
import torch
from torch import nn

from torch_structlearn.train import accuracy, fit_classifier


class Recorder(nn.Module):
    """A linear classifier that keeps every training batch it is given."""

    def __init__(self, d: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(d, n_classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def test_hflip_mirrors_about_half_of_the_examples_and_nothing_else():
    C, H, W = 2, 3, 5
    X = torch.randn(64, C * H * W)
    y = torch.randint(0, 3, (64,))
    model = Recorder(C * H * W, 3)
    fit_classifier(model, X, y, epochs=4, batch_size=16, hflip=(C, H, W), seed=1)
    images = X.numpy().reshape(-1, C, H, W)
    mirrored = images[..., ::-1].reshape(len(X), -1)  # numpy's mirror: the independent reference
    flips = total = 0
    for batch in model.seen:
        for row in batch.numpy():
            same = np.isclose(X.numpy(), row).all(1)
            mirror = np.isclose(mirrored, row).all(1)
            assert same.any() or mirror.any(), "a training example is neither itself nor its mirror"
            flips += int(mirror.any() and not same.any())
            total += 1
    assert total == 4 * 64
    assert 0.35 < flips / total < 0.65


def test_hflip_is_deterministic_for_a_seed_and_off_by_default():
    X, y = torch.randn(32, 12), torch.randint(0, 2, (32,))
    runs = []
    for hflip in ((1, 3, 4), (1, 3, 4), None):
        torch.manual_seed(0)
        m = Recorder(12, 2)
        fit_classifier(m, X, y, epochs=2, batch_size=8, hflip=hflip, seed=3)
        runs.append(torch.cat(m.seen))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert all(any(torch.equal(r, x) for x in X) for r in runs[2])  # None: rows as given


@pytest.mark.parametrize("kw, match", [
    ({"hflip": (3, 4, 4)}, "hflip=.*48 values per image, but each row of X has 12"),
    ({"hflip": (3, 4)}, "hflip must be an image shape"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0, got -0.0001"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number, got nan"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"seed": 0.5}, "seed must be an int, got float 0.5"),
    ({"y": torch.zeros(7, dtype=torch.long)}, r"X and y must have the same length, got X \(8, 12\) and y \(7,\)"),
])
def test_bad_arguments_are_named(kw, match):
    y = kw.pop("y", torch.zeros(8, dtype=torch.long))
    with pytest.raises((TypeError, ValueError), match=match):
        fit_classifier(Recorder(12, 2), torch.randn(8, 12), y, **kw)


def test_labels_must_be_integer_classes():
    X = torch.randn(8, 12)
    for fn in (fit_classifier, accuracy):
        with pytest.raises(TypeError, match="y must be a 1-D tensor of integer class labels, got torch.float32"):
            fn(Recorder(12, 2), X, torch.zeros(8))
    with pytest.raises(ValueError, match="X and y must have the same length"):
        accuracy(Recorder(12, 2), X, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("bad, match", [(-1, r"y must hold class indices >= 0, got -1 \(example 5\)"),
                                        (3, r"y holds class 3 \(example 5\), but the model gives 2 logits")])
def test_labels_outside_the_models_classes_are_refused_before_any_step(bad, match):
    # before: IndexError 'Target 3 is out of bounds.' from cross_entropy, naming neither y nor
    # the example; accuracy counted such labels as wrong answers
    X, y = torch.randn(8, 12), torch.arange(8) % 2
    y[5] = bad
    model = nn.Linear(12, 2)
    before = model.weight.detach().clone()
    for fn in (fit_classifier, accuracy):
        with pytest.raises(ValueError, match=match):
            fn(model, X, y)
    assert torch.equal(model.weight, before)


def test_non_finite_inputs_are_refused_before_training():
    X = torch.randn(8, 12)
    X[5, 3] = float("nan")
    model = nn.Linear(12, 2)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(first in example 5\)"):
        fit_classifier(model, X, torch.zeros(8, dtype=torch.long))
    assert torch.equal(model.weight, before)


def test_empty_data_is_a_clear_error():
    # before: ZeroDivisionError from the per-epoch mean loss and the accuracy's ratio
    for fn in (fit_classifier, accuracy):
        with pytest.raises(ValueError, match=r"X and y hold no examples \(X \(0, 12\), y \(0,\)\)"):
            fn(Recorder(12, 2), torch.randn(0, 12), torch.zeros(0, dtype=torch.long))


def test_verbose_shows_a_progress_bar_with_the_loss(capsys):
    losses = fit_classifier(nn.Linear(12, 2), torch.randn(16, 12), torch.arange(16) % 2, epochs=3,
                            batch_size=8, verbose=True)
    err = capsys.readouterr().err
    assert "training" in err and "3/3" in err and f"loss={losses[-1]:.4f}" in err
    fit_classifier(nn.Linear(12, 2), torch.randn(16, 12), torch.arange(16) % 2, epochs=3)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("training", [True, False])
def test_accuracy_evaluates_in_eval_mode_and_restores_the_mode(training):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return torch.stack([x[:, 0], -x[:, 0]], 1)

    model = Probe().train(training)
    X = torch.tensor([[1.0], [-1.0], [2.0]])
    assert accuracy(model, X, torch.tensor([0, 1, 1]), batch_size=2) == pytest.approx(2 / 3)
    assert seen == [False, False] and model.training is training
