"""Structure learning (docs/algorithm.md): loader → group sparse coding → connectivity.

:func:`learn_structure` learns one layer's connectivity from its inputs; the depth loop lives in
:meth:`torch_structlearn.StructLearnedStack.learn_structure`, which calls it layer by layer.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import block as check_block
from .checks import choice, fraction, penalty, positive_int
from .checks import density as check_density
from .coding import DictionaryLearner
from .connectivity import Connectivity
from .loaders import batches, require_reiterable

__all__ = ["learn_layer", "learn_structure", "read_layer", "learner_for", "LayerInit",
           "dictionary_values", "LayerReport", "format_report"]

INIT_ROW_NORM = 1 / math.sqrt(3)  # the expected row norm of nn.Linear's Kaiming-uniform init


def check_learning_args(*, width: int, density: float, group_size: int, lam1, lam_g,
                        mode: str = "per_unit", block=None, active_fraction: float = 0.3,
                        memory: int | None = None) -> None:
    """Validate the arguments shared by every structure-learning entry point."""
    positive_int("width", width)
    fraction("active_fraction", active_fraction)
    if memory is not None:
        positive_int("memory", memory)
    check_density(density)
    positive_int("group_size", group_size)
    if width % group_size:
        raise ValueError(f"group_size={group_size} must divide width={width}")
    if lam1 != "auto":
        penalty("lam1", lam1, "'auto'")
    if lam_g is not None:
        penalty("lam_g", lam_g)
    choice("mode", mode, ("per_unit", "global"))
    if block is not None:
        check_block(block)


def dictionary_values(dictionary: Tensor, connectivity: Connectivity) -> Tensor:
    """``(nnz,)`` initial weights: ``Dᵀ`` restricted to the mask, each unit's row rescaled to
    the norm of a Kaiming-uniform row (``1/√3``) so training starts at the usual scale."""
    W = dictionary.T.detach().cpu()
    rows, cols = connectivity.row_indices(), connectivity.col_indices
    v = W[rows, cols].double()
    norms = torch.zeros(connectivity.shape[0], dtype=torch.float64).index_add_(0, rows, v.square()).sqrt()
    return (v * (INIT_ROW_NORM / norms.clamp_min(1e-12))[rows]).float()


@dataclass(frozen=True)
class LayerInit:
    """What a learned dictionary gives a layer: its connectivity ``(out, in)``, its initial
    weights ``values (nnz,)`` in CSR order, and the dictionary ``(in, out)`` they came from."""

    connectivity: Connectivity
    values: Tensor
    dictionary: Tensor


def read_layer(dictionary: Tensor, density: float, mode: str = "per_unit",
               block: tuple[int, int] | None = None,
               nm: tuple[int, int] | None = None) -> LayerInit:
    """The one place a learned dictionary ``D (in, out)`` becomes a layer: unit ``k`` connects
    to the inputs with the largest ``|D[:, k]|`` (its top ``ceil(density·in)`` for
    ``mode='per_unit'``, the top ``density`` fraction of the layer for ``'global'``, whole
    ``block=(bo, bi)`` blocks by summed ``|D|``, the top ``n`` of every ``m`` consecutive
    inputs for ``nm=(n, m)``), and its weights start from ``Dᵀ`` on those connections
    (:func:`dictionary_values`). Used by :func:`learn_layer`,
    ``StructLearnedStack.learn_structure`` and :func:`~torch_structlearn.convert`."""
    D = dictionary.detach().cpu()
    conn = Connectivity.from_scores(D.T, density, mode, block=tuple(block) if block else None,
                                    nm=nm)
    return LayerInit(conn, dictionary_values(D, conn), D)


class LayerReport(dict):
    """One row of a structure-learning report (a dict with attribute access)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:  # AttributeError, so copy/pickle's protocol probes work
            raise AttributeError(f"LayerReport has no field {name!r}") from None


CODING_SETTINGS = frozenset(DictionaryLearner.param_names()) - {"n_atoms"}


def _settings_of(learner: DictionaryLearner | None) -> dict:
    """An unfitted learner's settings (``{}`` for None); ``TypeError`` for anything else."""
    if learner is None:
        return {}
    if not isinstance(learner, DictionaryLearner):
        raise TypeError(f"learner must be a DictionaryLearner (its settings), got "
                        f"{type(learner).__name__}")
    return learner.get_params()


def check_settings(width: int, density: float, *, mode: str = "per_unit",
                   block: tuple[int, int] | None = None, learner: DictionaryLearner | None = None,
                   **settings) -> None:
    """:func:`check_learning_args` on ``learner``'s settings overridden by ``settings`` —
    what :func:`learn_layer` and ``StructLearnedStack`` check before any work."""
    merged = {**_settings_of(learner), **settings}
    check_learning_args(width=width, density=density, group_size=merged.get("group_size", 1),
                        lam1=merged.get("lam1", "auto"), lam_g=merged.get("lam_g"), mode=mode,
                        block=block, active_fraction=merged.get("active_fraction", 0.3),
                        memory=merged.get("memory"))


