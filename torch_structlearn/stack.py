"""``StructLearnedStack``: ``[StructLearnedLinear → ReLU → GroupPool] × depth``, whose
connectivity *and depth* are learned bottom-up from unlabelled data (docs/algorithm.md §5)."""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .checks import choice, positive_int
from .checks import seed as check_seed
from .connectivity import Connectivity
from .distributed import all_reduce, broadcast, world_size
from .entropy import coding_efficiency
from .io import MAX_FEATURES, Codec, FileCheck, Record, register
from .layers import StructLearnedLinear, layer_from_record
from .learn import CODING_SETTINGS, check_settings, format_report, learn_layer
from .loaders import MappedLoader, batches, first_batch
from .pooling import GroupPool, check_mode, learn_groups
from .progress import tqdm

__all__ = ["StructLearnedStack"]


def _block(layer: StructLearnedLinear, group_size: int, pool: str) -> nn.Sequential:
    """One block of the stack: ``layer → ReLU → GroupPool``."""
    return nn.Sequential(layer, nn.ReLU(), GroupPool(group_size, pool))


# arguments the stack sets itself; every other argument of ``learn.learn_structure`` (and
# ``score_samples``) may be given as ``**learn_kw`` or ``learn_structure(**overrides)``
_OWN = frozenset({"loader", "out_features", "density", "group_size", "device"})


def _check_learn_kw(kw: dict, *, width: int, density: float, group_size: int) -> None:
    """Names and values of the learning arguments (the constructor's ``**learn_kw``, merged
    with :meth:`StructLearnedStack.learn_structure`'s overrides), before any work starts."""

    own = {n for n, p in inspect.signature(learn_layer).parameters.items()
           if p.kind is p.KEYWORD_ONLY}
    accepted = ((own | CODING_SETTINGS) - _OWN) | {"score_samples"}
    unknown = sorted(set(kw) - accepted)
    if unknown:
        raise TypeError(f"unexpected learning argument(s) {unknown}; accepted: {sorted(accepted)}")
    if "score_samples" in kw and positive_int("score_samples", kw["score_samples"]) < 2:
        raise ValueError(f"score_samples must be >= 2 (the score estimates entropies), got "
                         f"{kw['score_samples']}")
    settings = {k: v for k, v in kw.items() if k in CODING_SETTINGS}
    check_settings(width, density, mode=kw.get("mode", "per_unit"), block=kw.get("block"),
                   learner=kw.get("learner"), **{**settings, "group_size": group_size})


def _keeps(depth: int, gain: float, min_gain: float) -> bool:
    """The stopping rule for layer ``depth`` (0-based): the first layer is always kept, a later
    one when its relative score gain is at least ``min_gain``."""
    return depth == 0 or gain >= min_gain


def rule_depth(gains: list[float], min_gain: float) -> int:
    """The depth the stopping rule keeps, given each grown layer's relative score gain (a
    stack's ``report`` rows, grown with the rule off): growth stops at the first layer the rule
    rejects, as in :meth:`StructLearnedStack.learn_structure` (growth is greedy, so the kept
    layers are the same)."""
    depth = 0
    while depth < len(gains) and _keeps(depth, gains[depth], min_gain):
        depth += 1
    return depth


