"""Dynamic sparse training: the masks of a model's ``StructLearnedLinear`` layers change while
it trains — RigL (Evci et al., 2020, "Rigging the Lottery: Making All Tickets Winners") and
SET (Mocanu et al., 2018, "Scalable training of artificial neural networks with adaptive
sparse connectivity"), written from the papers.

Every ``update_every`` optimizer steps (until ``stop`` of ``total_steps``), each unit of each
layer drops the ``n`` connections of smallest ``|w|`` and grows ``n`` new ones among the
inputs it is not connected to (a dropped one may come back), so every unit keeps its fan-in:

* ``'rigl'`` grows where the dense gradient ``|∂L/∂W|`` of the update step's batch is largest
  (``gyᵀ x``, from the layer's input and output gradient captured on that step only);
* ``'set'`` grows at random.

``n = round(f_t · fan_in)`` with RigL's cosine-decayed fraction
``f_t = fraction · (1 + cos(π t / (stop · total_steps))) / 2``. Grown weights start at zero;
the weights that stay keep their values *and their optimizer state* (Adam's moments, SGD's
momentum), moved with them to their new place in the CSR order; a grown weight's state starts
at zero. The structure changes in place (same ``nnz``, same ``values`` tensor), so the
optimizer keeps its parameters and the layer re-checks and re-plans its next call.

    dst = DynamicSparsity(model, optimizer, method="rigl", update_every=100,
                          total_steps=epochs * len(loader))
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        dst.step()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import choice, density, positive_int
from .checks import density as check_density
from .checks import seed as check_seed
from .layers import StructLearnedLinear

__all__ = ["DynamicSparsity", "erk_densities", "update_mask"]


def erk_densities(shapes: Sequence[tuple[int, int]], density: float) -> list[float]:
    """Erdős–Rényi-Kernel layer densities (RigL's ERK, after SET's Erdős–Rényi) for linear
    layers of ``shapes`` ``(out_features, in_features)`` that keep ``density`` of all their
    weights: layer ``l`` gets ``ε (in_l + out_l) / (in_l · out_l)``, with ``ε`` such that
    ``Σ_l density_l · in_l · out_l = density · Σ_l in_l · out_l``; a layer that would exceed 1
    is made dense and ``ε`` found again for the others. Small layers get more of the budget
    than a uniform density gives them, wide ones less.

    >>> erk_densities([(256, 3072), (256, 64)], 0.05)   # doctest: +ELLIPSIS
    [0.0465..., 0.2149...]
    """
    density = check_density(density)
    if not shapes:
        raise ValueError("shapes must name at least one (out_features, in_features) layer")
    for shape in shapes:
        if len(shape) != 2:
            raise ValueError(f"each shape must be (out_features, in_features), got {shape!r}")
        for n in shape:
            positive_int("out_features/in_features", n)
    sizes = [o * i for o, i in shapes]
    raw = [(o + i) / (o * i) for o, i in shapes]
    dense: set[int] = set()
    while len(dense) < len(shapes):
        budget = density * sum(sizes) - sum(sizes[j] for j in dense)
        eps = budget / sum(raw[j] * sizes[j] for j in range(len(shapes)) if j not in dense)
        over = {j for j in range(len(shapes)) if j not in dense and eps * raw[j] > 1}
        if not over:
            return [1.0 if j in dense else eps * raw[j] for j in range(len(shapes))]
        dense |= over
    return [1.0] * len(shapes)


@torch.no_grad()
def update_mask(weight: Tensor, mask: Tensor, n: Tensor | int, grow_scores: Tensor) -> Tensor:
    """The new ``(out, in)`` bool mask: per row, drop the ``n`` kept entries of smallest
    ``|weight|``, then grow ``n`` among the entries not kept after the drop with the largest
    ``grow_scores`` — every row keeps its count. ``n`` is an int or ``(out,)`` per row; it must
    not exceed a row's kept count nor its free count."""
    out, d = mask.shape
    kept = mask.sum(1)
    n = torch.as_tensor(n, device=mask.device).expand(out).long()
    if bool((n > kept).any() or (n > d - kept).any()):
        raise ValueError("n exceeds a row's kept or free entries")
    width = int(n.max()) if out else 0
    if width == 0:
        return mask.clone()
    ranks = torch.arange(width, device=mask.device).expand(out, width)
    take = ranks < n[:, None]  # the first n of each row's candidates
    rows = torch.arange(out, device=mask.device)[:, None].expand(out, width)
    drop_score = weight.abs().masked_fill(~mask, float("inf"))
    drop = drop_score.topk(width, dim=1, largest=False).indices
    new = mask.clone()
    new[rows[take], drop[take]] = False
    grow_score = grow_scores.masked_fill(new, float("-inf"))
    grow = grow_score.topk(width, dim=1).indices
    new[rows[take], grow[take]] = True
    return new


