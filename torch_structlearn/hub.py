"""The hub: pretrained learned structures stored as folders, loaded by name.

Each entry is a folder ``<name>/`` holding ``structure.safetensors`` (the torch_structlearn
format) and ``card.json`` (data set, the command that produced it, density, depth, accuracy,
license of the data). Entries are searched in the folders of ``$STRUCTLEARN_HUB``
(``os.pathsep``-separated) and then in the repository's ``hub/`` folder (installed with the
package, as ``torch_structlearn/_hub``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from torch import nn

from .connectivity import Connectivity
from .convert import convert_structure
from .io import load as load_file
from .io import sparse_layers

__all__ = ["list", "load", "load_structure", "card", "folders", "check_name", "scan",
           "HubEntryError"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_MAX_CARD = 1 << 20  # bytes
# What a card may pass to ``timm.create_model``: architecture sizes only, each bounded (no
# paths, checkpoints, pretrained downloads or registry prefixes such as ``hf-hub:``).
_TIMM_KWARGS: dict[str, tuple[type, float, float]] = {
    "num_classes": (int, 0, 100_000), "img_size": (int, 1, 4096), "patch_size": (int, 1, 1024),
    "in_chans": (int, 1, 64), "embed_dim": (int, 1, 16_384), "depth": (int, 1, 256),
    "num_heads": (int, 1, 256), "mlp_ratio": (float, 0.0, 64.0), "drop_rate": (float, 0.0, 1.0),
    "drop_path_rate": (float, 0.0, 1.0), "class_token": (bool, 0, 1), "qkv_bias": (bool, 0, 1),
}
_TIMM_ARCH = re.compile(r"[a-z0-9_]{1,100}")


class HubEntryError(ValueError):
    """A hub entry that cannot be used: an unreadable or invalid ``card.json``, or a card asking
    for something the hub does not allow."""


# an installed wheel holds the hub as package data (torch_structlearn/_hub); a checkout (or an
# editable install) reads the repository's hub/ folder
_INSTALLED_HUB = Path(__file__).resolve().parent / "_hub"
_REPO_HUB = _INSTALLED_HUB if _INSTALLED_HUB.is_dir() else Path(__file__).resolve().parent.parent / "hub"
_list = list


def folders() -> _list[Path]:
    """The folders searched, in order: ``$STRUCTLEARN_HUB`` entries, then the repo's ``hub/``."""
    extra = [Path(p) for p in os.environ.get("STRUCTLEARN_HUB", "").split(os.pathsep) if p]
    return [*extra, _REPO_HUB]


def _entries() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders():
        if not folder.is_dir():
            continue
        for d in sorted(folder.iterdir()):
            if (d / "structure.safetensors").is_file() and (d / "card.json").is_file():
                found.setdefault(d.name, d)  # earlier folders win
    return found


def list() -> _list[str]:  # noqa: A001 — the hub's verb, as in torch.hub.list
    """Names of the available entries (valid names only), sorted."""
    return sorted(n for n in _entries() if _valid_name(n))


def scan() -> _list[tuple[str, dict | None, str | None]]:
    """Every entry folder found, sorted by name: ``(name, card, None)`` for a usable entry,
    ``(name, None, problem)`` for one that is not (a bad name, an unreadable or invalid card).
    Nothing raises: what ``structlearn hub list`` prints."""
    out = []
    for name, entry in sorted(_entries().items()):
        try:
            check_name(name)
            out.append((name, _read_card(entry), None))
        except ValueError as e:
            out.append((name, None, str(e)))
    return out


def _valid_name(name) -> bool:
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and ".." not in name


def check_name(name: str) -> str:
    """``name`` if it is a valid entry name (lower-case letters, digits, ``.``, ``_``, ``-``;
    no paths), else ``ValueError`` listing the available entries."""
    if not _valid_name(name):
        raise ValueError(f"invalid hub name {name!r}: use lower-case letters, digits, '.', '_' "
                         f"and '-' (no paths); available: {list()}")
    return name


def _entry(name: str) -> Path:
    check_name(name)
    entries = _entries()
    if name not in entries:
        raise ValueError(f"no hub entry {name!r}; available: {sorted(entries)}")
    return entries[name]


