"""Masks and kept weights for a *trained* linear layer, from the statistics of its inputs.

A trained layer ``W (out, in)`` and its captured inputs ``X (N, in)`` enter only through the
second moment ``H = Σ_n x_n x_nᵀ (in, in)`` (:class:`InputStatistics`, streamed: O(in²)
memory, never all activations). Every method keeps the same number of inputs per unit
(``fan_in = ceil(density · in)``; :func:`~torch_structlearn.connectivity.fan_in_for_density`),
so the result is a layer of the library's usual per-unit shape. They minimise, or approximate,
the output error

    ‖W X − Ŵ X‖²  =  Σ_i (w_i − ŵ_i)ᵀ H (w_i − ŵ_i)        (rows i of W, Ŵ)

* :func:`magnitude`  — keep each row's largest ``|W_ij|`` (no data).
* :func:`wanda`      — keep each row's largest ``|W_ij| · ‖X_j‖₂`` (Sun et al., 2023), weights
  unchanged.
* :func:`sparsegpt`  — Frantar & Alistarh (2023): columns processed left to right in blocks;
  within a block, each row drops the weights with the smallest ``w²/[H⁻¹]_jj`` (the OBS
  saliency), and every dropped weight's error is compensated on the columns not yet
  processed, through the Cholesky factor of ``H⁻¹``.
* :func:`refit`      — for a given mask, the least-squares weights of each row on its kept
  inputs: ``ŵ_S = H_SS⁻¹ H_S: w`` (exact minimiser of the output error on that support).
* :func:`obs_refit`  — the library's method for trained layers: SparseGPT's selection run
  gradually (``steps`` passes to densities ``density^(s/steps)``, each on the weights the
  previous pass left), then :func:`refit` of the original weights on the final mask. On the
  Fashion-MNIST MLP (recipes/exp_convert.py) it keeps 87.6 % at 10 % where SparseGPT keeps
  79.2 % and Wanda 62.7 %.

``nm=(n, m)`` makes every mask semi-structured: of each ``m`` consecutive inputs of a unit,
``n`` are kept (2:4 is what sparse tensor cores run), so ``density = n / m``.
``block=(bo, bi)`` keeps whole ``bo × bi`` blocks (scores summed over a block), the same number
per block row, so the layer runs on the block kernels.

``H`` is damped (``H + λ·mean(diag H)·I``, ``damp = λ``) as SparseGPT does, so that inputs
that never vary do not make the solves singular.

Precision and memory: the statistics and the solvers work in ``H``'s dtype — float32 by
default (:class:`InputStatistics`), as SparseGPT's reference does; float64 statistics give
float64 solvers. The small per-row systems of :func:`refit` are always solved in float64. A
layer's conversion holds ``H`` and at most two more ``(in, in)`` matrices at a time (the
inverse's factor is formed in place), plus layer-sized ``(out, in)`` copies; the right-hand
sides of :func:`refit` read only the kept rows of ``H``.
"""

from __future__ import annotations

import torch
from einops import reduce, repeat
from torch import Tensor

from .checks import block as _check_block
from .connectivity import check_nm as _check_nm
from .connectivity import fan_in_for_density, top_per_group

fan_in_for_density = fan_in_for_density  # (re-exported: the per-unit fan-in every method keeps)

__all__ = ["InputStatistics", "magnitude", "wanda", "sparsegpt", "refit", "obs_refit",
           "inverse_factor", "output_error", "METHODS"]

METHODS = ("magnitude", "wanda", "sparsegpt", "refit")


