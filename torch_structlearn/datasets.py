"""Data sets used by the demo and the recipes, read offline.

``digits`` ships inside this package (``_data/digits.csv.gz``, the copy scikit-learn ships); MNIST, Fashion-MNIST (torchvision layout) and CIFAR-10
(an image folder ``cifar10/`` or the lossy ``cifar10-jpeg/``) are read from ``root`` or
``$STRUCTLEARN_DATA`` (default ``~/.cache/torch_structlearn``). Nothing is downloaded.
Decoded CIFAR-10 tensors are cached in ``decoded/`` under the package's cache folder
(:func:`~torch_structlearn.filesystem.cache_dir`: ``$STRUCTLEARN_CACHE``, default
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

from .checks import choice, positive_int
from .filesystem import cache_dir
from .filesystem import write_atomic as _write_atomic
from .progress import tqdm

__all__ = ["ArrayData", "DATASETS", "ImageFiles", "data_root", "load_dataset", "open_data"]

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


# ---------------------------------------------------------------- a user's own data (--data)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm"})
ARRAY_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


class ArrayData(torch.utils.data.Dataset):
    """The examples of an ``(N, d)``, ``(N, H, W)`` or ``(N, C, H, W)`` array in a file, read
    as needed: ``.npy`` memory-mapped, ``.pt``/``.pth`` memory-mapped by ``torch.load(mmap=True,
    weights_only=True)``, ``.safetensors`` sliced from the file. Integer arrays (``uint8``
    images) are scaled to ``[0, 1]`` by their type's maximum; float arrays are read as they
    are. A file holding several arrays (a ``.pt`` dict, ``.safetensors``) needs ``key``.

    ``example_shape``: one example's shape (``(d,)`` or ``(C, H, W)``; ``(N, H, W)`` is read
    as one channel). ``__getitems__`` reads a batch of consecutive examples as one slice."""

    def __init__(self, path: str | os.PathLike, key: str | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in ARRAY_SUFFIXES:
            raise ValueError(f"--data {path}: expected a {', '.join(ARRAY_SUFFIXES)} file or an "
                             f"image folder")
        if not self.path.is_file():
            raise FileNotFoundError(f"--data {path}: no such file")
        try:
            self._array, names = _open_array(self.path, suffix, key)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
            raise ValueError(f"--data {path}: cannot read it as an array ({e})") from None
        shape = tuple(self._array.shape)
        if len(shape) not in (2, 3, 4) or min(shape) < 1:
            raise ValueError(f"--data {path}{names}: expected an (N, d), (N, H, W) or "
                             f"(N, C, H, W) array, got shape {shape}")
        self.example_shape = (1, *shape[1:]) if len(shape) == 3 else shape[1:]
        dtype = str(getattr(self._array, "dtype", ""))
        self._scale = _int_max(dtype)
        if self._scale is None and "float" not in dtype and "bfloat" not in dtype:
            raise ValueError(f"--data {path}: expected numbers, got dtype {dtype}")

    def __len__(self) -> int:
        return self._array.shape[0]

    def _rows(self, lo: int, hi: int) -> Tensor:
        rows = self._array[lo:hi]
        t = rows if isinstance(rows, Tensor) else torch.from_numpy(np.array(rows))  # (a copy)
        t = t.float() if self._scale is None else t.float() / self._scale
        return t.reshape(hi - lo, *self.example_shape)

    def __getitem__(self, i: int) -> Tensor:
        return self._rows(i, i + 1)[0]

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        lo = indices[0] if indices else 0
        if indices == list(range(lo, lo + len(indices))):  # a sequential batch: one slice
            return list(self._rows(lo, lo + len(indices)))
        return [self[i] for i in indices]


def _int_max(dtype: str) -> float | None:
    """The largest value of an integer dtype (numpy or torch spelling), None for floats."""
    name = dtype.removeprefix("torch.")
    return float(np.iinfo(name).max) if name.startswith(("uint", "int")) else None


def _open_array(path: Path, suffix: str, key: str | None):
    """The file's array (a numpy memmap, a memory-mapped tensor, or a safetensors slice) and a
    note naming the key read."""
    if suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False), ""
    if suffix == ".safetensors":
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        name = _pick_key(list(handle.keys()), key, path)
        return _Slice(handle.get_slice(name)), f" ['{name}']"
    obj = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    if isinstance(obj, Tensor):
        return obj, ""
    if isinstance(obj, dict):
        name = _pick_key([k for k, v in obj.items() if isinstance(v, Tensor)], key, path)
        return obj[name], f" ['{name}']"
    raise ValueError(f"holds a {type(obj).__name__}, not a tensor or a dict of tensors")


def read_array(path: str | os.PathLike, flag: str = "--data", key: str | None = None):
    """The whole array in a ``.npy``/``.pt``/``.safetensors`` file (``ValueError`` naming
    ``flag`` when it cannot be read)."""
    path = Path(path)
    if path.suffix.lower() not in ARRAY_SUFFIXES or not path.is_file():
        raise ValueError(f"{flag} {path}: expected an existing {', '.join(ARRAY_SUFFIXES)} file")
    try:
        array, _ = _open_array(path, path.suffix.lower(), key)
        return array[:]
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{flag} {path}: cannot read it as an array ({e})") from None


class _Slice:
    """A safetensors slice with an array's ``shape``/``dtype`` (rows read on indexing)."""

    def __init__(self, part) -> None:
        self.part, self.shape = part, tuple(part.get_shape())
        self.dtype = {"U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
                      "I32": "int32", "I64": "int64", "F16": "float16", "BF16": "bfloat16",
                      "F32": "float32", "F64": "float64"}.get(part.get_dtype(), part.get_dtype())

    def __getitem__(self, rows: slice) -> Tensor:
        return self.part[rows]


