"""Replace ``nn.Linear`` layers inside existing models (timm, plain PyTorch) with
``StructLearnedLinear`` layers whose structure is learned from *their own inputs*.

The inputs are captured with forward pre-hooks while a loader runs through the model; each
selected layer streams its inputs into its own :class:`~torch_structlearn.coding.DictionaryLearner`
(``partial_fit``), so memory stays bounded by one batch of activations.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from . import pruning
from ._checks import block as check_block
from ._checks import choice, positive_int
from ._checks import density as check_density
from ._checks import seed as check_seed
from .coding import DictionaryLearner
from .connectivity import Connectivity
from .data import _extract, require_reiterable
from .io import load_structures
from .layers import StructLearnedLinear
from .learn import LayerInit, learner_for, read_layer

__all__ = ["convert", "convert_structure", "densify", "select_linears", "replace_module"]

_INITS = ("keep", "dictionary", "random")
Patterns = str | re.Pattern | Sequence[str | re.Pattern] | None  # globs or regexes on module names


def _patterns(p: Patterns) -> list:
    if p is None:
        return []
    if isinstance(p, (str, re.Pattern)):
        return [p]
    if isinstance(p, Sequence):
        for q in p:
            if not isinstance(q, (str, re.Pattern)):
                raise TypeError(f"patterns must be str (glob) or re.Pattern, got {type(q).__name__}")
        return list(p)
    raise TypeError(f"include/exclude must be a glob string, a re.Pattern or a list of them, got {p!r}")


def _match(name: str, pats: list) -> bool:
    return any(p.fullmatch(name) if isinstance(p, re.Pattern) else fnmatch.fnmatchcase(name, p)
               for p in pats)


def select_linears(model: nn.Module, include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """Names of the ``nn.Linear`` modules (exactly that class) matching ``include`` (globs such as
    ``'blocks.*.mlp.fc*'`` or compiled regexes; default: all) and not ``exclude``."""
    inc, exc = _patterns(include), _patterns(exclude)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    return [n for n in names if (not inc or _match(n, inc)) and not _match(n, exc)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _build(linear: nn.Linear, conn: Connectivity, init: str, learned: LayerInit | None,
           block: tuple[int, int] | None) -> StructLearnedLinear:
    """The sparse layer replacing ``linear``: its weights on ``conn`` ('keep'), the learned
    dictionary's (``learned.values``, bias 0: 'dictionary') or Kaiming-uniform ('random')."""
    layer = StructLearnedLinear.from_linear(linear, conn, block=block)
    if init == "random":
        layer.reset_parameters()
    elif init == "dictionary":
        layer.copy_csr_values_(learned.values)
        if layer.bias is not None:
            with torch.no_grad():
                layer.bias.zero_()
    return layer


@torch.no_grad()
def _pruned(linear: nn.Linear, method: str, density: float, H: Tensor | None,
            nm: tuple[int, int] | None = None) -> tuple[StructLearnedLinear, dict]:
    """The sparse layer of a trained ``linear`` by ``method`` (:mod:`~torch_structlearn.pruning`)
    and, when ``H`` was captured, the relative output error ``‖WX − ŴX‖² / ‖WX‖²``."""
    W = linear.weight.detach().double()
    if method == "magnitude":
        mask, kept = pruning.magnitude(W, density, nm), W
    elif method == "wanda":
        mask = pruning.wanda(W, H, density, nm)
        kept = W
    elif method == "sparsegpt":
        mask, kept = pruning.sparsegpt(W, H, density, nm=nm)
    else:  # refit
        mask = pruning.wanda(W, H, density, nm)
        kept = pruning.refit(W, H, mask)
    conn = Connectivity.from_mask(mask.cpu())
    layer = StructLearnedLinear.from_linear(linear, conn)
    layer.copy_csr_values_(kept[mask].to(layer.values))  # row-major = CSR order
    extra = {}
    if H is not None:
        total = pruning.output_error(W, torch.zeros_like(W), H)
        extra["output_error"] = pruning.output_error(W, kept * mask, H) / max(total, 1e-300)
    return layer, extra


