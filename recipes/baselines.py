"""Connectivity baselines for the [repro] experiments, each at a given density of a
``(K, d)`` first layer: random-local, a sparsifying RBM, SNIP and SynFlow (pruning at init).
(Random connectivity is ``Connectivity.random``; dense is ``nn.Linear``.)"""

from __future__ import annotations

import math

import torch
from torch import nn

from torch_structlearn import Connectivity
from torch_structlearn.connectivity import fan_in_for_density


def random_local(K: int, image_shape: tuple[int, int, int], density: float, seed: int) -> Connectivity:
    """Same fan-in as ``per_unit``; each unit takes the inputs nearest to a random centre pixel
    (all channels of a pixel together, ties broken at random)."""
    C, H, W = image_shape
    d = C * H * W
    f = fan_in_for_density(density, d)
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pix = torch.stack([ys.flatten(), xs.flatten()], 1).float()  # (H*W, 2)
    pix = pix.repeat(C, 1)  # input index c*H*W + p → pixel p
    rows = []
    for _ in range(K):
        centre = torch.stack([torch.randint(0, H, (1,), generator=g), torch.randint(0, W, (1,), generator=g)], 1).float()
        dist = (pix - centre).norm(dim=1) + 1e-3 * torch.rand(d, generator=g)
        rows.append(dist.topk(f, largest=False).indices)
    return Connectivity._from_rows(torch.stack(rows), (K, d))


def rbm_mask(X: torch.Tensor, K: int, density: float, *, l1: float = 1e-3, epochs: int = 3,
             lr: float = 1e-3, batch_size: int = 100, seed: int = 0) -> Connectivity:
    """A Gaussian–Bernoulli RBM (unit-variance visibles) trained by CD-1 with an L1 penalty on
    the weights; each hidden unit keeps its top-|W| inputs (same fan-in as ``per_unit``)."""
    g = torch.Generator().manual_seed(seed)
    N, d = X.shape
    W = 0.01 * torch.randn(d, K, generator=g)
    b, c = torch.zeros(d), torch.zeros(K)
    for _ in range(epochs):
        for i in torch.randperm(N, generator=g).split(batch_size):
            v0 = X[i]
            p0 = torch.sigmoid(v0 @ W + c)
            h0 = (torch.rand(p0.shape, generator=g) < p0).float()
            v1 = h0 @ W.T + b  # mean of the Gaussian visibles
            p1 = torch.sigmoid(v1 @ W + c)
            n = len(i)
            W += lr * ((v0.T @ p0 - v1.T @ p1) / n - l1 * torch.sign(W))
            b += lr * (v0 - v1).mean(0)
            c += lr * (p0 - p1).mean(0)
    return Connectivity.from_scores(W.T, density, "per_unit")


def snip_mask(build_dense, X: torch.Tensor, y: torch.Tensor, density: float, seed: int,
              batch: int = 512) -> Connectivity:
    """SNIP (Lee et al. 2019): keep the first layer's weights with the largest |w · ∂L/∂w| on a
    labelled batch at initialisation (per-layer density, fan-in varies)."""
    torch.manual_seed(seed)
    net = build_dense()
    first = net[0]
    nn.functional.cross_entropy(net(X[:batch]), y[:batch]).backward()
    return Connectivity.from_scores((first.weight * first.weight.grad).abs(), density, "global")


def synflow_mask(build_dense, d: int, density: float, seed: int, iterations: int = 100) -> Connectivity:
    """SynFlow (Tanaka et al. 2020): iteratively prune the first layer by |θ · ∂R/∂θ| of the
    linearised network (|θ|, all-ones input) on an exponential schedule, without data."""
    torch.manual_seed(seed)
    net = build_dense()
    first = net[0]
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    mask = torch.ones_like(first.weight, dtype=torch.bool)
    total = mask.numel()
    for k in range(1, iterations + 1):
        keep = max(1, round(total * density ** (k / iterations)))
        net.zero_grad()
        w = first.weight.detach() * mask
        first.weight.data.copy_(w)
        net(torch.ones(1, d)).sum().backward()
        score = (first.weight.grad * first.weight).abs().masked_fill(~mask, -math.inf)
        thr = score.flatten().topk(keep).values[-1]
        mask &= score >= thr
    return Connectivity.from_mask(mask)
