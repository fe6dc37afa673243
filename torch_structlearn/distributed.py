"""``torch.distributed`` collectives the learner and the stack use when several ranks learn
one structure on their own shards of the data (a no-op world of 1 when not running)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["world_size", "all_reduce", "all_gather_rows", "broadcast"]


def world_size() -> int:
    """Number of processes in the default ``torch.distributed`` group (1 when not running)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(t: Tensor) -> Tensor:
    """``t`` summed over the ranks, in place."""
    dist.all_reduce(t)
    return t


def broadcast(t: Tensor) -> Tensor:
    """Rank 0's ``t`` on every rank, in place."""
    dist.broadcast(t, 0)
    return t


def all_gather_rows(X: Tensor) -> Tensor:
    """``cat`` of every rank's ``X (n_rank, ...)`` in rank order (row counts may differ)."""
    n = torch.tensor([X.shape[0]], device=X.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(sizes))
    padded = torch.zeros(m, *X.shape[1:], dtype=X.dtype, device=X.device)
    padded[: X.shape[0]] = X
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(k)] for p, k in zip(parts, sizes, strict=True)])