class StructLearnedStack(nn.Module):
    """A stack of structure-learned layers: ``(*, in_features) → (*, width / group_size)``.

    Each block is ``StructLearnedLinear(in, width) → ReLU → GroupPool(group_size, pool)``; block
    ``l + 1`` reads block ``l``'s pooled outputs. Before :meth:`learn_structure` the stack has
    ``depth`` (default ``max_depth``) blocks with random connectivity of the given density.

    Args:
        in_features: input size.  width: units per layer ``K`` (before pooling).
        max_depth: most layers :meth:`learn_structure` may grow.
        density: connection density of every layer.
        group_size: units per pooling group (also the group-penalty groups).
        pool: the pooling mode (``'l2'``, ``'max'`` or ``'mean'``).
        groups: ``'contiguous'`` (the group-penalty blocks, default) or ``'learned'``: after each
            layer is learned, its units are regrouped by clustering on ``corr(h_j², h_k²)``
            (:func:`~torch_structlearn.pooling.learn_groups`).
        min_gain: stop when the relative gain of the coding-efficiency score falls below it.
        depth: initial number of (random) blocks, 1 to ``max_depth``, default ``max_depth``.
        **learn_kw: defaults for :meth:`learn_structure` (``lam1``, ``lam_g``, ``epochs``,
            ``mode``, ``block``, ``nonneg``, ``active_fraction``, ``memory``, ``max_iter``,
            ``seed``, ``score_samples``, ``verbose``).

    Attributes:
        report: after learning, one dict per tried layer: ``K, density, score, gain,
            objective, seconds, kept``; ``print(stack.format_report())`` shows it as a table.
    """

    def __init__(self, in_features: int, width: int, *, max_depth: int = 3, density: float = 0.05,
                 group_size: int = 4, pool: str = "l2", min_gain: float = 0.01,
                 groups: str = "contiguous", depth: int | None = None, backend: str = "auto", device=None, dtype=None,
                 _layers: list[StructLearnedLinear] | None = None, **learn_kw) -> None:
        super().__init__()
        positive_int("in_features", in_features)
        positive_int("max_depth", max_depth)
        if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)):
            raise TypeError(f"min_gain must be a number, got {type(min_gain).__name__} {min_gain!r}")
        if math.isnan(min_gain):
            raise ValueError("min_gain must not be NaN (-inf grows the stack to max_depth)")
        _check_learn_kw(learn_kw, width=width, density=density, group_size=group_size)
        check_mode(pool, "pool")
        choice("groups", groups, ("contiguous", "learned"))
        self.groups = groups
        depth = max_depth if depth is None else positive_int("depth", depth)
        if depth > max_depth:
            raise ValueError(f"depth must be <= max_depth ({max_depth}), got {depth}")
        self.in_features, self.width, self.max_depth = in_features, width, max_depth
        self.density, self.group_size, self.pool, self.min_gain = density, group_size, pool, min_gain
        self.backend, self.learn_kw = backend, learn_kw
        self._factory = {"device": device, "dtype": dtype}
        if _layers is None:  # random layers (io.load passes the file's instead)
            _layers = [StructLearnedLinear(in_features if i == 0 else width // group_size, width,
                                           density=density, backend=backend, **self._factory)
                       for i in range(depth)]
        self.layers = nn.ModuleList(_block(layer, group_size, pool) for layer in _layers)
        self.report: list[dict] = []

    @property
    def depth(self) -> int:
        """Number of blocks (learned, or random before :meth:`learn_structure`)."""
        return len(self.layers)

    @property
    def out_features(self) -> int:
        """Size of the pooled output, ``width // group_size``."""
        return self.width // self.group_size

    def forward(self, x: Tensor) -> Tensor:
        for block in self.layers:
            x = block(x)
        return x

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, width={self.width}, depth={self.depth}, "
                f"max_depth={self.max_depth}, density={self.density}, group_size={self.group_size}, "
                f"pool={self.pool!r}")

    def format_report(self) -> str:
        """:attr:`report` as a text table, one line per tried layer."""

        return format_report(self.report)

    @torch.no_grad()
    def learn_structure(self, loader: Iterable, **overrides) -> StructLearnedStack:
        """Grow the stack bottom-up on ``loader`` (unlabelled; tensors, ``(x, y)`` or dicts).

        Layer ``l`` is learned by :func:`~torch_structlearn.learn.learn_structure` on the
        (mean-centred) pooled outputs of layers ``< l``; its weights start from the dictionary.
        After each layer the coding-efficiency score ``E_l``
        (:func:`~torch_structlearn.entropy.coding_efficiency`) of its pooled outputs is computed
        on up to ``score_samples`` examples; from the second layer on, a layer whose relative
        gain ``(E_l − E_{l−1}) / |E_{l−1}|`` is below ``min_gain`` is dropped and growth stops.
        The first layer is always kept (its gain is reported against the input's score).

        Under ``torch.distributed`` each rank passes its own shard of the data: the dictionary
        statistics and the centring means are all-reduced and rank 0's score decides the depth,
        so every rank ends with the same stack.
        """
        kw = {**self.learn_kw, **overrides}
        _check_learn_kw(kw, width=self.width, density=self.density, group_size=self.group_size)
        key = kw.pop("key", "x")
        verbose = kw.pop("verbose", True)
        score_samples = kw.pop("score_samples", 5000)
        first_batch(loader, key=key, in_features=self.in_features)
        device = self._factory["device"]

        def sample(fn) -> Tensor:
            out, n = [], 0
            for x in batches(loader, key=key, device=device):
                out.append(fn(x).float())
                n += x.shape[0]
                if n >= score_samples:
                    break
            return torch.cat(out)[:score_samples]

        blocks: list[nn.Module] = []
        prefix = nn.Sequential()
        prev = coding_efficiency(sample(lambda x: x))
        distributed = world_size() > 1 and kw.get("distributed", True) is not False
        if distributed:
            prev = float(broadcast(torch.tensor([prev], dtype=torch.float64)))
        rows = []
        bar = tqdm(range(self.max_depth), desc="layers", unit="layer", disable=not verbose)
        for depth in bar:
            t0 = time.perf_counter()
            in_l = self.in_features if depth == 0 else self.out_features
            total = torch.zeros(in_l + 1, dtype=torch.float64)  # feature sums, then the count
            for x in batches(loader, key=key, device=device):
                h = prefix(x)
                total[:-1] += h.sum(0).double().cpu()
                total[-1] += h.shape[0]
            if distributed:
                total = all_reduce(total)
            mu = (total[:-1] / total[-1]).float()
            centred = MappedLoader(loader, lambda x, p=prefix, m=mu: p(x) - m.to(x), key=key,
                                   device=device)
            learned, rep = learn_layer(
                centred, self.width, density=self.density, group_size=self.group_size,
                key=key, verbose=verbose, device=device, **kw)
            block = _block(StructLearnedLinear(in_l, self.width, connectivity=learned.connectivity,
                                               backend=self.backend, **self._factory),
                           self.group_size, self.pool)
            layer = block[0]
            layer.copy_csr_values_(learned.values)
            layer.bias.copy_(-(layer.dense_weight() @ mu.to(layer.values)))  # fold the centring
            if self.groups == "learned":
                H = sample(lambda x, p=prefix, b=block: b[1](b[0](p(x))))
                block[2] = GroupPool(self.group_size, self.pool,
                                     permutation=learn_groups(H, self.group_size))
            score = coding_efficiency(sample(lambda x, p=prefix, b=block: b(p(x))))
            if distributed:  # rank 0's estimate decides, so every rank takes the same path
                score = float(broadcast(torch.tensor([score], dtype=torch.float64)))
            gain = (score - prev) / abs(prev) if prev != 0 else float("inf")
            keep = _keeps(depth, gain, self.min_gain)
            rep.update(score=score, gain=gain, kept=keep, seconds=time.perf_counter() - t0)
            rows.append(rep)
            bar.set_postfix(score=f"{score:.4f}", gain=f"{gain:+.4f}")
            if not keep:
                break
            blocks.append(block)
            prefix = nn.Sequential(*blocks)
            prev = score
        bar.close()
        self.layers = nn.ModuleList(blocks)
        self.report = rows
        if verbose:
            print(self.format_report())
        return self

    @classmethod
    def random_like(cls, other: StructLearnedStack, *, seed: int | None = None) -> StructLearnedStack:
        """Same depth, widths, per-unit fan-in and pooling groups (copied) as ``other``, random
        connectivity (a baseline); layer ``i`` draws with ``seed + i`` (``None``: torch's global
        generator)."""
        if seed is not None:
            seed = check_seed("seed", seed)
        new = cls(other.in_features, other.width, max_depth=other.max_depth, density=other.density,
                  group_size=other.group_size, pool=other.pool, min_gain=other.min_gain,
                  depth=other.depth, backend=other.backend, **other._factory, **other.learn_kw)
        for i, (mine, theirs) in enumerate(zip(new.layers, other.layers, strict=True)):
            src = theirs[0]
            fan = src.fan_in
            if not bool((fan == fan[0]).all()):
                raise ValueError("random_like needs equal fan-in per unit (mode='per_unit')")
            conn = Connectivity.random((src.out_features, src.in_features), fan_in=int(fan[0]),
                                       seed=None if seed is None else seed + i)
            mine[0].set_connectivity(conn)
            mine[2] = copy.deepcopy(theirs[2])  # same pooling groups, in a module of its own
        return new


