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
import warnings
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
from .learn import CODING_SETTINGS, LayerInit, learner_for, read_layer
from .loaders import _extract, require_reiterable
from .progress import tqdm

__all__ = ["convert", "Prune", "Learn", "parse_pattern", "convert_structure", "densify",
           "select_linears", "linear_aliases", "replace_module"]

Patterns = str | re.Pattern | Sequence[str | re.Pattern] | None  # globs or regexes on module names


class Prune:
    """A :func:`convert` method for a *trained* model: each layer keeps its own weights on the
    mask that best preserves its outputs, chosen from the weights and the second moment
    ``H = Σ x xᵀ`` of its captured inputs (:mod:`torch_structlearn.pruning`; O(in²) memory per
    layer).

    Args:
        name: ``'refit'`` (default: SparseGPT's OBS selection in 3 gradual passes, then each
            unit's least-squares weights on ``H``), ``'sparsegpt'``, ``'wanda'`` (largest
            ``|W|·‖X_j‖``) or ``'magnitude'`` (largest ``|W|``; needs no data).
        sequential: calibrate layer by layer in call order, each on the inputs it gets once the
            layers before it are converted (as SparseGPT and Wanda do); ``'refit'`` then fits
            each layer to the *dense* model's outputs, correcting upstream error. Costs one
            pass over the loader per layer (cut short after the layer) and a copy of the model.
        dtype: the precision of the statistics and the solvers: ``torch.float32`` (default;
            on a trained MNIST MLP the same accuracy and output errors as float64 to 3–4
            digits, docs/convert.md) or ``torch.float64`` (twice the memory).
    """

    def __init__(self, name: str = "refit", *, sequential: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        choice("name", name, pruning.METHODS)
        if not isinstance(sequential, bool):
            raise TypeError(f"sequential must be a bool, got {sequential!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.name, self.sequential, self.dtype = name, sequential, dtype

    def __repr__(self) -> str:
        return (f"Prune({self.name!r}" + (", sequential=True" if self.sequential else "")
                + (", dtype=torch.float64" if self.dtype == torch.float64 else "") + ")")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prune) and (self.name, self.sequential, self.dtype) == (
            other.name, other.sequential, other.dtype)


class Learn:
    """A :func:`convert` method that reads each layer's mask off a dictionary learned from the
    layer's inputs (:class:`~torch_structlearn.coding.DictionaryLearner`, streamed with
    ``partial_fit``) — meant for training afterwards: it ignores what trained weights compute.

    Args:
        init: the converted layers' weights: ``'dictionary'`` (the dictionary's, bias 0),
            ``'random'`` (Kaiming-uniform) or ``'keep'`` (the trained weights on the mask).
        learner: the coding settings as one unfitted ``DictionaryLearner``.
        epochs: passes over the loader.
        rows_per_batch: at most this many input rows (tokens × batch) per layer per batch go to
            the learner (a fixed random subset): this bounds memory and time.
        **coding: ``DictionaryLearner`` arguments (``lam1``, ``lam_g``, ``group_size``, ...),
            overriding ``learner``'s (:func:`~torch_structlearn.learn.learner_for`).
    """

    def __init__(self, init: str = "dictionary", *, learner: DictionaryLearner | None = None,
                 epochs: int = 1, rows_per_batch: int = 2048, **coding) -> None:
        choice("init", init, ("dictionary", "random", "keep"))
        positive_int("epochs", epochs)
        positive_int("rows_per_batch", rows_per_batch)
        _check_coding(learner, coding)
        self.init, self.learner, self.epochs = init, learner, epochs
        self.rows_per_batch, self.coding = rows_per_batch, coding

    name = "dictionary"

    def __repr__(self) -> str:
        args = [repr(self.init)] + [f"{k}={v!r}" for k, v in (
            ("learner", self.learner), ("epochs", self.epochs),
            ("rows_per_batch", self.rows_per_batch), *self.coding.items())
            if (k, v) not in (("learner", None), ("epochs", 1), ("rows_per_batch", 2048))]
        return f"Learn({', '.join(args)})"


Method = str | Prune | Learn


def _check_coding(learner, coding: dict) -> None:
    """``learner`` a ``DictionaryLearner`` or None, ``coding`` its arguments' names."""
    if learner is not None and not isinstance(learner, DictionaryLearner):
        raise TypeError(f"learner must be a DictionaryLearner (its settings), got "
                        f"{type(learner).__name__}")
    unknown = sorted(set(coding) - CODING_SETTINGS)
    if unknown:
        raise TypeError(f"unexpected argument(s) {unknown}; the coding settings are "
                        f"{sorted(CODING_SETTINGS)}")


def _method(method: Method) -> Prune | Learn:
    """``method`` as a :class:`Prune` or :class:`Learn` (a name: ``'dictionary'`` → ``Learn()``,
    the others → ``Prune(name)``)."""
    if isinstance(method, (Prune, Learn)):
        return method
    if isinstance(method, str):
        choice("method", method, (*pruning.METHODS, "dictionary"))
        return Learn() if method == "dictionary" else Prune(method)
    raise TypeError(f"method must be a name ({', '.join(pruning.METHODS)}, dictionary), a Prune "
                    f"or a Learn, got {type(method).__name__}")


def parse_pattern(pattern) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """``(block, nm)`` of a :func:`convert` ``pattern``: ``None`` (unstructured), ``'n:m'``
    (semi-structured: ``n`` of every ``m`` consecutive inputs of a unit, e.g. ``'2:4'``) or a
    block shape ``(bo, bi)`` (also written ``'boxbi'``, e.g. ``'4x4'``)."""
    if pattern is None:
        return None, None
    if isinstance(pattern, str):
        for sep, what in ((":", "nm"), ("x", "block")):
            a, found, b = pattern.partition(sep)
            if found and a.isdigit() and b.isdigit():
                pair = (int(a), int(b))
                return (None, pair) if what == "nm" else (check_block(pair), None)
    elif isinstance(pattern, (tuple, list)):
        return check_block(tuple(pattern)), None
    raise ValueError(f"pattern must be None, 'n:m' (semi-structured, e.g. '2:4') or a block "
                     f"(bo, bi) / 'boxbi' (e.g. (4, 4) or '4x4'), got {pattern!r}")


_OLD_SPELLINGS = ("init", "nm", "block", "sequential", "learner", "epochs", "rows_per_batch")


def _from_old_spelling(method, pattern, old: dict) -> tuple[Prune | Learn, object]:
    """``(method, pattern)`` from 0.1's keywords (``init=``, ``nm=``, ``block=``,
    ``sequential=``, ``learner=``, ``epochs=``, ``rows_per_batch=``, coding arguments), with a
    ``DeprecationWarning``; the combinations 0.1 refused are refused the same way."""
    given = sorted(old)
    warnings.warn(f"convert({', '.join(k + '=' for k in given)}) is deprecated: give "
                  "method=Prune(name, sequential=...) or method=Learn(init, learner=..., "
                  "epochs=..., rows_per_batch=..., **coding) and pattern='n:m' or (bo, bi)",
                  DeprecationWarning, stacklevel=3)
    init = old.pop("init", "keep")
    choice("init", init, ("keep", "dictionary", "random"))
    nm, block = old.pop("nm", None), old.pop("block", None)
    if nm is not None and block is not None:
        raise ValueError(f"give nm= or block=, not both (got nm={nm!r}, block={block})")
    if (nm is not None or block is not None) and pattern is not None:
        raise ValueError("give pattern= or the deprecated nm=/block=, not both")
    if nm is not None:
        pattern = f"{nm[0]}:{nm[1]}" if isinstance(nm, (tuple, list)) and len(nm) == 2 else nm
    elif block is not None:
        pattern = block
    sequential = old.pop("sequential", False)
    name = method if isinstance(method, str) else None
    if name == "refit" and (init != "keep" or old):  # 0.1's default method followed init
        name = "dictionary"
    if isinstance(method, (Prune, Learn)):
        if init != "keep" or old or sequential:
            raise ValueError(f"method={method!r} carries its own settings: drop "
                             f"{sorted(set(given) - {'nm', 'block'})}")
        return method, pattern
    choice("method", name, ("dictionary", *pruning.METHODS))
    if name != "dictionary":
        if init != "keep":
            raise ValueError(f"method={name!r} chooses the kept weights of a trained layer: it "
                             f"takes init='keep' (got init={init!r})")
        if old:
            raise ValueError(f"learner= and coding arguments {sorted(old)} are for "
                             f"method='dictionary', not method={name!r}")
        return Prune(name, sequential=sequential), pattern
    if nm is not None:
        raise ValueError("nm= is for the trained-model methods ('refit', 'sparsegpt', "
                         "'wanda', 'magnitude'), not method='dictionary'")
    return Learn(init, **old), pattern


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


def linear_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every ``nn.Linear`` module (exactly that class) of ``model`` by its first name: all the
    names it is reachable under (``m.a = m.b = nn.Linear(...)``: ``{'a': ['a', 'b']}``)."""
    names: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if type(m) is nn.Linear:
            names.setdefault(id(m), []).append(n)
    return {ns[0]: ns for ns in names.values()}


def select_linears(model: nn.Module, include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """Names of the ``nn.Linear`` modules (exactly that class) matching ``include`` (globs such as
    ``'blocks.*.mlp.fc*'`` or compiled regexes; default: all) and not ``exclude``. A module
    reachable under several names is listed once, by its first name; it is included when any
    of its names matches ``include`` and left out when any matches ``exclude``."""
    inc, exc = _patterns(include), _patterns(exclude)
    return [n for n, names in linear_aliases(model).items()
            if (not inc or any(_match(a, inc) for a in names))
            and not any(_match(a, exc) for a in names)]


def _ties(model: nn.Module, linears: dict[str, nn.Linear], aliases: dict[str, list[str]],
          untie: bool) -> None:
    """Refuse (``untie=False``) or warn about (``untie=True``) converting a layer whose weight
    or bias is also another module's parameter: the converted layer gets its own copy."""
    owners: dict[int, list[str]] = {}
    for pn, prm in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(prm), []).append(pn)
    for n, lin in linears.items():
        for what in ("weight", "bias"):
            prm = getattr(lin, what)
            own = {f"{a}.{what}" if a else what for a in aliases[n]}
            others = [o for o in owners.get(id(prm), []) if o not in own]
            if not others:
                continue
            tie = f"{n + '.' if n else ''}{what} is the same Parameter as {', '.join(others)}"
            if not untie:
                raise ValueError(f"{tie}: converting {n!r} would break that tie. Leave the layer "
                                 f"dense (exclude={n!r}), or pass untie=True to convert it "
                                 "anyway with its own copy")
            warnings.warn(f"{tie}: the converted {n!r} gets its own copy (untie=True); the tie "
                          "is broken", UserWarning, stacklevel=3)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule ``name`` — under every name that module is
    reachable by (a module shared by two parents is replaced in both)."""
    old = model.get_submodule(name)
    for n, m in list(model.named_modules(remove_duplicate=False)):
        if m is old and n:
            parent, _, child = n.rpartition(".")
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
            block: tuple[int, int] | None, tick=None) -> tuple[StructLearnedLinear, dict]:
    """The sparse layer of a trained ``linear`` by ``method`` (:mod:`~torch_structlearn.pruning`)
    and, when inputs were captured, its relative output error on them (``tick()`` after each
    block of columns the OBS methods process)."""
    H = None if stats is None else stats.H
    W = linear.weight.detach().to(torch.float32 if H is None else H.dtype)
    if stats is None:  # nothing captured: no data needed (magnitude) or nothing to choose
        method = "magnitude"
    if method == "magnitude":
        mask, kept = pruning.magnitude(W, density, nm, block), W
    elif method == "wanda":
        mask, kept = pruning.wanda(W, H, density, nm, block), W
    elif method == "sparsegpt":
        mask, kept = pruning.sparsegpt(W, H, density, nm=nm, block=block, tick=tick)
    else:  # refit: aims at the dense model's outputs when the statistics are paired
        mask, kept = pruning.obs_refit(stats.target(W), H, density, nm=nm, block=block,
                                       tick=tick)
    # built empty and filled from `kept` (from_linear would gather the old weights first: at
    # 2:4 on an 8192-wide layer, 0.6 GiB of index copies for values overwritten at once)
    layer = StructLearnedLinear(linear.in_features, linear.out_features,
                                bias=linear.bias is not None,
                                connectivity=Connectivity.from_mask(mask.cpu()), block=block,
                                device=linear.weight.device, dtype=linear.weight.dtype)
    layer.copy_csr_values_(kept[mask].to(layer.values))  # row-major = CSR order
    if linear.bias is not None:
        layer.bias.copy_(linear.bias)
    if kept is W:  # magnitude and wanda keep the weights as they are: the error needs them masked
        kept = W.masked_fill(~mask, 0)
    extra = {} if stats is None else {"output_error": stats.relative_error(W, kept)}
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
                batches: int | None, key: str, device, build, verbose: bool,
                dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
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
        stats = pruning.InputStatistics(linears[name].in_features, device, paired=True,
                                        dtype=dtype)
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
    method: Method = "refit",
    pattern: str | tuple[int, int] | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    batches: int | None = None,
    key: str = "x",
    seed: int = 0,
    untie: bool = False,
    verbose: bool = True,
    **deprecated,
) -> list[dict]:
    """Replace matching ``nn.Linear`` layers of ``model`` in place; returns a per-layer report.

    Args:
        model: any module; its ``nn.Linear`` layers named by ``include``/``exclude`` are replaced.
        loader: yields model inputs (tensors, ``(x, y)`` or dicts with ``key``); not needed for
            ``'magnitude'`` or when nothing is chosen (``density == 1`` keeping the weights).
        density: connection density of every converted layer (each unit keeps
            ``ceil(density·in)`` inputs).
        method: how the masks and the kept weights are chosen — a name or an object that
            carries its own settings, so that no combination is invalid:
            :class:`Prune` for a *trained* model (``'refit'``, the default; ``'sparsegpt'``,
            ``'wanda'``, ``'magnitude'``; ``Prune('refit', sequential=True)``), or
            :class:`Learn` (``'dictionary'``; ``Learn('random', lam_g=...)``) to read the
            masks off a dictionary of each layer's inputs, for training afterwards.
        pattern: the masks' shape: ``None`` (unstructured), ``'n:m'`` (``n`` of every ``m``
            consecutive inputs of a unit, e.g. ``'2:4'`` with ``density=0.5``) or blocks
            ``(bo, bi)`` / ``'4x4'`` (whole blocks, the same number per block row).
        include: globs on module names (``'blocks.*.mlp.fc*'``) or ``re.Pattern``: the layers
            converted (default: every ``nn.Linear``).
        exclude: globs or patterns of layers left dense.
        batches: batches per pass over ``loader`` (default: all).
        untie: convert a layer whose weight (or bias) is tied to another parameter (an output
            head sharing the embedding's weight) anyway, giving it its own copy, with a warning;
            by default that is a ``ValueError`` naming both parameters, before any work. A
            module reachable under several names is not a tie: it is converted once (its
            statistics from every call site) and every name then points to the converted layer.
        **deprecated: 0.1's ``init=``, ``nm=``, ``block=``, ``sequential=``, ``learner=``,
            ``epochs=``, ``rows_per_batch=`` and coding arguments, with a
            ``DeprecationWarning`` (one release).

    Returns:
        One dict per converted layer: ``name, in_features, out_features, density, nnz, seconds,
        method`` (and ``objective`` when a dictionary was learned; ``output_error``, the
        relative error ``‖W X − Ŵ X̂‖² / ‖W X‖²`` on the captured inputs — ``X̂ = X`` unless
        ``sequential`` — for :class:`Prune` methods that capture them; ``aliases``, the
        module's other names, when it has some).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    density = check_density(density)
    method = "refit" if method is None else method  # (0.1's spelling of the default)
    if deprecated:  # 0.1's keywords, and its coding arguments given directly
        _check_coding(None, {k: v for k, v in deprecated.items() if k not in _OLD_SPELLINGS})
        method, pattern = _from_old_spelling(method, pattern, dict(deprecated))
    method = _method(method)
    block, nm = parse_pattern(pattern)
    check_seed("seed", seed)
    if not isinstance(untie, bool):
        raise TypeError(f"untie must be a bool, got {untie!r}")
    if batches is not None:
        positive_int("batches", batches)
    names = select_linears(model, include, exclude)
    if not names:
        all_names = select_linears(model)
        raise ValueError(f"no nn.Linear matches include={include!r} exclude={exclude!r}; "
                         f"the model's nn.Linear layers are {all_names[:20]}"
                         + (" ..." if len(all_names) > 20 else ""))
    linears = {n: model.get_submodule(n) for n in names}
    aliases = linear_aliases(model)
    _ties(model, linears, aliases, untie)
    for n, lin in linears.items():
        if block is not None and (lin.out_features % block[0] or lin.in_features % block[1]):
            raise ValueError(f"pattern={pattern!r}: blocks {block} do not divide layer {n!r} of "
                             f"shape ({lin.out_features}, {lin.in_features})")
        if nm is not None:
            try:
                pruning.check_nm(nm, density, lin.in_features)
            except ValueError as e:
                raise ValueError(f"pattern={pattern!r}, layer {n!r}: {e}") from None
    trained = isinstance(method, Prune)
    keep = trained or method.init == "keep"
    everything = density == 1.0 and keep  # nothing to choose
    learn = not trained and not everything
    capture = learn or (trained and method.name != "magnitude" and not everything)
    epochs = 1 if trained else method.epochs
    sequential = trained and method.sequential
    if capture and loader is None:
        raise ValueError(f"a loader is needed to learn structures (method={method!r}, "
                         f"density={density})")
    if capture and (epochs > 1 or sequential):
        require_reiterable(loader, "convert with " + (f"epochs={epochs}" if epochs > 1
                                                      else "sequential=True"))

    learners: dict[str, DictionaryLearner] = {}
    stats: dict[str, pruning.InputStatistics] = {}
    seconds = dict.fromkeys(names, 0.0)
    device = next(iter(model.parameters()), torch.empty(0)).device
    extras: dict[str, dict] = {}

    def build(n: str, st: pruning.InputStatistics | None) -> nn.Module:
        t0 = time.perf_counter()
        blocks = 0 if st is None else pruning.column_blocks(method.name, linears[n].in_features,
                                                            nm, block)
        # a bar per layer long enough for one (its elapsed time stays on the finished bar)
        with tqdm(total=blocks, desc=f"convert {n} ({method.name})", unit="block",
                  disable=not verbose or blocks < 8) as bar:
            new, extras[n] = _pruned(linears[n], method.name, density, st, nm, block,
                                     tick=bar.update)
        seconds[n] += time.perf_counter() - t0
        return new

    was_training = model.training
    model.eval()
    try:
        if capture and sequential:
            t0 = time.perf_counter()
            built = _sequential(model, linears, loader, batches, key, device, build, verbose,
                                method.dtype)
            per_layer = (time.perf_counter() - t0 - sum(seconds.values())) / len(names)
            for n in names:  # the passes' time shared evenly
                seconds[n] += per_layer
        else:
            if capture:
                if learn:
                    learners = {n: learner_for(lin.out_features, method.learner, seed=seed,
                                               verbose=False, **method.coding)
                                for n, lin in linears.items()}
                else:
                    stats = {n: pruning.InputStatistics(lin.in_features, lin.weight.device,
                                                        dtype=method.dtype)
                             for n, lin in linears.items()}
                rows = 2048 if trained else method.rows_per_batch
                _capture(model, linears, loader, learners, stats, seconds, epochs, batches, key,
                         device, rows, seed, tqdm(range(epochs), desc="convert", unit="pass",
                                                  disable=not verbose))
            built = {}
            for n, lin in linears.items():
                if trained:
                    built[n] = build(n, stats.get(n))
                    continue
                t0 = time.perf_counter()
                D = learners[n].dictionary_ if learn else None
                learned = None if D is None else read_layer(D, density, "per_unit", block, nm)
                conn = (Connectivity.from_mask(torch.ones(lin.out_features, lin.in_features))
                        if learned is None else learned.connectivity)
                built[n] = _build(lin, conn, method.init, learned, block)
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
                       "method": method.name, **extras.get(n, {}),
                       **({"aliases": aliases[n][1:]} if len(aliases[n]) > 1 else {})})
    for n, new in built.items():  # swapped in only once every layer is built (every name)
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
        for p in passes:
            for x in _batches(loader, batches, key, device):
                model(x)
            idle = ([n for n, lr in learners.items() if not hasattr(lr, "dictionary_")]
                    + [n for n, st in stats.items() if st.n == 0])
            if idle:
                raise ValueError(f"layers {idle} got no input while the loader ran through "
                                 "the model (does forward() call them?); leave them out with "
                                 "exclude=")
            for name, lr in learners.items():
                if p == 0:
                    try:
                        lr.check_data()
                    except ValueError as e:
                        raise ValueError(f"layer {name!r} input: {e}") from None
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
    names = [n for n, m in model.named_modules() if isinstance(m, StructLearnedLinear)]  # (once each)
    built = {n: dense(model.get_submodule(n)) for n in names}
    for n, lin in built.items():
        replace_module(model, n, lin)
    return model