def _pick_key(names: list[str], key: str | None, path: Path) -> str:
    if key is not None:
        if key not in names:
            raise ValueError(f"--key {key!r} is not in {path} (it holds {names})")
        return key
    if len(names) != 1:
        raise ValueError(f"it holds {len(names)} arrays {names[:10]}: name one with --key")
    return names[0]


class ImageFiles(torch.utils.data.Dataset):
    """Every image under ``folder`` (any layout, sub-folders included, sorted by path; labels
    are not read), decoded when read, as ``(C, H, W)`` floats in ``[0, 1]``. All must have the
    first image's mode (channels) and size, unless ``size = (H, W)`` is given (then each is
    resized to it); an image that differs is an error naming it."""

    def __init__(self, folder: str | os.PathLike, size: tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"--data {folder}: no such folder")
        self.files = sorted(p for p in self.folder.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"--data {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                             "in it or its sub-folders")
        self.size = size
        first = self._read(self.files[0], check=False)
        self.example_shape = tuple(first.shape)

    def _read(self, path: Path, check: bool = True) -> Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import pil_to_tensor

        try:
            with Image.open(path) as img:
                img = img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                if self.size is not None:
                    img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                x = pil_to_tensor(img).float() / 255.0
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"--data: cannot read the image {path} ({e})") from None
        if check and tuple(x.shape) != self.example_shape:
            raise ValueError(f"--data: {path} has shape {tuple(x.shape)}, the first image "
                             f"{self.files[0]} {self.example_shape}; give --image-size H,W to "
                             "resize them all")
        return x

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        return self._read(self.files[i])


def open_data(path: str | os.PathLike, *, key: str | None = None,
              image_size: tuple[int, int] | None = None) -> torch.utils.data.Dataset:
    """A user's unlabelled examples, read as needed (data larger than memory works): an array
    file (:class:`ArrayData`) or an image folder (:class:`ImageFiles`). The dataset's
    ``example_shape`` is one example's shape."""
    p = Path(path)
    if p.is_dir():
        if key is not None:
            raise ValueError(f"--key is for array files; --data {path} is an image folder")
        return ImageFiles(p, image_size)
    if image_size is not None:
        raise ValueError(f"--image-size is for image folders; --data {path} is a file")
    return ArrayData(p, key)