class DynamicSparsity:
    """RigL or SET mask updates for every ``StructLearnedLinear`` of ``model`` (module
    docstring), driven by :meth:`step` after each ``optimizer.step()``.

    Args:
        model: the model; its unstructured ``StructLearnedLinear`` layers are updated (block
            layers are refused).
        optimizer: the optimizer of the model's parameters (its per-parameter state is moved
            with the weights).
        method: ``'rigl'`` (grow by gradient magnitude) or ``'set'`` (grow at random).
        update_every: ``ΔT``, optimizer steps between mask updates (RigL: 100).
        fraction: the fraction of each unit's connections updated at the first update, decayed
            by a cosine to 0 at ``stop`` (RigL: 0.3; SET used a constant 0.3).
        total_steps: the training's optimizer steps.
        stop: updates stop after this fraction of ``total_steps`` (RigL: 0.75).
        seed: SET's random growth.

    Attributes: ``steps`` (calls of :meth:`step`), ``updates`` (one dict per mask update:
    ``step``, ``fraction``, ``changed`` — connections moved over all layers).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 method: str = "rigl", update_every: int = 100, fraction: float = 0.3,
                 total_steps: int, stop: float = 0.75, seed: int = 0) -> None:
        choice("method", method, ("rigl", "set"))
        positive_int("update_every", update_every)
        positive_int("total_steps", total_steps)
        self.fraction = density(fraction, "fraction")  # (the rule for (0, 1])
        self.stop = density(stop, "stop")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, StructLearnedLinear)}
        if not self.layers:
            raise ValueError("the model has no StructLearnedLinear layer to update")
        blocks = [n for n, m in self.layers.items() if m.block is not None]
        if blocks:
            raise ValueError(f"layers {blocks} are block-sparse: dynamic sparsity updates "
                             "unstructured layers only")
        params = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, m in self.layers.items() if id(m.values) not in params]
        if missing:
            raise ValueError(f"the optimizer does not hold the values of layers {missing}")
        self.model, self.optimizer, self.method = model, optimizer, method
        self.update_every, self.total_steps = update_every, total_steps
        # a stream of its own: seeded with `seed` itself, SET's first draw would be the very
        # scores Connectivity.random(seed=seed) kept, and regrow exactly what it dropped
        self.generator = torch.Generator().manual_seed(
            (check_seed("seed", seed) * 2654435761 + 0x5E7) % 2**63)
        self.steps, self.updates = 0, []
        self._captured: dict[str, list[Tensor]] = {}
        self._handles: list = []
        if self._update_due(1):  # (update_every = 1: the first step already needs gradients)
            self._arm()

    # ------------------------------------------------------------------ schedule
    def fraction_at(self, step: int) -> float:
        """RigL's cosine-decayed update fraction at optimizer step ``step`` (0 from ``stop``)."""
        end = self.stop * self.total_steps
        return 0.0 if step >= end else self.fraction * (1 + math.cos(math.pi * step / end)) / 2

    def _update_due(self, step: int) -> bool:
        return step % self.update_every == 0 and self.fraction_at(step) > 0

    # ------------------------------------------------------------------ gradient capture
    def _arm(self) -> None:
        """Capture each layer's input and output gradient during the next forward/backward
        (RigL's dense gradient needs them; only the update step pays for it)."""
        if self.method != "rigl" or self._handles:
            return
        self._captured = {}

        def hook(name):
            def forward(module, args, output):
                x = args[0].detach().reshape(-1, module.in_features)
                if output.requires_grad:
                    def keep(gy, name=name, x=x):
                        self._captured.setdefault(name, []).append(
                            (x, gy.detach().reshape(-1, gy.shape[-1])))
                    output.register_hook(keep)
            return forward

        self._handles = [m.register_forward_hook(hook(n)) for n, m in self.layers.items()]

    def _disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ the update
    def step(self) -> None:
        """Call after ``optimizer.step()``: on an update step, every layer's mask is updated."""
        self.steps += 1
        if self._update_due(self.steps):
            self._update(self.steps)
        if self._update_due(self.steps + 1):
            self._arm()

    @torch.no_grad()
    def _update(self, step: int) -> None:
        f = self.fraction_at(step)
        captured, self._captured = self._captured, {}
        self._disarm()
        if self.method == "rigl" and len(captured) < len(self.layers):
            missing = sorted(set(self.layers) - set(captured))
            raise RuntimeError(f"no gradient was captured for layers {missing} on step {step}: "
                               "call step() once after every optimizer.step(), with a backward "
                               "through the model in between")
        changed = 0
        for name, layer in self.layers.items():
            changed += self._update_layer(layer, f, captured.get(name))
        self.updates.append({"step": step, "fraction": f, "changed": changed})

    def _update_layer(self, layer: StructLearnedLinear, f: float, pairs) -> int:
        conn = layer.connectivity
        mask = conn.to_mask().to(layer.values.device)
        out, d = mask.shape
        fan = mask.sum(1)
        n = torch.minimum((f * fan).round().long(), d - fan)
        if self.method == "rigl":
            grad = sum(gy.T.to(x.dtype) @ x for x, gy in pairs)  # the dense ∂L/∂W, (out, in)
            scores = grad.abs()
        else:
            scores = torch.rand(out, d, generator=self.generator).to(mask.device)
        weight = layer.dense_weight().detach()
        new = update_mask(weight, mask, n, scores)
        moved = int((new & ~mask).sum())
        if moved == 0:
            return 0
        # the old position (in the CSR order) of every entry of the new structure, -1 if grown
        old_pos = torch.full((out, d), -1, dtype=torch.long, device=mask.device)
        old_pos[mask] = torch.arange(int(mask.sum()), device=mask.device)  # row-major = CSR
        src = old_pos[new]
        kept = src >= 0
        col = new.nonzero()[:, 1].to(layer.col_indices)
        values = layer.values  # the optimizer's parameter: changed in place
        for t in (values, *self._state_of(values)):  # (state tensors of values' shape)
            flat = t.view(-1)
            moved_t = torch.zeros_like(flat)
            moved_t[kept] = flat[src[kept]]
            flat.copy_(moved_t)
        if values.grad is not None:
            values.grad = None  # a gradient of the old order would be applied to the new one
        layer.col_indices.copy_(col)  # same per-row counts: crow_indices unchanged
        return moved

    def _state_of(self, p: Tensor) -> list[Tensor]:
        """The optimizer's per-entry state tensors of ``p`` (moments, momentum)."""
        state = self.optimizer.state.get(p, {})
        return [v for v in state.values() if isinstance(v, Tensor) and v.shape == p.shape]