class InputStatistics:
    """``H = Σ x xᵀ`` and the count of a layer's inputs, accumulated batch by batch (in
    ``dtype``: float32 by default, float64 for exact references).

    ``update(x)`` takes ``(..., in_features)`` inputs (leading dimensions flattened: tokens
    count as examples). ``update(x, x_ref)`` also pairs them with the inputs ``x_ref`` the same
    layer sees in a reference (dense) model, accumulating ``C = Σ x x_refᵀ`` and
    ``H_ref = Σ x_ref x_refᵀ``: the least-squares target of a layer that gets ``x`` but should
    output what the dense layer does on ``x_ref`` is then ``W_target = W Cᵀ H⁻¹`` (:func:`target`).
    """

    def __init__(self, in_features: int, device=None, paired: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

        def zeros():
            return torch.zeros(in_features, in_features, dtype=dtype, device=device)

        self.H = zeros()
        self.C = zeros() if paired else None
        self.H_ref = zeros() if paired else None
        self.n, self._bound = 0, 0.0

    @torch.no_grad()
    def update(self, x: Tensor, x_ref: Tensor | None = None) -> None:
        """Add a batch; ``ValueError`` if it contains NaN or Inf, or values so large that the
        sums could overflow the statistics' dtype (nothing is added then).

        The products are accumulated into the statistics in place (``addmm_``, in their
        dtype: no ``in × in`` temporary)."""
        x = self._rows(x)
        pairs = [(self.H, x, x)]
        rows = [x]
        if self.C is not None:
            r = self._rows(x_ref)
            if r.shape != x.shape:
                raise ValueError(f"paired inputs differ in shape: {tuple(x.shape)} and the "
                                 f"reference's {tuple(r.shape)}")
            pairs += [(self.C, x, r), (self.H_ref, r, r)]
            rows.append(r)
        if not all(_all_finite(t) for t in rows):
            raise ValueError("input contains NaN or Inf")
        # |Σ x_i x_j| <= n · max|x|²: a bound on every entry, kept below the dtype's range
        peak = max((float(t.abs().amax()) for t in rows if t.numel()), default=0.0)
        bound = self._bound + x.shape[0] * peak * peak
        if not bound < torch.finfo(self.H.dtype).max / 4:
            raise ValueError(f"the inputs' second moments may overflow {self.H.dtype} (|x| up to "
                             f"{peak:.3g}); use InputStatistics(dtype=torch.float64)")
        for M, a, b in pairs:
            M.addmm_(a.T.to(M.dtype), b.to(M.dtype))
        self._bound = bound
        self.n += x.shape[0]

    def _rows(self, x: Tensor) -> Tensor:
        x = x.detach().reshape(-1, self.H.shape[0]).to(self.H.device)
        return x if x.dtype in (torch.float32, torch.float64) else x.float()

    def target(self, W: Tensor, damp: float = 0.01) -> Tensor:
        """The unconstrained least-squares weights ``argmin_Ŵ ‖W X_ref − Ŵ X‖²`` (``W`` itself
        when unpaired): minimising ``‖W_target X − Ŵ X‖²`` over a mask is then the same as
        minimising the error against the reference's outputs."""
        if self.C is None:
            return W
        L = torch.linalg.cholesky(_damped(self.H, damp))
        return torch.cholesky_solve(self.C @ W.to(self.C).T, L).T.to(W.dtype)

    def relative_error(self, W: Tensor, W_hat: Tensor) -> float:
        """``‖W X_ref − Ŵ X‖² / ‖W X_ref‖²`` (``X_ref = X`` when unpaired)."""
        W, W_hat = W.to(self.H), W_hat.to(self.H)
        if self.C is None:
            return output_error(W, W_hat, self.H) / max(_quadratic(W, self.H, W), 1e-300)
        ref = _quadratic(W, self.H_ref, W)
        err = ref - 2 * _quadratic(W_hat, self.C, W) + _quadratic(W_hat, self.H, W_hat)
        return max(err, 0.0) / max(ref, 1e-300)


def _quadratic(A: Tensor, H: Tensor, B: Tensor, rows: int = 1024) -> float:
    """``Σ_i a_iᵀ H b_i`` over the rows of ``A``, ``B (out, in)``, in row chunks (no
    ``(out, in)`` temporary), summed in float64."""
    total = 0.0
    for a in range(0, A.shape[0], rows):
        total += float(((A[a : a + rows] @ H) * B[a : a + rows]).sum(dtype=torch.float64))
    return total


def _all_finite(t: Tensor) -> bool:
    """No NaN or Inf in ``t`` — without ``isfinite``'s temporaries of ``t``'s size (an
    ``in × in`` matrix's check allocated ~1.8 of it): the sum is finite when every entry is,
    and only a non-finite sum (an entry, or an overflow of the sum) is checked row by row."""
    if bool(torch.isfinite(t.sum())):
        return True
    return all(bool(torch.isfinite(c).all()) for c in t.reshape(len(t), -1).split(256))


def _shift(H: Tensor, damp: float) -> Tensor:
    """``(in,)``: what damping adds to ``H``'s diagonal — ``damp`` times the mean diagonal, after
    the inputs that never varied (zero diagonal) are set to 1 to keep them out of the solves'
    way. ``H + diag(shift)`` is the damped ``H``; the solvers add it on the fly, never copying
    ``H``."""
    d = torch.diagonal(H)
    fixed = torch.where(d == 0, torch.ones_like(d), d)
    mean = float(fixed.mean())
    return fixed - d + (damp * mean if mean > 0 else damp)


def _damped(H: Tensor, damp: float) -> Tensor:
    """A damped copy of ``H`` (its dtype)."""
    H = H.clone()
    torch.diagonal(H).add_(_shift(H, damp))
    return H


def check_nm(nm, density: float, in_features: int) -> tuple[int, int] | None:
    """:func:`~torch_structlearn.connectivity.check_nm`, ``None`` passing."""
    return None if nm is None else _check_nm(nm, density, in_features)


def _top_per_row(scores: Tensor, k: int) -> Tensor:
    """``(out, in)`` bool mask of each row's ``k`` largest scores."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
    return mask


def check_block(block, shape: tuple[int, int], nm=None) -> tuple[int, int] | None:
    """``block`` as ``(bo, bi)`` dividing ``shape = (out, in)`` (``None`` passes); not with
    ``nm``."""
    if block is None:
        return None
    if nm is not None:
        raise ValueError(f"give nm= or block=, not both (got nm={nm!r}, block={block!r})")
    return _check_block(block, tuple(shape))


def _top_blocks(scores: Tensor, k: int, block: tuple[int, int]) -> Tensor:
    """``(out, in)`` bool mask of each block row's ``k`` blocks of largest summed score."""
    bo, bi = block
    bs = reduce(scores, "(r bo) (c bi) -> r c", "sum", bo=bo, bi=bi)
    return repeat(_top_per_row(bs, k), "r c -> (r bo) (c bi)", bo=bo, bi=bi)


def _select(scores: Tensor, density: float, nm, block=None) -> Tensor:
    nm = check_nm(nm, density, scores.shape[1])
    block = check_block(block, tuple(scores.shape), nm)
    if nm is not None:
        return top_per_group(scores, *nm)
    if block is not None:
        return _top_blocks(scores, fan_in_for_density(density, scores.shape[1] // block[1]), block)
    return _top_per_row(scores, fan_in_for_density(density, scores.shape[1]))


def magnitude(W: Tensor, density: float, nm: tuple[int, int] | None = None,
              block: tuple[int, int] | None = None) -> Tensor:
    """``(out, in)`` mask: each row's ``ceil(density·in)`` largest ``|W_ij|`` (with ``nm``: the
    ``n`` largest of each ``m`` consecutive; with ``block``: the blocks of largest ``Σ|W_ij|``)."""
    return _select(W.detach().abs(), density, nm, block)


def wanda(W: Tensor, H: Tensor, density: float, nm: tuple[int, int] | None = None,
          block: tuple[int, int] | None = None) -> Tensor:
    """``(out, in)`` mask: each row's largest ``|W_ij| · ‖X_j‖₂``, with ``‖X_j‖₂² = H_jj``
    (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models";
    with ``nm``, per group of ``m`` consecutive inputs, as the paper does for N:M; with
    ``block``, summed over blocks)."""
    norms = torch.diagonal(H).clamp_min(0).sqrt().to(W.device, W.dtype)
    return _select(W.detach().abs().mul_(norms), density, nm, block)


def _spd_solve(A: Tensor, b: Tensor) -> Tensor:
    """``A⁻¹ b`` for a batch of symmetric positive definite ``A`` (damped second moments), by
    Cholesky; a matrix that is not positive definite in floating point gets more damping
    instead of a failed factorisation."""
    if not bool(torch.isfinite(A).all()):
        raise ValueError("the input statistics contain NaN or Inf")
    L, info = torch.linalg.cholesky_ex(A)
    bump = 1e-8
    while bool((info > 0).any()):
        if bump > 1.0:
            raise ValueError("the input statistics are not positive definite even with damping")
        scale = torch.diagonal(A, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        A = A + (bump * scale)[:, None, None] * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        L, info = torch.linalg.cholesky_ex(A)
        bump *= 10
    return torch.cholesky_solve(b, L)


@torch.no_grad()
def refit(W: Tensor, H: Tensor, mask: Tensor, damp: float = 0.01, rows_per_solve: int = 256,
          init: Tensor | None = None, solver: str = "auto", tol: float = 1e-8,
          max_iter: int | None = None, overwrite_init: bool = False) -> Tensor:
    """``(out, in)`` weights on ``mask`` minimising ``Σ_i (w_i − ŵ_i)ᵀ H (w_i − ŵ_i)`` (zeros
    off the mask): per row ``ŵ_S = H_SS⁻¹ (H w)_S`` on its kept inputs ``S``. Rows must keep
    the same number of inputs (the library's per-unit fan-in).

    ``solver``: ``'direct'`` factorises every row's ``H_SS`` (``k × k``, batched Cholesky in
    float64: ``out·k³/3`` flops; the right-hand sides read only the kept rows of ``H``);
    ``'cg'`` runs preconditioned conjugate gradients on all rows at once (each iteration one
    ``(out, in) @ (in, in)`` product in ``H``'s dtype, masked), from ``init`` (e.g.
    SparseGPT's weights) or the masked ``W``, until the residual is below ``tol`` relative to
    the right-hand side or after ``max_iter`` iterations — CG lowers the error at every
    iteration, so a capped run is still never worse than ``init``. ``max_iter=None`` caps the
    work at about 100 products of a 1 024-wide layer (``max(10, 4·10¹¹ / (out·in²))``
    iterations, at most 1 000): an 8 192 × 8 192 layer gets 10 (``overwrite_init=True`` lets
    CG update ``init`` in place, a private copy, instead of copying it). ``'auto'`` takes the direct
    solve while ``k³ ≤ 200·in²`` (batched Cholesky ran at ~2 GFLOP/s on the 2-core EPYC
    against tens for the products CG needs, and CG took 100–300 iterations on ReLU
    activations), else CG."""
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {solver!r}")
    counts = mask.sum(1)
    k = int(counts[0]) if counts.numel() else 0
    if not bool((counts == k).all()):
        raise ValueError("refit needs the same number of kept inputs in every row")
    if k == 0:
        return torch.zeros_like(W)
    H = H.to(W.device)
    shift = _shift(H, damp)
    if solver == "cg" or (solver == "auto" and k**3 > 200 * W.shape[1] ** 2):
        if max_iter is None:
            max_iter = min(1000, max(10, int(4e11 // (W.shape[0] * W.shape[1] ** 2))))
        return _refit_cg(W, H, shift, mask, init, tol, max_iter, overwrite_init).to(W.dtype)
    out = torch.zeros_like(W)
    S = mask.nonzero()[:, 1].view(W.shape[0], k)  # each row's kept columns, ascending
    Wh = W.to(H.dtype)
    # rows per batched solve: the (r, k, k) systems and the (r, k, in) rows of H they read
    rows_per_solve = max(1, min(rows_per_solve, 2**25 // (k * k), 2**25 // (k * W.shape[1])))
    for a in range(0, W.shape[0], rows_per_solve):
        s = S[a : a + rows_per_solve]
        Hss = H[s[:, :, None], s[:, None, :]].double()  # (r, k, k), damped below
        Hss.diagonal(dim1=1, dim2=2).add_(shift[s].double())
        w = Wh[a : a + rows_per_solve]
        # (H_d w)_S = H[S, :] w + shift_S w_S: the kept rows of H only
        rhs = (H[s] @ w[:, :, None]).double() + (shift[s] * w.gather(1, s)).double()[:, :, None]
        v = _spd_solve(Hss, rhs).squeeze(-1)
        out[a : a + rows_per_solve].scatter_(1, s, v.to(out.dtype))
    return out


def _refit_cg(W: Tensor, H: Tensor, shift: Tensor, mask: Tensor, init: Tensor | None,
              tol: float, max_iter: int, overwrite_init: bool = False) -> Tensor:
    """Every row's masked normal equations ``(H_d)_SS ŵ_S = (H_d w)_S`` (``H_d = H +
    diag(shift)``) by Jacobi-preconditioned conjugate gradients, all rows advanced together
    (per-row step sizes). Four ``(out, in)`` buffers, updated in place; ``H`` is not copied."""

    off = ~mask  # (masked_fill_ with it allocates nothing; mul_ by a bool mask made a float copy)

    def apply(X: Tensor, out: Tensor) -> Tensor:  # out = (X H_d) ⊙ mask
        torch.mm(X, H, out=out)
        return out.addcmul_(X, shift).masked_fill_(off, 0)

    dt = H.dtype
    R = apply(W.to(dt), torch.empty(W.shape, dtype=dt, device=W.device))  # B = (W H_d) ⊙ mask
    scale = float(R.norm()) or 1.0
    if init is not None and overwrite_init and init.dtype == dt:
        V = init.masked_fill_(off, 0)
    else:
        V = (W if init is None else init).to(dt, copy=True).masked_fill_(off, 0)
    AP = apply(V, torch.empty_like(R))
    R.sub_(AP)
    dinv = 1.0 / (torch.diagonal(H) + shift)
    tiny = torch.finfo(dt).tiny
    P = R * dinv  # the preconditioned residual Z = R ⊙ dinv is never stored: P absorbs it
    rz = _rowdot(R, P)
    for _ in range(max_iter):
        if float(R.norm()) <= tol * scale:
            break
        apply(P, AP)
        alpha = rz / _rowdot(P, AP).clamp_min(tiny)
        V.addcmul_(alpha[:, None], P)
        R.addcmul_(alpha[:, None], AP, value=-1)
        rz_new = _rowdot(R, R, dinv)
        P.mul_((rz_new / rz.clamp_min(tiny))[:, None]).addcmul_(R, dinv)
        rz = rz_new
    return V


def _rowdot(a: Tensor, b: Tensor, scale: Tensor | None = None, rows: int = 1024) -> Tensor:
    """``(a ⊙ b ⊙ scale).sum(1)`` (``scale (in,)`` broadcast over the rows) in row chunks: no
    ``(out, in)`` temporary."""
    return torch.cat([(x * y if scale is None else x * y * scale).sum(1)
                      for x, y in zip(a.split(rows), b.split(rows), strict=True)])


def _blocksize(blocksize: int, nm, block) -> int:
    """SparseGPT's columns per block: a multiple of ``m`` (N:M groups never straddle blocks)
    and of the block width."""
    if nm is not None:
        blocksize = max(nm[1], blocksize // nm[1] * nm[1])
    unit = 1 if block is None else block[1]
    return max(unit, blocksize // unit * unit)


def column_blocks(method: str, in_features: int, nm=None, block=None, steps: int = 3,
                  blocksize: int = 128) -> int:
    """How many column blocks ``method`` ('sparsegpt' or 'refit') processes on a layer of
    ``in_features`` inputs — the ``tick`` calls it makes (0 for the other methods)."""
    if method not in ("sparsegpt", "refit"):
        return 0
    per_pass = -(-in_features // _blocksize(blocksize, nm, block))
    return per_pass * (steps if method == "refit" else 1)


def inverse_factor(H: Tensor, damp: float = 0.01) -> Tensor:
    """``U`` upper triangular with ``(H + damping)⁻¹ = Uᵀ U`` (in ``H``'s dtype): SparseGPT's
    factor, with at most two ``(in, in)`` matrices besides ``H``. With ``P`` the reversal
    permutation and ``P H P = L Lᵀ`` (Cholesky), ``H⁻¹ = (P L⁻ᵀ P)(P L⁻¹ P)`` and
    ``U = P L⁻¹ P``: one Cholesky and one triangular solve, no explicit inverse and no second
    factorisation (``cholesky_inverse`` took 3 s for 1 024 × 1 024 on the 2-core EPYC at
    times, against 0.07 s for this)."""
    A = H.flip(0, 1)  # the one copy of H; damped in place (its diagonal is H's, reversed)
    torch.diagonal(A).add_(_shift(H, damp).flip(0))
    if not _all_finite(A):
        raise ValueError("the input statistics contain NaN or Inf")
    _, info = torch.linalg.cholesky_ex(A, out=(A, torch.empty((), dtype=torch.int32)))
    if int(info):
        raise ValueError("the input statistics are not positive definite even with damping")
    B = torch.eye(len(A), dtype=A.dtype, device=A.device)
    torch.linalg.solve_triangular(A, B, upper=False, out=B)  # L⁻¹, in place of the identity
    del A
    return B.flip(0, 1)


@torch.no_grad()
def sparsegpt(W: Tensor, H: Tensor, density: float, damp: float = 0.01,
              blocksize: int = 128, nm: tuple[int, int] | None = None,
              block: tuple[int, int] | None = None, U: Tensor | None = None,
              tick=None, overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """``(mask, weights)`` by SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive
    Language Models Can Be Accurately Pruned in One-Shot", Algorithm 1), with the per-unit
    fan-in of the library: within each block of ``blocksize`` columns, each row keeps its
    share of the block's weights (the largest ``w²/[H⁻¹]_jj`` over the block, the leftover
    count distributed so every row ends with exactly ``ceil(density·in)``), and each dropped
    weight's error is spread over the row's later columns by the OBS update. With ``nm``, as
    the paper's N:M variant: at every ``m``-th column each row drops the ``m − n`` least salient
    of the next ``m`` (on the weights updated so far). With ``block=(bo, bi)``, whole blocks
    are dropped (saliency summed over the block), the same number per block row. Computes in
    ``H``'s dtype; ``U`` (:func:`inverse_factor`) is computed when not given; ``tick()`` is
    called after each block of columns (progress); ``overwrite=True`` updates ``W`` in place
    (when it is a private copy of ``H``'s dtype) instead of copying it."""
    rows, d = W.shape
    nm = check_nm(nm, density, d)
    block = check_block(block, (rows, d), nm)
    unit = 1 if block is None else block[1]  # columns per selectable unit
    blocksize = _blocksize(blocksize, nm, block)
    k = fan_in_for_density(density, d // unit)  # kept units (columns or blocks) per row
    U = (inverse_factor(H, damp) if U is None else U).to(W.device)  # H⁻¹ = Uᵀ U
    Wc = W if overwrite and W.dtype == U.dtype else W.to(U.dtype, copy=True)
    mask = torch.zeros(rows, d, dtype=torch.bool, device=W.device)
    drop_total = d // unit - k
    dropped = 0
    for b0 in range(0, d, blocksize):
        b1 = min(b0 + blocksize, d)
        # drops owed by the end of this block, in proportion to the columns seen
        n_drop = (drop_total * b1) // d - dropped  # per row (the same for every row)
        Wb, Ub = Wc[:, b0:b1].clone(), U[b0:b1, b0:b1]
        scores = Wb.square() / torch.diagonal(Ub).square()
        if nm is not None:
            drop = torch.zeros_like(Wb, dtype=torch.bool)
        elif n_drop and block is not None:
            drop = _top_blocks(-scores, n_drop, block)
        elif n_drop:
            drop = _top_per_row(-scores, n_drop)
        else:
            drop = torch.zeros_like(Wb, dtype=torch.bool)
        dropped += n_drop
        # column j's error e = w_j·[dropped] / U_jj, spread as W[:, j:] −= e U[j, j:] (which also
        # zeroes a dropped w_j); columns stored transposed so each step reads contiguous memory
        WbT, err = Wb.T.contiguous(), torch.empty_like(Wb.T)
        scale = drop.T / torch.diagonal(Ub)[:, None]
        for j in range(b1 - b0):
            if nm is not None and j % nm[1] == 0:  # choose this group's drops now
                n, m = nm
                s_ = WbT[j : j + m].T.square() / torch.diagonal(Ub)[j : j + m].square()
                drop[:, j : j + m] = _top_per_row(-s_, m - n)
                scale[j : j + m] = drop[:, j : j + m].T / torch.diagonal(Ub)[j : j + m, None]
            torch.mul(WbT[j], scale[j], out=err[j])
            WbT[j:].addr_(Ub[j, j:], err[j], alpha=-1)
        Wc[:, b0:b1] = WbT.T
        Wc[:, b1:].addmm_(err.T, U[b0:b1, b1:], alpha=-1)
        mask[:, b0:b1] = ~drop
        if tick is not None:
            tick()
    return mask, Wc.masked_fill_(~mask, 0).to(W.dtype)  # (mul_ by a bool mask copies it as floats)


@torch.no_grad()
def obs_refit(W: Tensor, H: Tensor, density: float, steps: int = 3, damp: float = 0.01,
              nm: tuple[int, int] | None = None,
              block: tuple[int, int] | None = None, tick=None) -> tuple[Tensor, Tensor]:
    """``(mask, weights)``: :func:`sparsegpt`'s selection run gradually, ``steps`` passes to the
    densities ``density^(s/steps)`` (each pass on the weights the previous one left, so the
    error compensation of the early passes guides the later choices; ``nm`` applies to the last
    pass, ``block`` to every pass), then :func:`refit` of ``W`` on the final mask — the exact
    minimiser of ``‖W X − Ŵ X‖²`` on it, so never worse than SparseGPT's own weights there."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    U = inverse_factor(H, damp).to(W.device)  # one factor for every pass
    cur = W.to(H.dtype)
    for s in range(1, steps + 1):
        last = s == steps
        # the first pass copies W; the later ones update the previous pass's private copy
        mask, cur = sparsegpt(cur, H, density if last else density ** (s / steps), damp=damp,
                              nm=nm if last else None, block=block, U=U, tick=tick,
                              overwrite=s > 1)
    del U
    return mask, refit(W, H, mask, damp=damp, init=cur, overwrite_init=True).to(W.dtype)


def output_error(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    """``‖W X − Ŵ X‖² = Σ_i (w_i − ŵ_i)ᵀ H (w_i − ŵ_i)`` from ``H = Σ x xᵀ`` (in ``H``'s
    dtype, summed in float64)."""
    D = W.to(H) - W_hat.to(H)
    return _quadratic(D, H, D)
