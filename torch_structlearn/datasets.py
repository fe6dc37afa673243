"""Data sets used by the demo and the recipes, read offline.

``digits`` ships inside this package (``_data/digits.csv.gz``, the copy scikit-learn ships); MNIST, Fashion-MNIST (torchvision layout) and CIFAR-10
(an image folder ``cifar10/`` or the lossy ``cifar10-jpeg/``) are read from ``root`` or
``$STRUCTLEARN_DATA`` (default ``~/.cache/torch_structlearn``). Nothing is downloaded.
Decoded CIFAR-10 tensors are cached in ``decoded/`` under the package's cache folder
(:func:`~torch_structlearn.files.cache_dir`: ``$STRUCTLEARN_CACHE``, default
``~/.cache/torch_structlearn``) so later runs start fast; the data folder itself may be
read-only.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import choice, positive_int
from .files import cache_dir
from .files import write_atomic as _write_atomic

__all__ = ["DATASETS", "data_root", "load_dataset"]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$STRUCTLEARN_DATA``, else ``~/.cache/torch_structlearn``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("STRUCTLEARN_DATA")
    return Path(env) if env else Path.home() / ".cache" / "torch_structlearn"


DIGITS_FILE = Path(__file__).resolve().parent / "_data" / "digits.csv.gz"


def _digits(split: str) -> tuple[Tensor, Tensor]:
    """The 8x8 digits (UCI, CC BY 4.0; the copy scikit-learn ships, in ``_data/``): 80 % / 20 %
    of a fixed permutation as train / test."""
    rows = np.loadtxt(DIGITS_FILE, delimiter=",", dtype=np.float32)
    X = torch.from_numpy(rows[:, :-1].copy()).reshape(-1, 1, 8, 8) / 16.0
    y = torch.from_numpy(rows[:, -1].astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return X[idx], y[idx]


def _torchvision(name: str, root: Path, split: str) -> tuple[Tensor, Tensor]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    folder = root / cls.__name__ / "raw"
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: no {folder} (set --data-root or STRUCTLEARN_DATA)")
    ds = cls(str(root), train=split == "train", download=False)
    return ds.data.unsqueeze(1).float() / 255.0, ds.targets.long()


def _cifar10(root: Path, split: str) -> tuple[Tensor, Tensor]:
    from torchvision import datasets, transforms

    for sub in ("cifar10", "cifar10-jpeg"):  # prefer a lossless copy when present
        folder = root / sub / split
        if folder.is_dir():
            break
    else:
        raise FileNotFoundError(f"cifar10: no {root}/cifar10/{split} or {root}/cifar10-jpeg/{split}")
    # keyed by the folder's mtime: a copy made again (new mtime) is decoded again
    cache = cache_dir() / "decoded" / f"{sub}-{split}-{folder.stat().st_mtime_ns}.pt"
    if cache.exists():
        blob = _read_cache(cache)
        if blob is not None:
            return blob[0].float() / 255.0, blob[1]
    from tqdm.auto import tqdm

    ds = datasets.ImageFolder(str(folder), transform=transforms.PILToTensor())
    xs = torch.stack([ds[i][0] for i in tqdm(range(len(ds)), desc=f"decoding {sub}/{split}",
                                             unit="image", mininterval=1.0)])
    ys = torch.tensor(ds.targets, dtype=torch.long)
    buf = io.BytesIO()
    torch.save({"x": xs, "y": ys}, buf)
    try:
        _write_atomic(cache, buf.getvalue())
        for stale in cache.parent.glob(f"{sub}-{split}-*.pt"):  # earlier versions of the folder
            if stale != cache:
                stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache folder: just do not cache
    return xs.float() / 255.0, ys


def _read_cache(cache: Path) -> tuple[Tensor, Tensor] | None:
    """The decoded ``(uint8 images, labels)`` in ``cache``, or ``None`` (with a warning) when
    the file is unreadable or not such a pair — the caller then decodes the folder again."""
    try:
        blob = torch.load(cache, weights_only=True)
        x, y = blob["x"], blob["y"]
        if (not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dtype != torch.uint8
                or x.dim() != 4 or y.shape != (len(x),)):
            raise ValueError("not a pair of uint8 (N, C, H, W) images and (N,) labels")
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError,
            ValueError) as e:
        warnings.warn(f"ignoring the unreadable decoded-image cache {cache} ({e}); decoding the "
                      f"image folder again", stacklevel=3)
        return None
    return x, y


def load_dataset(name: str, split: str = "train", root=None, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """``(X, y)`` with ``X (N, C, H, W)`` in ``[0, 1]`` and integer labels ``y (N,)``.

    ``limit`` keeps a fixed random subset of ``limit`` examples (seed 0, in data-set order;
    for quick runs) — not the first ones, which in class-sorted folders (CIFAR-10) would be a
    few classes only.
    """
    choice("dataset", name, DATASETS)
    choice("split", split, ("train", "test"))
    if limit is not None:
        positive_int("limit", limit)
    if name == "digits":
        X, y = _digits(split)
    elif name == "cifar10":
        X, y = _cifar10(data_root(root), split)
    else:
        X, y = _torchvision(name, data_root(root), split)
    if limit is not None and limit < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        X, y = X[keep], y[keep]
    return X, y
