"""StructLearnedClassifier: whitening → stack → head, against the same modules called by hand."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torch_structlearn import StructLearnedClassifier, StructLearnedStack, ZCAWhitening


def _parts(d=12, width=8):
    torch.manual_seed(0)
    X = torch.rand(64, d)
    whiten = ZCAWhitening(d).fit(DataLoader(TensorDataset(X), batch_size=16))
    body = StructLearnedStack(d, width, max_depth=2, density=0.5, group_size=2)
    return whiten, body, X


def test_forward_is_head_of_body_of_whitening_for_images_and_flat_rows():
    whiten, body, X = _parts()
    model = StructLearnedClassifier(whiten, body, 3, (3, 2, 2))
    images = X[:5].reshape(5, 3, 2, 2)
    expected = model.head(body(whiten(X[:5])))
    assert model(images).shape == (5, 3)
    torch.testing.assert_close(model(images), expected)
    torch.testing.assert_close(model(X[:5]), expected)
    assert "input_shape=(3, 2, 2), num_classes=3" in repr(model)


def test_an_empty_batch_gives_empty_logits_as_nn_linear_does():
    whiten, body, _ = _parts()
    model = StructLearnedClassifier(whiten, body, 3, (3, 2, 2))
    for empty in (torch.zeros(0, 3, 2, 2), torch.zeros(0, 12)):
        assert model(empty).shape == (0, 3)  # reshape(0, -1) used to fail here
    with pytest.raises(ValueError, match=r"x must be \(N, d\) or \(N, C, H, W\), got shape \(12,\)"):
        whiten(torch.zeros(12))


@pytest.mark.parametrize("kw, error, match", [
    ({"input_shape": (1, 3, 3)}, ValueError, "input_shape \\(1, 3, 3\\) has 9 features; whitening has 12"),
    ({"input_shape": (3, -2, -2)}, ValueError, "input_shape must be a non-empty tuple of positive ints, got \\(3, -2, -2\\)"),
    ({"input_shape": ()}, ValueError, "input_shape must be a non-empty tuple of positive ints, got \\(\\)"),
    ({"input_shape": 12}, ValueError, "input_shape must be a non-empty tuple of positive ints, got 12"),
    ({"num_classes": 0}, ValueError, "num_classes must be >= 1, got 0"),
    ({"num_classes": 2.0}, TypeError, "num_classes must be an int"),
    ({"whitening": "zca"}, TypeError, "whitening must be a ZCAWhitening, got str"),
    ({"body": torch.nn.Linear(12, 8)}, TypeError, "body must be a StructLearnedStack, got Linear"),
])
def test_bad_arguments_are_named(kw, error, match):
    whiten, body, _ = _parts()
    args = {"whitening": whiten, "body": body, "num_classes": 3, "input_shape": (3, 2, 2)} | kw
    with pytest.raises(error, match=match):
        StructLearnedClassifier(**args)