def learner_for(out_features: int, learner: DictionaryLearner | None = None,
                **settings) -> DictionaryLearner:
    """The unfitted :class:`~torch_structlearn.coding.DictionaryLearner` a layer of
    ``out_features`` units is learned with: ``learner``'s settings (``None``: the defaults)
    with ``settings`` (its constructor's arguments: ``lam1``, ``group_size``, ``epochs``, ...)
    overriding them. The one object the learner's settings travel as."""
    params = _settings_of(learner)
    unknown = sorted(set(settings) - CODING_SETTINGS)
    if unknown:
        raise TypeError(f"unexpected learner setting(s) {unknown}; DictionaryLearner takes "
                        f"{sorted(CODING_SETTINGS)}")
    params.update(settings)
    params["n_atoms"] = out_features
    return DictionaryLearner(**params)


def learn_layer(
    loader: Iterable,
    out_features: int,
    *,
    density: float = 0.05,
    mode: str = "per_unit",
    block: tuple[int, int] | None = None,
    learner: DictionaryLearner | None = None,
    **settings,
) -> tuple[LayerInit, LayerReport]:
    """Learn a layer — connectivity and initial weights — from its (unlabelled) inputs.

    Learns a dictionary ``D (in_features, out_features)`` by group sparse coding (see
    :class:`~torch_structlearn.coding.DictionaryLearner` for the objective) and keeps, as
    connections, the largest ``|D|`` entries: each unit's top ``ceil(density·in)`` inputs
    (``mode='per_unit'``), the top ``density`` fraction overall (``'global'``), or whole
    ``block=(bo, bi)`` blocks by summed ``|D|``.

    Returns:
        ``(layer, report)``: a :class:`LayerInit` (:func:`read_layer` of the dictionary:
        ``connectivity (out_features, in_features)``, initial ``values``, ``dictionary
        (in_features, out_features)``) and a report
        with ``K, density, objective, lam1, seconds``, ``usage`` (the fraction of atoms used in
        the last pass) and ``active`` (the mean fraction of codes that were nonzero in it).

    The coding settings are one object: ``learner``, an unfitted
    :class:`~torch_structlearn.coding.DictionaryLearner` (its ``n_atoms`` is replaced by
    ``out_features``), and/or its constructor's arguments as ``**settings`` (``lam1``,
    ``lam_g``, ``group_size``, ``nonneg``, ``active_fraction``, ``memory``, ``epochs``,
    ``max_iter``, ``seed``, ``device``, ``key``, ``verbose``, ``distributed``, ...), which
    override the learner's (:func:`learner_for`).
    """
    check_settings(out_features, density, mode=mode, block=block, learner=learner, **settings)
    learner = learner_for(out_features, learner, **settings)
    if learner.settle_density is None:  # the stopping rule watches the layer's own masks
        learner.settle_density = density
    key = learner.key
    require_reiterable(loader, "learn_structure")
    # one cheap pass validates every batch (type, NaN/Inf, feature size) before the long work
    x0 = None
    for x in batches(loader, key=key):
        x0 = x if x0 is None else x0
    if block is not None:
        check_block(block, (out_features, x0.shape[1]))
    t0 = time.perf_counter()
    learner.fit(loader)
    layer = read_layer(learner.dictionary_, density, mode, block)
    report = LayerReport(
        in_features=x0.shape[1], K=out_features, density=layer.connectivity.density,
        objective=learner.objective_[-1], objective_per_epoch=list(learner.objective_),
        lam1=learner.lam1_, lam_g=learner.lam_g_, usage=float((learner.usage_ > 0).float().mean()),
        active=float(learner.usage_.mean()),
        passes=learner.passes_, settled=learner.settled_,
        stability=[list(c) for c in learner.stability_],
        seconds=time.perf_counter() - t0,
    )
    return layer, report


def learn_structure(loader: Iterable, out_features: int, **kw) -> tuple[Connectivity, Tensor, LayerReport]:
    """:func:`learn_layer`'s ``(connectivity, dictionary, report)`` (its arguments): a layer's
    connectivity learned from its (unlabelled) inputs."""
    layer, report = learn_layer(loader, out_features, **kw)
    return layer.connectivity, layer.dictionary, report


learn_structure.__signature__ = inspect.signature(learn_layer).replace(
    return_annotation="tuple[Connectivity, Tensor, LayerReport]")


def format_report(rows: list[dict]) -> str:
    """A plain-text table of per-layer reports."""
    head = f"{'layer':>5} {'in':>6} {'K':>6} {'density':>8} {'score':>9} {'gain':>8} {'objective':>11} {'kept':>5} {'s':>7}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows):
        gain = r.get("gain")
        lines.append(
            f"{i + 1:>5} {r['in_features']:>6} {r['K']:>6} {r['density']:>8.4f} "
            f"{r.get('score', float('nan')):>9.4f} {('   -' if gain is None else f'{gain:+.4f}'):>8} "
            f"{r['objective']:>11.4g} {('yes' if r.get('kept', True) else 'no'):>5} {r['seconds']:>7.1f}"
        )
    return "\n".join(lines)
