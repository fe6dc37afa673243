"""Entropy estimators for layer outputs (docs/algorithm.md §5).

* :func:`marginal_entropy` — per unit, differential entropy from a histogram of the
  *standardised* unit (so it is comparable across units and layers; a Gaussian gives
  ½·log(2πe) ≈ 1.419 nats, a constant unit gives ``log(bin width)``).
* :func:`gaussian_total_correlation` — ``TC = −½ log det corr(Y)``: the redundancy between units
  under a Gaussian model (0 for uncorrelated units).
* :func:`coding_efficiency` — ``E = (Σ_k H(y_k) − TC(y)) / K``, the joint-entropy estimate per
  unit, used to decide depth. (Per unit, so that layers of different widths compare.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import penalty, positive, positive_int

__all__ = ["marginal_entropy", "gaussian_total_correlation", "coding_efficiency"]


def _standardise(Y: Tensor) -> tuple[Tensor, Tensor]:
    if Y.dim() != 2 or Y.shape[0] < 2:
        raise ValueError(f"Y must be (N, K) with N >= 2 samples, got shape {tuple(Y.shape)}")
    if not torch.isfinite(Y).all():
        raise ValueError(f"Y has {int((~torch.isfinite(Y)).sum())} NaN/Inf entries")
    Y = Y.double()
    std = Y.std(0)
    const = std <= 1e-12 * (1 + Y.abs().amax(0))
    Z = (Y - Y.mean(0)) / torch.where(const, torch.ones_like(std), std)
    return Z, const


def marginal_entropy(Y: Tensor, bins: int = 64, limit: float = 6.0) -> Tensor:
    """``(K,)`` histogram estimate (nats) of each standardised unit's differential entropy.

    ``Y``: ``(N, K)``. Values beyond ``±limit`` standard deviations go to the end bins.
    """
    positive_int("bins", bins)
    positive("limit", limit)
    Z, _ = _standardise(Y)
    N, K = Z.shape
    width = 2 * limit / bins
    idx = ((Z + limit) / width).floor().clamp_(0, bins - 1).long()
    idx += torch.arange(K, device=Z.device) * bins
    counts = torch.bincount(idx.flatten(), minlength=K * bins).view(K, bins).double()
    p = counts / N
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return -plogp.sum(1) + math.log(width)


def gaussian_total_correlation(Y: Tensor, ridge: float = 1e-6) -> float:
    """``−½ log det corr(Y)`` for ``Y (N, K)``; constant units count as independent."""
    penalty("ridge", ridge)
    Z, const = _standardise(Y)
    C = Z.T @ Z / (Z.shape[0] - 1)
    C.diagonal().copy_(torch.where(const, torch.ones_like(C.diagonal()), C.diagonal()))
    C = C + ridge * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    sign, logdet = torch.linalg.slogdet(C)
    return float(-0.5 * logdet) if sign > 0 else float("inf")


def coding_efficiency(Y: Tensor, bins: int = 64) -> float:
    """``(Σ_k H(y_k) − TC_gauss(y)) / K`` for ``Y (N, K)``: higher = more information per unit."""
    return (float(marginal_entropy(Y, bins).sum()) - gaussian_total_correlation(Y)) / Y.shape[1]
