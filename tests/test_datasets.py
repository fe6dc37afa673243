"""Offline data sets: the CIFAR-10 image-folder reader and its decoded-tensor cache."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from torch_structlearn.datasets import load_dataset


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A tiny lossless ``cifar10/train`` folder (2 classes × 3 random 4×4 RGB images) and an
    empty cache folder; returns the root and the images each class folder holds."""
    rng = np.random.default_rng(0)
    images = {}
    for c in ("cat", "dog"):
        (tmp_path / "data" / "cifar10" / "train" / c).mkdir(parents=True)
        images[c] = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
        for i, a in enumerate(images[c]):
            Image.fromarray(a).save(tmp_path / "data" / "cifar10" / "train" / c / f"{i}.png")
    monkeypatch.setenv("STRUCTLEARN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data", images


def _expected(images):
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for c in ("cat", "dog") for a in images[c]])
    return x.float() / 255.0, torch.tensor([0, 0, 0, 1, 1, 1])


def test_cifar_folder_is_decoded_then_read_from_the_cache(cifar_root, capsys):
    root, images = cifar_root
    X, y = load_dataset("cifar10", "train", root=root)
    torch.testing.assert_close((X, y), _expected(images))
    assert "decoding cifar10/train" in capsys.readouterr().err  # a progress bar while decoding
    caches = list((root.parent / "cache" / "decoded").iterdir())
    assert [p.suffix for p in caches] == [".pt"]  # one complete file, no temp file left
    for p in (root / "cifar10" / "train" / "cat").iterdir():
        p.write_bytes(b"")  # unreadable images: only the cache can answer now
    torch.testing.assert_close(load_dataset("cifar10", "train", root=root), (X, y))
    assert "decoding" not in capsys.readouterr().err  # read from the cache, nothing decoded


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a torch file"])
def test_a_corrupted_cache_warns_and_is_rebuilt(cifar_root, damage):
    root, images = cifar_root
    expected = load_dataset("cifar10", "train", root=root)
    (cache,) = (root.parent / "cache" / "decoded").iterdir()
    cache.write_bytes(damage(cache.read_bytes()))
    with pytest.warns(UserWarning, match="ignoring the unreadable decoded-image cache"):
        torch.testing.assert_close(load_dataset("cifar10", "train", root=root), expected)
    torch.testing.assert_close(load_dataset("cifar10", "train", root=root), expected)  # rebuilt


def test_a_cache_holding_something_else_is_not_trusted(cifar_root):
    root, images = cifar_root
    expected = load_dataset("cifar10", "train", root=root)
    (cache,) = (root.parent / "cache" / "decoded").iterdir()
    torch.save({"x": torch.zeros(6, 3, 4, 4), "y": torch.zeros(6, dtype=torch.long)}, cache)  # float
    with pytest.warns(UserWarning, match="not a pair of uint8"):
        torch.testing.assert_close(load_dataset("cifar10", "train", root=root), expected)


def test_limit_keeps_a_fixed_subset_and_is_checked(cifar_root):
    root, _ = cifar_root
    X, y = load_dataset("cifar10", "train", root=root)
    Xs, ys = load_dataset("cifar10", "train", root=root, limit=4)
    assert len(ys) == 4 and all(any(torch.equal(r, x) for x in X) for r in Xs)
    torch.testing.assert_close(load_dataset("cifar10", "train", root=root, limit=4), (Xs, ys))
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        load_dataset("cifar10", "train", root=root, limit=0)


def test_missing_data_names_the_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10: no .*cifar10/test or .*cifar10-jpeg/test"):
        load_dataset("cifar10", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="mnist: no .*MNIST/raw"):
        load_dataset("mnist", "train", root=tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("svhn")


def test_a_new_copy_of_the_folder_replaces_its_stale_cache(cifar_root):
    root, images = cifar_root
    load_dataset("cifar10", "train", root=root)
    (old,) = (root.parent / "cache" / "decoded").iterdir()
    (root / "cifar10" / "train" / "bird").mkdir()  # the folder changes: a new mtime
    Image.fromarray(images["cat"][0]).save(root / "cifar10" / "train" / "bird" / "0.png")
    folder = root / "cifar10" / "train"
    t = folder.stat().st_mtime_ns + 10**9  # a later mtime even on a coarse-clocked file system
    os.utime(folder, ns=(t, t))
    X, y = load_dataset("cifar10", "train", root=root)
    assert y.bincount().tolist() == [1, 3, 3]  # bird, cat, dog: decoded again
    (new,) = (root.parent / "cache" / "decoded").iterdir()
    assert new != old


def test_shipped_digits_are_scikit_learns_digits():
    """The default data set ships inside the package (no scikit-learn needed to run the demo);
    it is exactly scikit-learn's copy."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    import torch

    from torch_structlearn.datasets import load_dataset

    d = sklearn_datasets.load_digits()
    X = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    Xtr, ytr = load_dataset("digits", "train")
    Xte, yte = load_dataset("digits", "test")
    cut = int(0.8 * len(y))
    assert torch.equal(Xtr, X[perm[:cut]]) and torch.equal(ytr, y[perm[:cut]])
    assert torch.equal(Xte, X[perm[cut:]]) and torch.equal(yte, y[perm[cut:]])
