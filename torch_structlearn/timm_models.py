"""timm integration: hub entries and converted models as timm registry entries.

After :func:`register_hub` every hub entry ``name`` is a timm model
``structlearn_<name with '-' and '.' as '_'>``:
``timm.create_model('structlearn_mnist_single_d5', pretrained=True)`` returns the hub's trained
classifier (``pretrained=False``: the same architecture, freshly initialised).
:func:`register_converted` does the same for a timm model whose linear layers were converted
and saved with ``torch_structlearn.save(model, file)``, so tools that build models by name —
timm's own ``train.py`` included — can build the converted architecture.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import hub
from .convert import convert_structure

__all__ = ["register_hub", "register_converted", "timm_name"]


_TIMM_INTERNAL = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def timm_name(hub_name: str) -> str:
    """The timm model name of a hub entry: ``structlearn_`` + the name with ``-``/``.`` → ``_``."""
    return "structlearn_" + re.sub(r"[-.]", "_", hub_name)


def _register(name: str, build) -> None:
    from timm.models import register_model

    def entrypoint(pretrained: bool = False, **kwargs):
        for k in _TIMM_INTERNAL:  # create_model's own bookkeeping, not model arguments
            kwargs.pop(k, None)
        return build(pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    register_model(entrypoint)


def register_hub() -> list[str]:
    """Register every hub entry as a timm model; returns the timm names registered."""
    from timm.models import is_model

    names = []
    for entry in hub.list():
        tname = timm_name(entry)
        if not is_model(tname):
            def build(pretrained, entry=entry, **kwargs):
                if kwargs:
                    raise TypeError(f"{timm_name(entry)} takes no model kwargs, got {sorted(kwargs)}")
                model = hub.load(entry)
                if not pretrained:
                    for m in model.modules():
                        if hasattr(m, "reset_parameters") and m is not model:
                            m.reset_parameters()
                return model

            _register(tname, build)
        names.append(tname)
    return names


def register_converted(name: str, base: str, structure_file: str | os.PathLike, *,
                       weights: bool = True, **base_kwargs) -> str:
    """Register ``name`` as a timm model: ``base`` (a timm model name) with the converted layers
    of ``structure_file`` applied (:func:`torch_structlearn.convert_structure`; with the saved
    weights when ``weights`` and ``pretrained=True``). Returns ``name``."""
    import timm

    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ValueError(f"name must be a Python identifier (timm registers functions), got {name!r}")
    if not timm.is_model(base):
        raise ValueError(f"base {base!r} is not a timm model (timm.list_models() lists them)")
    if not Path(structure_file).is_file():
        raise FileNotFoundError(f"structure_file {str(structure_file)!r} does not exist")

    def build(pretrained, **kwargs):
        model = timm.create_model(base, pretrained=False, **{**base_kwargs, **kwargs})
        convert_structure(model, structure_file, weights=weights and pretrained)
        return model

    _register(name, build)
    return name
