"""``GroupPool``: pool units over groups (docs/algorithm.md §4) — the invariance the group penalty
creates. Groups are contiguous blocks of ``group_size`` units, optionally after a permutation
learned by clustering units on ``corr(h_j², h_k²)`` (:func:`learn_groups`).
"""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor, nn

from .checks import choice, positive_int

__all__ = ["GroupPool", "learn_groups"]

_MODES = ("l2", "max", "mean")


def check_mode(mode: str, name: str = "mode") -> str:
    """``mode`` when it is a pooling mode, else ``ValueError`` naming the argument ``name``."""
    return choice(name, mode, _MODES)


def check_permutation(permutation, group_size: int, num_features: int | None = None) -> Tensor:
    """``permutation`` as a ``(K,)`` long tensor when it is a permutation of ``range(K)`` whose
    ``K`` is ``num_features`` (when given) and a multiple of ``group_size``, else ``ValueError``."""
    permutation = torch.as_tensor(permutation, dtype=torch.long)
    K = permutation.numel()
    if num_features is not None and num_features != K:
        raise ValueError(f"permutation has {K} entries, num_features is {num_features}")
    if not torch.equal(permutation.sort().values, torch.arange(K)):
        raise ValueError("permutation must be a permutation of range(num_features)")
    if K % group_size:
        raise ValueError(f"group_size={group_size} must divide num_features={K}")
    return permutation


class GroupPool(nn.Module):
    """Pool ``(*, K)`` → ``(*, K / group_size)`` over groups of units.

    Args:
        group_size: units per group (must divide ``K``).
        mode: ``'l2'`` (``sqrt(Σ h²)``, default), ``'max'`` or ``'mean'``.
        num_features: ``K``; needed only with ``permutation``.
        permutation: optional ``(K,)`` order of units; groups are contiguous in that order.
    """

    def __init__(self, group_size: int, mode: str = "l2", *, num_features: int | None = None,
                 permutation: Tensor | None = None) -> None:
        super().__init__()
        positive_int("group_size", group_size)
        self.group_size, self.mode = group_size, check_mode(mode)
        if permutation is not None:
            permutation = check_permutation(permutation, group_size, num_features)
        self.register_buffer("permutation", permutation)

    def forward(self, h: Tensor) -> Tensor:
        if h.shape[-1] % self.group_size:
            raise ValueError(f"group_size={self.group_size} must divide the last dimension {h.shape[-1]}")
        if self.permutation is not None:
            if h.shape[-1] != self.permutation.numel():
                raise ValueError(f"GroupPool with learned groups pools {self.permutation.numel()} "
                                 f"units, got input of shape {tuple(h.shape)}")
            h = h.index_select(-1, self.permutation)
        if self.mode == "l2":
            # sqrt has an infinite gradient at 0: a tiny floor keeps all-zero groups trainable.
            return reduce(h.square(), "... (g s) -> ... g", "sum", s=self.group_size).add(1e-12).sqrt()
        return reduce(h, "... (g s) -> ... g", self.mode, s=self.group_size)

    def extra_repr(self) -> str:
        learned = ", learned groups" if self.permutation is not None else ""
        return f"group_size={self.group_size}, mode={self.mode!r}{learned}"


def learn_groups(H: Tensor, group_size: int) -> Tensor:
    """A ``(K,)`` permutation putting units with correlated energies ``h²`` in the same group.

    Greedy clustering on ``corr(h_j², h_k²)`` of ``H (N, K)``: repeatedly take the unassigned
    unit with the highest total correlation to the others and give it its ``group_size - 1``
    most correlated unassigned partners.
    """
    positive_int("group_size", group_size)
    if not isinstance(H, Tensor) or H.dim() != 2:
        raise ValueError(f"H must be a 2-D (N, K) tensor, got "
                         f"{tuple(H.shape) if isinstance(H, Tensor) else type(H).__name__}")
    N, K = H.shape
    if K % group_size:
        raise ValueError(f"group_size={group_size} must divide K={K}")
    E = H.double().square()
    E = E - E.mean(0)
    E = E / E.norm(dim=0).clamp_min(1e-12)
    C = E.T @ E
    C.fill_diagonal_(float("-inf"))
    free = torch.ones(K, dtype=torch.bool)
    order = []
    strength = torch.where(torch.isfinite(C), C, torch.zeros_like(C)).sum(1)
    while free.any():
        seed = int(torch.where(free, strength, torch.full_like(strength, float("-inf"))).argmax())
        free[seed] = False
        row = torch.where(free, C[seed], torch.full_like(C[seed], float("-inf")))
        mates = row.topk(group_size - 1).indices if group_size > 1 else row.new_empty(0, dtype=torch.long)
        free[mates] = False
        order += [seed, *mates.tolist()]
    return torch.tensor(order, dtype=torch.long)