def _read_card(entry: Path) -> dict:
    path = entry / "card.json"
    try:
        if not path.is_file() or path.stat().st_size > _MAX_CARD:
            raise HubEntryError(f"hub entry {entry.name!r}: {path} must be a regular file of at "
                                f"most {_MAX_CARD} bytes")
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HubEntryError(f"hub entry {entry.name!r}: {path} is not valid JSON "
                            f"({type(e).__name__}: {e})") from None
    except OSError as e:
        raise HubEntryError(f"hub entry {entry.name!r}: {path} cannot be read ({e})") from None
    if not isinstance(info, dict):
        raise HubEntryError(f"hub entry {entry.name!r}: {path} must hold a JSON object, "
                            f"got {type(info).__name__}")
    return info


def _timm_request(name: str, info: dict) -> tuple[str, dict]:
    """The card's ``timm_model`` and ``timm_kwargs``, checked: a plain registered timm
    architecture name (no ``hf-hub:``/``local-dir:`` prefix, no path) and only the
    architecture arguments of ``_TIMM_KWARGS``, each of its type and within its bounds."""
    import timm

    arch, kwargs = info["timm_model"], info.get("timm_kwargs", {})
    if not isinstance(arch, str) or not _TIMM_ARCH.fullmatch(arch) or not timm.is_model(arch):
        raise HubEntryError(f"hub entry {name!r}: timm_model must be the name of a timm "
                            f"architecture (timm.list_models()), got {arch!r:.200}")
    if not isinstance(kwargs, dict):
        raise HubEntryError(f"hub entry {name!r}: timm_kwargs must be an object, got "
                            f"{type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key not in _TIMM_KWARGS:
            raise HubEntryError(f"hub entry {name!r}: timm_kwargs may only set "
                                f"{sorted(_TIMM_KWARGS)}, got {key!r:.100}")
        typ, lo, hi = _TIMM_KWARGS[key]
        ok = isinstance(value, bool) if typ is bool else (
            isinstance(value, (int, float) if typ is float else int)
            and not isinstance(value, bool) and lo <= value <= hi)
        if not ok:
            raise HubEntryError(f"hub entry {name!r}: timm_kwargs[{key!r}] must be "
                                f"{typ.__name__} in [{lo}, {hi}], got {value!r:.100}")
    return arch, kwargs


def card(name: str) -> dict:
    """The entry's ``card.json`` as a dict."""
    return _read_card(_entry(name))


def load(name: str, *, device=None) -> nn.Module:
    """The entry's module, ready to train or evaluate.

    * A learned classifier: a ``StructLearnedClassifier`` taking ``ToTensor()`` images
      ``(N, C, H, W)`` in ``[0, 1]`` and returning logits, with its trained weights.
    * Structures learned for a timm model (the card names ``timm_model`` and ``timm_kwargs``):
      that timm model, freshly initialised, with its converted ``nn.Linear`` layers replaced by
      ``StructLearnedLinear`` layers of the learned connectivity (ready to train).
    * A converted *trained* timm model (the entry also holds ``weights.safetensors``, the
      weights of everything ``structure.safetensors`` does not hold): that model with its
      converted layers' weights and all other weights — what the card's ``one_shot_accuracy``
      was measured on.
    """

    entry = _entry(name)
    info = _read_card(entry)
    if "timm_model" not in info:
        return load_file(entry / "structure.safetensors", device=device)
    arch, kwargs = _timm_request(name, info)
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError, AssertionError, RuntimeError) as e:
        raise HubEntryError(f"hub entry {name!r}: timm could not build {arch!r} with "
                            f"{kwargs}: {type(e).__name__}: {e}") from None
    trained = (entry / "weights.safetensors").is_file()
    replaced = convert_structure(model, entry / "structure.safetensors", weights=trained)
    if trained:
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_tensors

        try:
            rest = load_tensors(entry / "weights.safetensors")
            missing, unexpected = model.load_state_dict(rest, strict=False)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise HubEntryError(f"hub entry {name!r}: weights.safetensors does not fit "
                                f"{arch!r}: {type(e).__name__}: {e}"[:2000]) from None
        missing = [k for k in missing if k.rpartition(".")[0] not in replaced]
        if missing or unexpected:
            raise HubEntryError(f"hub entry {name!r}: weights.safetensors lacks {missing[:5]} "
                                f"/ has unexpected {unexpected[:5]}")
    return model.to(device) if device is not None else model


def load_structure(name: str) -> _list[Connectivity]:
    """Only the connectivity of each sparse layer of the entry, bottom-up."""

    return [m.connectivity for m in sparse_layers(load_file(_entry(name) / "structure.safetensors"))]
