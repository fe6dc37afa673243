"""Replace ``nn.Linear`` layers inside existing models (timm, plain PyTorch) with
``StructLearnedLinear`` layers whose structure is learned from *their own inputs*.

The inputs are captured with forward pre-hooks while a loader runs through the model; each
selected layer streams its inputs into its own :class:`~torch_structlearn.coding.DictionaryLearner`
(``partial_fit``), so memory stays bounded by one batch of activations.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import time
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from . import pruning
from .checks import block as check_block
from .checks import choice, positive_int
from .checks import density as check_density
from .checks import seed as check_seed
from .coding import DictionaryLearner
from .connectivity import Connectivity
from .io import load_structures
from .layers import StructLearnedLinear
from .learn import LayerInit, learner_for, read_layer
from .loaders import _extract, require_reiterable
from .progress import tqdm

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
def _pruned(linear: nn.Linear, method: str, density: float,
            stats: pruning.InputStatistics | None, nm: tuple[int, int] | None,
            block: tuple[int, int] | None) -> tuple[StructLearnedLinear, dict]:
    """The sparse layer of a trained ``linear`` by ``method`` (:mod:`~torch_structlearn.pruning`)
    and, when inputs were captured, its relative output error on them."""
    W = linear.weight.detach().double()
    H = None if stats is None else stats.H
    if stats is None:  # nothing captured: no data needed (magnitude) or nothing to choose
        method = "magnitude"
    if method == "magnitude":
        mask, kept = pruning.magnitude(W, density, nm, block), W
    elif method == "wanda":
        mask, kept = pruning.wanda(W, H, density, nm, block), W
    elif method == "sparsegpt":
        mask, kept = pruning.sparsegpt(W, H, density, nm=nm, block=block)
    else:  # refit: aims at the dense model's outputs when the statistics are paired
        mask, kept = pruning.obs_refit(stats.target(W), H, density, nm=nm, block=block)
    layer = StructLearnedLinear.from_linear(linear, Connectivity.from_mask(mask.cpu()), block=block)
    layer.copy_csr_values_(kept[mask].to(layer.values))  # row-major = CSR order
    extra = {} if stats is None else {"output_error": stats.relative_error(W, kept * mask)}
    return layer, extra


def _feed(name: str, fn, *inputs: Tensor) -> None:
    """``fn(*inputs)`` with a ``ValueError`` (e.g. NaN/Inf activations) naming the layer."""
    try:
        fn(*inputs)
    except ValueError as e:
        raise ValueError(f"layer {name!r} input: {e}") from None


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the layer it waits for has run."""


def _batches(loader: Iterable, batches: int | None, key: str, device) -> Iterable[Tensor]:
    seen = 0
    for i, batch in enumerate(loader):
        if batches is not None and i >= batches:
            break
        yield _extract(batch, key, i).to(device)
        seen += 1
    if seen == 0:
        raise ValueError("the loader yielded no batches")


def _run(model: nn.Module, x: Tensor) -> None:
    try:
        model(x)
    except _Stop:
        pass


