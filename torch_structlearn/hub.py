"""The hub: pretrained learned structures stored as folders, loaded by name.

Each entry is a folder ``<name>/`` holding ``structure.safetensors`` (the torch_structlearn
format) and ``card.json`` (data set, the command that produced it, density, depth, accuracy,
license of the data). Entries are searched in the folders of ``$STRUCTLEARN_HUB``
(``os.pathsep``-separated) and then in the repository's ``hub/`` folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from torch import nn

from .connectivity import Connectivity

__all__ = ["list", "load", "load_structure", "card", "folders", "check_name"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_REPO_HUB = Path(__file__).resolve().parent.parent / "hub"
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
    """Names of the available entries, sorted."""
    return sorted(_entries())


def check_name(name: str) -> str:
    """``name`` if it is a valid entry name (lower-case letters, digits, ``.``, ``_``, ``-``;
    no paths), else ``ValueError`` listing the available entries."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
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
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"hub entry {entry.name!r}: {path} is not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"hub entry {entry.name!r}: {path} must hold a JSON object, "
                         f"got {type(info).__name__}")
    return info


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
    """
    from .io import load as load_file

    entry = _entry(name)
    info = _read_card(entry)
    if "timm_model" not in info:
        return load_file(entry / "structure.safetensors", device=device)
    arch, kwargs = info["timm_model"], info.get("timm_kwargs", {})
    if not isinstance(arch, str) or not isinstance(kwargs, dict):
        raise ValueError(f"hub entry {name!r}: card.json's timm_model must be a string and "
                         f"timm_kwargs an object, got {arch!r} and {kwargs!r}")
    import timm

    from .convert import convert_structure

    model = timm.create_model(arch, pretrained=False, **kwargs)
    convert_structure(model, entry / "structure.safetensors", weights=False)
    return model.to(device) if device is not None else model


def load_structure(name: str) -> _list[Connectivity]:
    """Only the connectivity of each sparse layer of the entry, bottom-up."""
    from .io import load as load_file
    from .io import sparse_layers

    return [m.connectivity for m in sparse_layers(load_file(_entry(name) / "structure.safetensors"))]
