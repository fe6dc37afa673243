"""ZCA whitening as a fitted module that can sit in front of a model.

``x ↦ W (x − m(x) − μ)`` where ``m(x)`` is the per-example mean (optional), ``μ`` the data
mean and ``W = U diag((λ + ε·mean(λ))^{-1/2}) Uᵀ`` from the eigendecomposition ``U diag(λ) Uᵀ``
of the data covariance. docs/algorithm.md §1 suggests eps ≈ 0.1 of the mean eigenvalue; the
default is 8, the choice of ``recipes/exp_tune.py`` on the validation splits of MNIST and
CIFAR-10 (RESULTS.md, *Validation choices*; Fashion-MNIST chose 2).

For images, ``kernel_size=k`` replaces the ``d x d`` matrix (37 MB for a 3x32x32 image) by a
``(C, C, k, k)`` convolution fitted by least squares to reproduce the full ZCA output on the
fitting data: ZCA filters are nearly local and translation-invariant, and the convolution is
what lets a CIFAR-10 classifier fit in a small file. It is an approximation (on CIFAR-10,
k = 7: relative error 0.36 against the full ZCA output on test images) — the models that use it
are trained with it, so their accuracy is the accuracy of the pipeline as shipped.

``rank=k`` stores the same ZCA in low rank: ``W = c·I + U_k diag(g) U_kᵀ``, the ``k``
highest-variance directions ``U_k (d, k)`` whitened exactly (``g = s_k − c``) and every other
direction by one common scale ``c`` (the mean of their exact scales ``(λ + ε·mean(λ))^{-1/2}``,
which differ little once ``λ`` is well below ``ε·mean(λ)``). Exact for the kept directions,
``d·k`` numbers instead of ``d²`` and ``2·d·k`` multiply-adds per example instead of ``d²``
(a 3x32x32 image at ``k = 256``: 3.1 MB instead of 37.7 MB). :meth:`ZCAWhitening.low_rank`
makes one from a fitted full ZCA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import image_shape as check_image_shape
from .checks import positive, positive_int
from .loaders import batches, flatten_examples, require_reiterable

__all__ = ["ZCAWhitening"]


class ZCAWhitening(nn.Module):
    """ZCA whitening fitted on a loader.

    Args:
        num_features: input size ``d`` (images are flattened: ``C*H*W``).
        eps: regulariser, as a fraction of the mean eigenvalue (default 8: see above).
        per_example_mean: subtract each example's own mean first (default True).
        image_shape: ``(C, H, W)`` of the examples, with ``kernel_size``.
        kernel_size: an odd ``k`` to whiten with a ``k x k`` convolution fitted to the full ZCA
            (see the module docstring) instead of a matrix.
        rank: keep the ZCA in low rank: the ``rank`` highest-variance directions exactly, the
            others by one common scale (see the module docstring); not with ``kernel_size``.

    Shape: input ``(N, *)`` with ``prod(*) = d`` → ``(N, d)``.

    Buffers: ``mean (d,)`` and ``matrix (d, d)`` — or ``weight (C, C, k, k)`` with
    ``kernel_size``, or ``basis (d, rank)``, ``gains (rank,)`` and ``floor (1,)`` with ``rank``;
    ``fitted`` tells whether :meth:`fit` ran.
    """

    def __init__(self, num_features: int, eps: float = 8.0, per_example_mean: bool = True, *,
                 image_shape: tuple[int, int, int] | None = None, kernel_size: int | None = None,
                 rank: int | None = None):
        super().__init__()
        positive_int("num_features", num_features)
        self.num_features, self.eps = num_features, positive("eps", eps)
        if not isinstance(per_example_mean, bool):  # saved files hold it as a JSON bool
            raise TypeError(f"per_example_mean must be True or False, got "
                            f"{type(per_example_mean).__name__} {per_example_mean!r}")
        self.per_example_mean = per_example_mean
        self.register_buffer("mean", torch.zeros(num_features))
        self.kernel_size, self.image_shape, self.rank = kernel_size, None, rank
        if rank is not None:
            positive_int("rank", rank)
            if kernel_size is not None:
                raise ValueError(f"give rank= or kernel_size=, not both (got rank={rank}, "
                                 f"kernel_size={kernel_size})")
            if rank >= num_features:
                raise ValueError(f"rank must be < num_features = {num_features} (the full "
                                 f"matrix is rank=None), got {rank}")
        if rank is not None:
            if image_shape is not None:
                raise ValueError(f"image_shape={image_shape!r} is only used with kernel_size")
            self.register_buffer("basis", torch.eye(num_features, rank))
            self.register_buffer("gains", torch.zeros(rank))
            self.register_buffer("floor", torch.ones(1))
        elif kernel_size is None:
            if image_shape is not None:  # it would be ignored: the matrix needs no shape
                raise ValueError(f"image_shape={image_shape!r} is only used with kernel_size (the "
                                 "convolution whitening); leave it out, or give kernel_size")
            self.register_buffer("matrix", torch.eye(num_features))
        else:
            positive_int("kernel_size", kernel_size)
            if kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd, got {kernel_size}")
            shape = None if image_shape is None else check_image_shape("image_shape", image_shape)
            if shape is None or math.prod(shape) != num_features:
                raise ValueError(f"kernel_size needs image_shape=(C, H, W) with C*H*W = "
                                 f"num_features = {num_features}, got {image_shape!r}")
            self.image_shape = shape
            c = self.image_shape[0]
            weight = torch.zeros(c, c, kernel_size, kernel_size)
            weight[range(c), range(c), kernel_size // 2, kernel_size // 2] = 1.0  # identity
            self.register_buffer("weight", weight)
        self.register_buffer("_fitted", torch.tensor(False))
        self._checked = False  # forward has seen ``fitted`` True

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run (or fitted statistics were loaded)."""
        return bool(self._fitted)

    def _center(self, x: Tensor) -> Tensor:
        x = flatten_examples(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features per example, got {x.shape[1]}")
        return x - x.mean(1, keepdim=True) if self.per_example_mean else x

    @torch.no_grad()
    def fit(self, loader: Iterable, *, key: str = "x") -> ZCAWhitening:
        """Estimate the mean and covariance over ``loader`` (one streaming pass, float64).

        With ``kernel_size`` a second pass fits the filter, so ``loader`` must be re-iterable
        (a ``DataLoader`` or a list, not a generator)."""
        if self.kernel_size is not None:
            require_reiterable(loader, "kernel_size whitening")
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
        if not bool(evals.mean() > 0):
            raise ValueError(f"cannot fit the whitening: the {n} examples have no variance "
                             + ("after each example's own mean is removed (constant examples?)"
                                if self.per_example_mean else "(all examples are equal)"))
        scale = (evals + self.eps * evals.mean()).rsqrt()
        if not bool(torch.isfinite(scale).all() & torch.isfinite(evecs).all()):
            raise ValueError("cannot fit the whitening: the covariance of the examples is not "
                             "finite (NaN or Inf in the data, or values too large)")
        if self.rank is not None:
            self._set_low_rank(evecs, scale)
        else:
            matrix = (evecs * scale) @ evecs.T
            if self.kernel_size is not None:  # before any buffer changes: a failed pass keeps the old fit
                weight = self._fit_filter(loader, key, mu.to(self.mean), matrix.float())
                self.weight.copy_(weight)
            else:
                self.matrix.copy_(matrix.to(self.matrix))
        self.mean.copy_(mu.to(self.mean))
        self._fitted.fill_(True)
        return self

    def _set_low_rank(self, evecs: Tensor, scale: Tensor) -> None:
        """The low-rank buffers from the eigenvectors ``(d, d)`` and exact scales ``(d,)`` in
        ascending order of variance (``eigh``'s): the last ``rank`` kept."""
        k = self.rank
        floor = scale[:-k].mean()
        self.basis.copy_(evecs[:, -k:].to(self.basis))
        self.gains.copy_((scale[-k:] - floor).to(self.gains))
        self.floor.copy_(floor.to(self.floor))

    @torch.no_grad()
    def low_rank(self, rank: int) -> ZCAWhitening:
        """A new fitted ``ZCAWhitening`` with ``rank`` (module docstring) from this fitted
        full-matrix one: the ``rank`` directions the matrix shrinks most (the highest-variance
        ones) kept exactly, the others at their mean scale."""
        if self.kernel_size is not None or self.rank is not None or not self.fitted:
            raise ValueError("low_rank needs a fitted full-matrix ZCAWhitening (no kernel_size, "
                             "no rank)")
        out = ZCAWhitening(self.num_features, self.eps, self.per_example_mean, rank=rank)
        scale, evecs = torch.linalg.eigh(self.matrix.double())  # ascending scale = descending λ
        out._set_low_rank(evecs.flip(1), scale.flip(0))
        out.mean.copy_(self.mean)
        out._fitted.fill_(True)
        return out.to(self.mean.device)

    def _fit_filter(self, loader: Iterable, key: str, mean: Tensor, matrix: Tensor) -> Tensor:
        """Least-squares ``(C, C, k, k)`` filter whose convolution reproduces
        ``(x − mean) @ matrix``."""
        c, k = self.image_shape[0], self.kernel_size
        A = torch.zeros(c * k * k, c * k * k, dtype=torch.float64)
        B = torch.zeros(c * k * k, c, dtype=torch.float64)
        for x in batches(loader, key=key):
            for xs in self._center(x).split(256):
                xs = xs - mean.to(xs)
                target = (xs @ matrix.to(xs)).view(-1, *self.image_shape)
                U = F.unfold(xs.view(-1, *self.image_shape), k, padding=k // 2)  # (n, C k², HW)
                U = U.transpose(1, 2).reshape(-1, c * k * k).double()
                A += U.T @ U
                B += U.T @ target.permute(0, 2, 3, 1).reshape(-1, c).double()
        ridge = 1e-6 * A.diagonal().mean() * torch.eye(len(A), dtype=A.dtype)
        solution = torch.linalg.solve(A + ridge, B)  # (C k², C)
        return solution.T.reshape(c, c, k, k).to(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if not (self._checked or torch.compiler.is_compiling()):
            # once: reading the flag syncs a GPU, and a module that has been fitted stays fitted
            if not self.fitted:
                raise RuntimeError("ZCAWhitening is not fitted: call .fit(loader) first, or load "
                                   "a fitted one (torch_structlearn.load, load_state_dict)")
            self._checked = True
        x = self._center(x) - self.mean
        if self.rank is not None:
            return x * self.floor + ((x @ self.basis) * self.gains) @ self.basis.T
        if self.kernel_size is None:
            return x @ self.matrix  # matrix is symmetric
        out = F.conv2d(x.view(-1, *self.image_shape), self.weight, padding=self.kernel_size // 2)
        return out.flatten(1)

    def extra_repr(self) -> str:
        conv = (f", image_shape={self.image_shape}, kernel_size={self.kernel_size}"
                if self.kernel_size else f", rank={self.rank}" if self.rank else "")
        return (f"num_features={self.num_features}, eps={self.eps}, "
                f"per_example_mean={self.per_example_mean}{conv}, fitted={self.fitted}")