@torch.no_grad()
def convert(
    model: nn.Module,
    loader: Iterable | None = None,
    *,
    density: float,
    include: Patterns = None,
    exclude: Patterns = None,
    block: tuple[int, int] | None = None,
    init: str = "keep",
    method: str = "dictionary",
    nm: tuple[int, int] | None = None,
    batches: int | None = None,
    epochs: int = 1,
    rows_per_batch: int = 2048,
    key: str = "x",
    seed: int = 0,
    verbose: bool = True,
    learner: DictionaryLearner | None = None,
    **coding_kw,
) -> list[dict]:
    """Replace matching ``nn.Linear`` layers of ``model`` in place; returns a per-layer report.

    Args:
        model: any module; its ``nn.Linear`` layers named by ``include``/``exclude`` are replaced.
        loader: yields model inputs (tensors, ``(x, y)`` or dicts with ``key``); not needed when
            ``density == 1`` and ``init == 'keep'`` (nothing to learn).
        density: connection density of every converted layer (``per_unit`` read-off).
        include, exclude: globs on module names (``'blocks.*.mlp.fc*'``) or ``re.Pattern``.
        block: ``(bo, bi)`` block-sparse read-off.
        init: ``'keep'`` the pretrained weights on the learned mask, ``'dictionary'`` or ``'random'``.
        method: how the mask (and, for a trained model, the kept weights) are chosen:
            ``'dictionary'`` (default) reads the mask off a dictionary of each layer's inputs;
            the others keep each unit's ``ceil(density·in)`` inputs of a *trained* layer
            from its weights and the second moment ``H = Σ x xᵀ`` of its captured inputs
            (:mod:`torch_structlearn.pruning`): ``'magnitude'`` (largest ``|W|``; no data),
            ``'wanda'`` (largest ``|W|·‖X_j‖``), ``'sparsegpt'`` (OBS updates) and
            ``'refit'`` (Wanda's mask, then each unit's least-squares weights on ``H``).
            Methods other than ``'dictionary'`` need ``init='keep'`` and no ``block``.
        nm: ``(n, m)`` semi-structured masks for those methods: ``n`` of every ``m``
            consecutive inputs of a unit kept (``(2, 4)`` with ``density=0.5``).
        batches: batches per pass over ``loader`` (default: all).
        epochs: passes over ``loader``.
        rows_per_batch: at most this many input rows (tokens × batch) per layer per batch go to
            the dictionary learner (a fixed random subset) — this bounds memory and time.
        learner, **coding_kw: the coding settings, as one unfitted
            :class:`~torch_structlearn.coding.DictionaryLearner` and/or its arguments (``lam1``,
            ``lam_g``, ``group_size``, ``max_iter``, ...; they override the learner's), for
            every layer (:func:`~torch_structlearn.learn.learner_for`).

    Returns:
        One dict per converted layer: ``name, in_features, out_features, density, nnz, seconds``
        (and ``objective`` when learned; ``output_error``, ``‖WX − ŴX‖² / ‖WX‖²`` on the
        captured inputs, for the methods that capture them).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    density = check_density(density)
    choice("init", init, _INITS)
    positive_int("epochs", epochs)
    positive_int("rows_per_batch", rows_per_batch)
    check_seed("seed", seed)
    if batches is not None:
        positive_int("batches", batches)
    names = select_linears(model, include, exclude)
    if not names:
        all_names = select_linears(model)
        raise ValueError(f"no nn.Linear matches include={include!r} exclude={exclude!r}; "
                         f"the model's nn.Linear layers are {all_names[:20]}"
                         + (" ..." if len(all_names) > 20 else ""))
    linears = {n: model.get_submodule(n) for n in names}
    if block is not None:
        block = check_block(block)
        for n, lin in linears.items():
            if lin.out_features % block[0] or lin.in_features % block[1]:
                raise ValueError(f"block={tuple(block)} does not divide layer {n!r} of shape "
                                 f"({lin.out_features}, {lin.in_features})")
    choice("method", method, ("dictionary", *pruning.METHODS, "refit"))
    if method != "dictionary" and (init != "keep" or block is not None):
        raise ValueError(f"method={method!r} chooses the kept weights of a trained layer: it "
                         f"takes init='keep' and no block (got init={init!r}, block={block})")
    if nm is not None:
        if method == "dictionary":
            raise ValueError("nm= is for the trained-model methods ('magnitude', 'wanda', "
                             "'sparsegpt', 'refit'), not method='dictionary'")
        for n, lin in linears.items():
            try:
                pruning.check_nm(nm, density, lin.in_features)
            except ValueError as e:
                raise ValueError(f"layer {n!r}: {e}") from None
    learn = method == "dictionary" and not (density == 1.0 and init == "keep")
    capture = learn or method in ("wanda", "sparsegpt", "refit")
    if capture and loader is None:
        raise ValueError(f"a loader is needed to learn structures (method={method!r}, "
                         f"density={density}, init={init!r})")
    if capture and epochs > 1:
        require_reiterable(loader, f"convert with epochs={epochs}")

    learners: dict[str, DictionaryLearner] = {}
    stats: dict[str, pruning.InputStatistics] = {}
    seconds = dict.fromkeys(names, 0.0)
    if capture:
        if learn:
            learners = {n: learner_for(lin.out_features, learner, seed=seed, verbose=False,
                                       **coding_kw) for n, lin in linears.items()}
        else:
            stats = {n: pruning.InputStatistics(lin.in_features, lin.weight.device)
                     for n, lin in linears.items()}
        gen = torch.Generator().manual_seed(seed)

        def hook(name):
            def pre(module, args):
                x = args[0].detach().reshape(-1, module.in_features).float()
                t0 = time.perf_counter()
                if name in stats:  # every row: H costs O(in²) memory however many
                    if not bool(torch.isfinite(x).all()):
                        raise ValueError(f"layer {name!r} input contains NaN or Inf")
                    stats[name].update(x)
                else:
                    if x.shape[0] > rows_per_batch:
                        idx = torch.randperm(x.shape[0], generator=gen)[:rows_per_batch]
                        x = x[idx.to(x.device)]
                    try:
                        learners[name].partial_fit(x)
                    except ValueError as e:  # e.g. NaN/Inf activations: say which layer
                        raise ValueError(f"layer {name!r} input: {e}") from None
                seconds[name] += time.perf_counter() - t0
            return pre

        handles = [lin.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
        was_training = model.training
        device = next(iter(model.parameters()), torch.empty(0)).device
        model.eval()
        try:
            for _ in tqdm(range(epochs), desc="convert", unit="pass", disable=not verbose):
                seen = 0
                for i, batch in enumerate(loader):
                    if batches is not None and i >= batches:
                        break
                    x = _extract(batch, key, i)
                    model(x.to(device))
                    seen += 1
                if seen == 0:
                    raise ValueError("the loader yielded no batches")
                idle = ([n for n, lr in learners.items() if not hasattr(lr, "dictionary_")]
                        + [n for n, st in stats.items() if st.n == 0])
                if idle:
                    raise ValueError(f"layers {idle} got no input while the loader ran through "
                                     "the model (does forward() call them?); leave them out with "
                                     "exclude=")
                for lr in learners.values():
                    lr._end_epoch()
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)

    report, built = [], {}
    for n, lin in linears.items():
        t0 = time.perf_counter()
        D = learners[n].dictionary_ if learn else None
        row_extra = {}
        if method != "dictionary":
            new, row_extra = _pruned(lin, method, density, stats[n].H if n in stats else None, nm)
        else:
            learned = None if D is None else read_layer(D, density, "per_unit", block)
            conn = (Connectivity.from_mask(torch.ones(lin.out_features, lin.in_features))
                    if learned is None else learned.connectivity)
            new = _build(lin, conn, init, learned, block)
        built[n] = new
        row = {"name": n, "in_features": lin.in_features, "out_features": lin.out_features,
               "density": new.density, "nnz": new.nnz,
               "seconds": seconds[n] + time.perf_counter() - t0}
        if D is not None:
            row["objective"] = learners[n].objective_[-1]
        row.update(method=method, **row_extra)
        report.append(row)
    for n, new in built.items():  # swapped in only once every layer is built
        replace_module(model, n, new)
    if verbose:
        for r in report:
            print(f"  {r['name']:<40} {r['in_features']:>6} -> {r['out_features']:<6} "
                  f"density {r['density']:.4f}  {r['seconds']:.1f} s")
    return report


def convert_structure(model: nn.Module, structure_file: str | os.PathLike, *,
                      weights: bool = True) -> list[str]:
    """Apply the structures saved by ``save(converted_model, path)`` to a fresh ``model``.

    Each named ``nn.Linear`` in the file's layer list is replaced by a ``StructLearnedLinear``
    with the saved connectivity, and (``weights=True``) the saved values and bias; otherwise the
    model's own weights are kept on the mask. Returns the replaced names. Every layer is checked
    and built before the first is swapped in, so a file that does not fit leaves ``model`` as it
    was.
    """

    layers = load_structures(structure_file)
    built = {}
    for name, saved in layers.items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{structure_file}: the model has no module {name!r}") from None
        if type(lin) is not nn.Linear:
            raise ValueError(f"{structure_file}: {name!r} is a {type(lin).__name__}, not nn.Linear")
        if (lin.out_features, lin.in_features) != (saved.out_features, saved.in_features):
            raise ValueError(f"{structure_file}: {name!r} has shape ({lin.out_features}, "
                             f"{lin.in_features}), the file ({saved.out_features}, {saved.in_features})")
        new = StructLearnedLinear.from_linear(lin, saved.connectivity, block=saved.block)
        if weights:
            new.load_state_dict(saved.state_dict())
        built[name] = new.to(lin.weight.device, lin.weight.dtype)
    for name, new in built.items():
        replace_module(model, name, new)
    return list(layers)


@torch.no_grad()
def densify(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: every ``StructLearnedLinear`` of ``model`` becomes an
    ``nn.Linear`` holding its masked dense weight ``(out, in)`` (zeros off the structure) and
    its bias, same dtype and device — for export (ONNX, ``torch.export``) or comparison, as
    ``torch.nn.utils.prune.remove`` makes pruning permanent. In place; returns ``model`` (or
    the new ``nn.Linear`` when ``model`` is itself a ``StructLearnedLinear``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")

    def dense(layer: StructLearnedLinear) -> nn.Linear:
        w = layer.dense_weight()
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                        device=w.device, dtype=w.dtype)
        lin.weight.copy_(w)
        if layer.bias is not None:
            lin.bias.copy_(layer.bias)
        lin.train(layer.training)
        return lin

    if isinstance(model, StructLearnedLinear):
        return dense(model)
    names = [n for n, m in model.named_modules() if isinstance(m, StructLearnedLinear)]
    built = {n: dense(model.get_submodule(n)) for n in names}
    for n, lin in built.items():
        replace_module(model, n, lin)
    return model