def _call_order(model: nn.Module, linears: dict[str, nn.Linear], x: Tensor) -> dict[str, int]:
    """``{name: calls per forward}`` of the layers ``x`` reaches, in the order of first call."""
    calls: dict[str, int] = {}

    def hook(name):
        def pre(module, args):
            calls[name] = calls.get(name, 0) + 1
        return pre

    handles = [lin.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def _sequential(model: nn.Module, linears: dict[str, nn.Linear], loader: Iterable,
                batches: int | None, key: str, device, build, verbose: bool) -> dict[str, nn.Module]:
    """Convert layer by layer in call order: each layer's statistics pair the inputs it gets in
    a working copy whose earlier layers are already converted with the inputs the (untouched)
    ``model`` gives it. One pass over ``loader`` per layer, each cut short after that layer
    when it runs once per forward. ``build(name, stats)`` makes the layer; returns them all."""
    work = copy.deepcopy(model)
    order = _call_order(model, linears, next(iter(_batches(loader, batches, key, device))))
    missing = [n for n in linears if n not in order]
    if missing:
        raise ValueError(f"layers {missing} got no input while the loader ran through the model "
                         "(does forward() call them?); leave them out with exclude=")
    built = {}
    for name in tqdm(list(order), desc="convert", unit="layer", disable=not verbose):
        once = order[name] == 1
        stats = pruning.InputStatistics(linears[name].in_features, device, paired=True)
        ref: list[Tensor] = []

        def take(module, args, ref=ref, once=once):
            ref.append(args[0].detach())
            if once:
                raise _Stop

        def pair(module, args, ref=ref, once=once, stats=stats, name=name):
            _feed(name, stats.update, args[0], ref.pop(0))
            if once:
                raise _Stop

        handles = [linears[name].register_forward_pre_hook(take),
                   work.get_submodule(name).register_forward_pre_hook(pair)]
        try:
            for x in _batches(loader, batches, key, device):
                _run(model, x)
                _run(work, x)
                ref.clear()
        finally:
            for h in handles:
                h.remove()
        built[name] = build(name, stats)
        replace_module(work, name, built[name])
    return built


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
    method: str | None = None,
    nm: tuple[int, int] | None = None,
    sequential: bool = False,
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
            ``density == 1`` and ``init == 'keep'`` (nothing to learn) or for ``'magnitude'``.
        density: connection density of every converted layer (each unit keeps
            ``ceil(density·in)`` inputs).
        include: globs on module names (``'blocks.*.mlp.fc*'``) or ``re.Pattern``: the layers
            converted (default: every ``nn.Linear``).
        exclude: globs or patterns of layers left dense.
        block: ``(bo, bi)`` block-sparse masks (whole blocks, the same number per block row).
        init: ``'keep'`` the trained weights, ``'dictionary'`` or ``'random'`` values on a
            structure read off a dictionary of the layer's inputs.
        method: how the mask and the kept weights are chosen. For a *trained* model
            (``init='keep'``, default ``'refit'``) each layer keeps what best preserves its
            outputs, from its weights and the second moment ``H = Σ x xᵀ`` of its captured
            inputs (:mod:`torch_structlearn.pruning`; O(in²) memory per layer):
            ``'refit'`` (SparseGPT's OBS selection run in 3 gradual passes, then each unit's
            least-squares weights on ``H``), ``'sparsegpt'``, ``'wanda'`` (largest
            ``|W|·‖X_j‖``) and ``'magnitude'`` (largest ``|W|``; no data) — the anchors, for
            comparison. ``'dictionary'`` (default for the other inits) reads the mask off a
            dictionary learned from each layer's inputs and is meant for training afterwards:
            it ignores what the trained weights compute.
        nm: ``(n, m)`` semi-structured masks for the trained-model methods: ``n`` of every
            ``m`` consecutive inputs of a unit kept (``(2, 4)`` with ``density=0.5``).
        sequential: calibrate layer by layer in call order, each on the inputs it gets once the
            layers before it are converted (as SparseGPT and Wanda do); ``'refit'`` then fits
            each layer to the *dense* model's outputs, correcting upstream error. Costs one
            pass over ``loader`` per layer (cut short after the layer) and a copy of ``model``;
            the default captures every layer in one pass.
        batches: batches per pass over ``loader`` (default: all).
        epochs: passes over ``loader`` for ``'dictionary'``.
        rows_per_batch: at most this many input rows (tokens × batch) per layer per batch go to
            the dictionary learner (a fixed random subset) — this bounds memory and time.
        learner: the coding settings of ``'dictionary'`` as one unfitted
            :class:`~torch_structlearn.coding.DictionaryLearner` (see ``coding_kw``).
        **coding_kw: the coding settings of ``'dictionary'``, as one unfitted
            :class:`~torch_structlearn.coding.DictionaryLearner` and/or its arguments (``lam1``,
            ``lam_g``, ``group_size``, ``max_iter``, ...; they override the learner's), for
            every layer (:func:`~torch_structlearn.learn.learner_for`).

    Returns:
        One dict per converted layer: ``name, in_features, out_features, density, nnz, seconds,
        method`` (and ``objective`` when a dictionary was learned; ``output_error``, the
        relative error ``‖W X − Ŵ X̂‖² / ‖W X‖²`` on the captured inputs — ``X̂ = X`` unless
        ``sequential`` — for the methods that capture them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    density = check_density(density)
    choice("init", init, _INITS)
    positive_int("epochs", epochs)
    positive_int("rows_per_batch", rows_per_batch)
    check_seed("seed", seed)
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {sequential!r}")
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
    if method is None:
        method = "refit" if init == "keep" else "dictionary"
    choice("method", method, ("dictionary", *pruning.METHODS))
    trained = method != "dictionary"
    if trained and init != "keep":
        raise ValueError(f"method={method!r} chooses the kept weights of a trained layer: it "
                         f"takes init='keep' (got init={init!r})")
    if trained and (learner is not None or coding_kw):
        raise ValueError(f"learner= and coding arguments {sorted(coding_kw)} are for "
                         f"method='dictionary', not method={method!r}")
    if nm is not None:
        if not trained:
            raise ValueError("nm= is for the trained-model methods ('refit', 'sparsegpt', "
                             "'wanda', 'magnitude'), not method='dictionary'")
        if block is not None:
            raise ValueError(f"give nm= or block=, not both (got nm={nm!r}, block={block})")
        for n, lin in linears.items():
            try:
                pruning.check_nm(nm, density, lin.in_features)
            except ValueError as e:
                raise ValueError(f"layer {n!r}: {e}") from None
    everything = density == 1.0 and init == "keep"  # nothing to choose
    learn = not trained and not everything
    capture = learn or (trained and method != "magnitude" and not everything)
    if capture and loader is None:
        raise ValueError(f"a loader is needed to learn structures (method={method!r}, "
                         f"density={density}, init={init!r})")
    if capture and (epochs > 1 or (sequential and trained)):
        require_reiterable(loader, "convert with " + (f"epochs={epochs}" if epochs > 1
                                                      else "sequential=True"))

    learners: dict[str, DictionaryLearner] = {}
    stats: dict[str, pruning.InputStatistics] = {}
    seconds = dict.fromkeys(names, 0.0)
    device = next(iter(model.parameters()), torch.empty(0)).device
    extras: dict[str, dict] = {}

    def build(n: str, st: pruning.InputStatistics | None) -> nn.Module:
        t0 = time.perf_counter()
        new, extras[n] = _pruned(linears[n], method, density, st, nm, block)
        seconds[n] += time.perf_counter() - t0
        return new

    was_training = model.training
    model.eval()
    try:
        if capture and trained and sequential:
            t0 = time.perf_counter()
            built = _sequential(model, linears, loader, batches, key, device, build, verbose)
            per_layer = (time.perf_counter() - t0 - sum(seconds.values())) / len(names)
            for n in names:  # the passes' time shared evenly
                seconds[n] += per_layer
        else:
            if capture:
                if learn:
                    learners = {n: learner_for(lin.out_features, learner, seed=seed,
                                               verbose=False, **coding_kw)
                                for n, lin in linears.items()}
                else:
                    stats = {n: pruning.InputStatistics(lin.in_features, lin.weight.device)
                             for n, lin in linears.items()}
                _capture(model, linears, loader, learners, stats, seconds, epochs, batches, key,
                         device, rows_per_batch, seed, tqdm(range(epochs), desc="convert",
                                                            unit="pass", disable=not verbose))
            built = {}
            for n, lin in linears.items():
                if trained:
                    built[n] = build(n, stats.get(n))
                    continue
                t0 = time.perf_counter()
                D = learners[n].dictionary_ if learn else None
                learned = None if D is None else read_layer(D, density, "per_unit", block)
                conn = (Connectivity.from_mask(torch.ones(lin.out_features, lin.in_features))
                        if learned is None else learned.connectivity)
                built[n] = _build(lin, conn, init, learned, block)
                seconds[n] += time.perf_counter() - t0
                if D is not None:
                    extras[n] = {"objective": learners[n].objective_[-1]}
    finally:
        model.train(was_training)

    report = []
    for n, lin in linears.items():
        new = built[n]
        report.append({"name": n, "in_features": lin.in_features, "out_features": lin.out_features,
                       "density": new.density, "nnz": new.nnz, "seconds": seconds[n],
                       "method": method, **extras.get(n, {})})
    for n, new in built.items():  # swapped in only once every layer is built
        replace_module(model, n, new)
    if verbose:
        for r in report:
            print(f"  {r['name']:<40} {r['in_features']:>6} -> {r['out_features']:<6} "
                  f"density {r['density']:.4f}  {r['seconds']:.1f} s")
    return report


def _capture(model, linears, loader, learners, stats, seconds, epochs, batches, key, device,
             rows_per_batch, seed, passes) -> None:
    """One run of ``loader`` through ``model`` per pass, every selected layer's inputs streamed
    into its dictionary learner (a random subset of ``rows_per_batch`` rows per batch) or its
    input statistics (every row)."""
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        def pre(module, args):
            x = args[0].detach().reshape(-1, module.in_features)
            t0 = time.perf_counter()
            if name in stats:  # every row: H costs O(in²) memory however many
                _feed(name, stats[name].update, x)
            else:
                if x.shape[0] > rows_per_batch:
                    idx = torch.randperm(x.shape[0], generator=gen)[:rows_per_batch]
                    x = x[idx.to(x.device)]
                _feed(name, learners[name].partial_fit, x.float())
            seconds[name] += time.perf_counter() - t0
        return pre

    handles = [lin.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
    try:
        for _ in passes:
            for x in _batches(loader, batches, key, device):
                model(x)
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