# ------------------------------------------------------------------ file format (io.format)
CONFIG = {"in_features": int, "width": int, "max_depth": int, "group_size": int,
          "pool": str, "groups": str, "density": float, "min_gain": float}


def encode(stack: StructLearnedStack) -> tuple[dict, list, dict[str, Tensor]]:
    """A stack's header config, layers and pool permutations (every layer's, identity where
    unset, when any is set or the groups are learned; then the config says 'learned')."""
    config = {k: getattr(stack, k) for k in CONFIG}
    pools = [block[2].permutation for block in stack.layers]
    tensors = {}
    if config["groups"] == "learned" or any(p is not None for p in pools):
        config["groups"] = "learned"
        tensors = {f"layers.{i}.pool_permutation": (torch.arange(stack.width) if p is None else p).long()
                   for i, p in enumerate(pools)}
    return config, [block[0] for block in stack.layers], tensors


def check_config(f: FileCheck, config: dict, keys: dict, name: str, optional=frozenset()) -> None:
    """``config`` has exactly ``keys`` (plus ``optional`` ones), each of its type (ints within
    the format's sizes, floats not NaN)."""
    if set(config) - set(optional) != set(keys):
        f.fail(f"a {name} config must have exactly the keys {sorted(keys)}"
               + (f" (and optionally {sorted(optional)})" if optional else ""))
    for k, typ in keys.items():
        v = config[k]
        if typ is bool:
            ok = isinstance(v, bool)
        elif typ is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
        elif typ is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_FEATURES
        else:
            ok = isinstance(v, typ) and not isinstance(v, bool)
        if not ok:
            f.fail(f"config {k!r} must be {typ.__name__}, got {v!r:.100}")


