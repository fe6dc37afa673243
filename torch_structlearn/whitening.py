"""ZCA whitening as a fitted module that can sit in front of a model.

``x ↦ W (x − m(x) − μ)`` where ``m(x)`` is the per-example mean (optional), ``μ`` the data
mean and ``W = U diag((λ + ε·mean(λ))^{-1/2}) Uᵀ`` from the eigendecomposition ``U diag(λ) Uᵀ``
of the data covariance (DESIGN.md §2.1: eps ≈ 0.1 of the mean eigenvalue).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ._checks import positive_int
from .data import batches

__all__ = ["ZCAWhitening"]


class ZCAWhitening(nn.Module):
    """ZCA whitening fitted on a loader.

    Args:
        num_features: input size ``d`` (images are flattened: ``C*H*W``).
        eps: regulariser, as a fraction of the mean eigenvalue (default 0.1).
        per_example_mean: subtract each example's own mean first (default True).

    Shape: input ``(N, *)`` with ``prod(*) = d`` → ``(N, d)``.

    Buffers: ``mean (d,)``, ``matrix (d, d)``; ``fitted`` tells whether :meth:`fit` ran.
    """

    def __init__(self, num_features: int, eps: float = 0.1, per_example_mean: bool = True):
        super().__init__()
        positive_int("num_features", num_features)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.num_features, self.eps, self.per_example_mean = num_features, float(eps), per_example_mean
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("matrix", torch.eye(num_features))
        self.register_buffer("_fitted", torch.tensor(False))

    @property
    def fitted(self) -> bool:
        return bool(self._fitted)

    def _center(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features per example, got {x.shape[1]}")
        return x - x.mean(1, keepdim=True) if self.per_example_mean else x

    @torch.no_grad()
    def fit(self, loader: Iterable, *, key: str = "x") -> ZCAWhitening:
        """Estimate the mean and covariance over ``loader`` (one streaming pass, float64)."""
        d = self.num_features
        s = torch.zeros(d, dtype=torch.float64)
        ss = torch.zeros(d, d, dtype=torch.float64)
        n = 0
        for x in batches(loader, key=key):
            x = self._center(x).double()
            s += x.sum(0)
            ss += x.T @ x
            n += x.shape[0]
        if n < 2:
            raise ValueError(f"need at least 2 examples to fit the whitening, got {n}")
        mu = s / n
        cov = (ss - n * torch.outer(mu, mu)) / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0)
        scale = (evals + self.eps * evals.mean()).rsqrt()
        self.mean.copy_(mu.to(self.mean))
        self.matrix.copy_(((evecs * scale) @ evecs.T).to(self.matrix))
        self._fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (self._center(x) - self.mean) @ self.matrix  # matrix is symmetric

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, eps={self.eps}, "
                f"per_example_mean={self.per_example_mean}, fitted={self.fitted}")