def check(f: FileCheck, config: dict, layers: list, keys: dict = CONFIG,
          name: str = "StructLearnedStack", optional=frozenset()) -> set[str]:
    """The stack's checks of a file (layer shapes against the config, pool permutations);
    returns the permutation keys the file must hold."""
    check_config(f, config, keys, name, optional)
    if config["groups"] not in ("contiguous", "learned"):
        f.fail(f"config 'groups' must be 'contiguous' or 'learned', got {config['groups']!r:.100}")
    w, g = config["width"], config["group_size"]
    if g < 1 or w < 1 or w % g or config["in_features"] < 1 or len(layers) > config["max_depth"]:
        f.fail("inconsistent stack config")
    expected = set()
    for i, L in enumerate(layers):
        want = (config["in_features"] if i == 0 else w // g, w)
        if (L["in_features"], L["out_features"]) != want:
            f.fail(f"layer {i}: shape does not match the stack config, expected in/out {want}")
        if config["groups"] == "learned":
            key = f"layers.{i}.pool_permutation"
            f.entry(key, {"I64"}, [w])
            expected.add(key)
    return expected


def decode(f: FileCheck, config: dict, records: list[Record], tensors: dict[str, Tensor]
           ) -> StructLearnedStack:
    """The stack a checked file describes, built from its layers (no random layer first)."""
    c = config
    try:
        stack = StructLearnedStack(c["in_features"], c["width"], max_depth=c["max_depth"],
                                   density=c["density"], group_size=c["group_size"],
                                   pool=c["pool"], min_gain=c["min_gain"], groups=c["groups"],
                                   depth=len(records), dtype=records[0].values.dtype,
                                   _layers=[layer_from_record(r) for r in records])
    except (TypeError, ValueError) as e:
        f.fail(f"invalid stack config: {e}")
    for i, block in enumerate(stack.layers):
        perm = tensors.get(f"layers.{i}.pool_permutation")
        if perm is not None:
            try:
                block[2] = GroupPool(c["group_size"], c["pool"], permutation=perm)
            except ValueError as e:
                f.fail(f"layer {i}: invalid pool_permutation: {e}")
    return stack


register(Codec("StructLearnedStack", lambda m: isinstance(m, StructLearnedStack), encode, check,
               decode))
