"""Masks and weights for trained layers (torch_structlearn.pruning), against closed-form and
brute-force references computed from the inputs X themselves."""

import itertools

import pytest
import torch

from torch_structlearn import pruning


def _problem(out=6, d=10, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) @ A  # correlated inputs
    W = torch.randn(out, d, generator=g, dtype=torch.float64)
    stats = pruning.InputStatistics(d, dtype=torch.float64)  # exact references
    for chunk in X.split(37):  # streamed in uneven batches
        stats.update(chunk)
    return W, X, stats.H


def test_input_statistics_is_the_second_moment():
    W, X, H = _problem()
    torch.testing.assert_close(H, X.T @ X)


def test_input_statistics_of_low_precision_batches_and_bad_inputs():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3000, 12, generator=g, dtype=torch.float64)
    exact = X.T @ X
    for dtype, stats_dtype, rtol in ((torch.float32, torch.float64, 1e-5),
                                     (torch.bfloat16, torch.float64, 2e-2),
                                     (torch.float32, torch.float32, 1e-5)):  # the default
        stats = pruning.InputStatistics(12, dtype=stats_dtype)
        for chunk in X.split(100):  # many batches
            stats.update(chunk.to(dtype))
        assert stats.H.dtype == stats_dtype and stats.n == 3000
        torch.testing.assert_close(stats.H, exact.to(stats_dtype), rtol=rtol,
                                   atol=rtol * float(exact.abs().max()))
    big = X[:50].float() * 1e20  # finite inputs whose float32 products overflow
    stats = pruning.InputStatistics(12, dtype=torch.float64)
    stats.update(big)
    torch.testing.assert_close(stats.H, big.double().T @ big.double())
    with pytest.raises(ValueError, match=r"may overflow torch.float32 .*dtype=torch.float64"):
        pruning.InputStatistics(12).update(big)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        pruning.InputStatistics(12, dtype=torch.float16)
    bad = X[:50].clone()
    bad[7, 3] = float("inf")
    stats = pruning.InputStatistics(12, paired=True)
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        stats.update(X[:50], bad)
    assert stats.n == 0 and not stats.H.any() and not stats.C.any()  # nothing added


def test_magnitude_keeps_each_rows_largest():
    W, _, _ = _problem()
    mask = pruning.magnitude(W, 0.3)
    for row, m in zip(W, mask, strict=True):
        assert set(m.nonzero().flatten().tolist()) == set(row.abs().argsort(descending=True)[:3].tolist())


def test_wanda_scores_are_weight_times_input_norm():
    W, X, H = _problem()
    mask = pruning.wanda(W, H, 0.3)
    scores = W.abs() * X.norm(dim=0)  # |W_ij| * ||X_j||_2, from X itself
    for s, m in zip(scores, mask, strict=True):
        assert set(m.nonzero().flatten().tolist()) == set(s.argsort(descending=True)[:3].tolist())


def test_refit_is_the_least_squares_solution_on_the_mask():
    W, X, H = _problem()
    mask = pruning.wanda(W, H, 0.4)
    got = pruning.refit(W, H, mask, damp=0.0)
    for i in range(W.shape[0]):
        S = mask[i].nonzero().flatten()
        ref = torch.linalg.lstsq(X[:, S], X @ W[i]).solution  # min ||X w - X[:, S] v||
        torch.testing.assert_close(got[i, S], ref)
        assert bool((got[i, ~mask[i]] == 0).all())
    # and it is no worse than keeping the trained weights on that mask
    assert pruning.output_error(W, got, H) <= pruning.output_error(W, W * mask, H)


def test_refit_on_the_best_support_is_the_brute_force_optimum():
    W, X, H = _problem(out=2, d=6)
    for i in range(2):
        best = min(itertools.combinations(range(6), 3),
                   key=lambda S: float((X @ W[i] - X[:, list(S)] @ torch.linalg.lstsq(
                       X[:, list(S)], X @ W[i]).solution).square().sum()))
        mask = torch.zeros(1, 6, dtype=torch.bool)
        mask[0, list(best)] = True
        v = pruning.refit(W[i : i + 1], H, mask, damp=0.0)
        err = pruning.output_error(W[i : i + 1], v, H)
        for S in itertools.combinations(range(6), 3):  # every support: none does better
            m = torch.zeros(1, 6, dtype=torch.bool)
            m[0, list(S)] = True
            assert err <= pruning.output_error(W[i : i + 1], pruning.refit(W[i : i + 1], H, m, damp=0.0), H) + 1e-9


def test_sparsegpt_single_removal_is_the_obs_closed_form():
    """Removing one weight (the first column, made the least salient) from each row:
    SparseGPT's update is OBS's closed form δw = −w_q / [H⁻¹]_qq · H⁻¹[:, q], which is the
    least-squares refit on the remaining inputs."""
    W, X, H = _problem(out=4, d=8)
    W[:, 0] = 1e-4  # least salient in every row
    mask, got = pruning.sparsegpt(W, H, density=7 / 8, damp=0.0)
    assert bool((~mask[:, 0]).all()) and int(mask.sum()) == 4 * 7
    Hinv = torch.linalg.inv(H)
    obs = W - (W[:, 0] / Hinv[0, 0])[:, None] * Hinv[:, 0][None, :]
    torch.testing.assert_close(got, obs * mask)
    torch.testing.assert_close(got, pruning.refit(W, H, mask, damp=0.0))


@pytest.mark.parametrize("density, blocksize", [(0.5, 4), (0.3, 128), (0.1, 3)])
def test_sparsegpt_keeps_the_per_unit_fan_in_and_its_updates_reduce_the_error(density, blocksize):
    """Each row keeps exactly the per-unit fan-in, and the OBS updates leave less output error
    than the trained weights on the same mask (and no less than the refit on it, which is
    optimal for that mask)."""
    W, X, H = _problem(out=16, d=20, n=400, seed=1)
    mask, Wh = pruning.sparsegpt(W, H, density, blocksize=blocksize, damp=0.0)
    k = pruning.fan_in_for_density(density, 20)
    assert bool((mask.sum(1) == k).all()) and bool((Wh[~mask] == 0).all())
    err = pruning.output_error(W, Wh, H)
    assert err < pruning.output_error(W, W * mask, H)
    assert err >= pruning.output_error(W, pruning.refit(W, H, mask, damp=0.0), H) - 1e-6


def test_refit_needs_equal_fan_in():
    W, _, H = _problem()
    mask = pruning.magnitude(W, 0.3)
    mask[0, mask[0].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number of kept inputs"):
        pruning.refit(W, H, mask)


def _is_nm(mask, n, m):
    return bool((mask.reshape(mask.shape[0], -1, m).sum(2) == n).all())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_masks_keep_n_of_every_m(method):
    W, X, H = _problem(out=6, d=16)
    if method == "magnitude":
        mask = pruning.magnitude(W, 0.5, nm=(2, 4))
        scores = W.abs()
    elif method == "wanda":
        mask = pruning.wanda(W, H, 0.5, nm=(2, 4))
        scores = W.abs() * X.norm(dim=0)
    else:
        mask, Wh = pruning.sparsegpt(W, H, 0.5, nm=(2, 4), blocksize=8)
        assert pruning.output_error(W, Wh, H) < pruning.output_error(W, W * mask, H)
        scores = None
    assert _is_nm(mask, 2, 4)
    if scores is not None:  # brute force: the 2 largest of each 4
        for r in range(6):
            for g in range(4):
                top = set((scores[r, 4 * g : 4 * g + 4].argsort(descending=True)[:2] + 4 * g).tolist())
                assert set(mask[r, 4 * g : 4 * g + 4].nonzero().flatten().add(4 * g).tolist()) == top
    refit = pruning.refit(W, H, mask, damp=0.0)
    assert pruning.output_error(W, refit, H) <= pruning.output_error(W, W * mask, H)


def test_nm_arguments_are_checked():
    W, _, H = _problem(out=2, d=10)
    with pytest.raises(ValueError, match="m=4 must divide in_features=10"):
        pruning.magnitude(W, 0.5, nm=(2, 4))
    W, _, H = _problem(out=2, d=8)
    with pytest.raises(ValueError, match="density must be 0.5"):
        pruning.wanda(W, H, 0.25, nm=(2, 4))
    with pytest.raises(ValueError, match="nm must be a pair"):
        pruning.magnitude(W, 0.5, nm=(3, 2))


def test_paired_statistics_target_is_the_least_squares_fit_to_the_reference_outputs():
    """With paired inputs (X seen by the layer, X_ref by the dense model), target(W) is
    argmin_V ‖X_ref Wᵀ − X Vᵀ‖² (lstsq on X itself, no damping), and relative_error is the
    error against the reference outputs."""
    W, X_ref, _ = _problem(seed=3)
    g = torch.Generator().manual_seed(4)
    X = X_ref + 0.3 * torch.randn(X_ref.shape, generator=g, dtype=torch.float64)  # perturbed
    stats = pruning.InputStatistics(X.shape[1], paired=True, dtype=torch.float64)
    for a, b in zip(X.split(37), X_ref.split(37), strict=True):
        stats.update(a, b)
    want = torch.linalg.lstsq(X, X_ref @ W.T).solution.T
    torch.testing.assert_close(stats.target(W, damp=0.0), want, rtol=1e-7, atol=1e-8)
    V = torch.randn(W.shape, generator=g, dtype=torch.float64)
    direct = (X_ref @ W.T - X @ V.T).square().sum() / (X_ref @ W.T).square().sum()
    assert stats.relative_error(W, V) == pytest.approx(float(direct), rel=1e-9)
    with pytest.raises(ValueError, match="paired inputs differ in shape"):
        stats.update(X[:3], X_ref[:4])


def test_obs_refit_is_the_refit_on_its_mask_and_beats_sparsegpt():
    """obs_refit's weights are the least-squares refit on its mask (so on that mask no weights do
    better), and its error is below SparseGPT's at the same density."""
    W, X, H = _problem(out=12, d=40, n=400, seed=5)
    for density in (0.5, 0.25, 0.1):
        mask, Wh = pruning.obs_refit(W, H, density)
        assert bool((mask.sum(1) == pruning.fan_in_for_density(density, 40)).all())
        torch.testing.assert_close(Wh, pruning.refit(W, H, mask))
        _, sg = pruning.sparsegpt(W, H, density)
        assert pruning.output_error(W, Wh, H) < pruning.output_error(W, sg, H)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        pruning.obs_refit(W, H, 0.5, steps=0)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "obs_refit"])
def test_block_masks_keep_whole_blocks(method):
    """block=(bo, bi): each block row keeps the same number of whole blocks; magnitude and
    Wanda keep the blocks of largest summed score (as Connectivity.from_scores does)."""
    from torch_structlearn.connectivity import Connectivity

    W, X, H = _problem(out=8, d=12, seed=6)
    block = (2, 3)
    if method == "magnitude":
        mask = pruning.magnitude(W, 0.5, block=block)
        want = Connectivity.from_scores(W.abs(), 0.5, block=block).to_mask()
        assert torch.equal(mask, want)
    elif method == "wanda":
        mask = pruning.wanda(W, H, 0.5, block=block)
        want = Connectivity.from_scores(W.abs() * X.norm(dim=0), 0.5, block=block).to_mask()
        assert torch.equal(mask, want)
    else:
        mask, Wh = getattr(pruning, method)(W, H, 0.5, block=block)
        assert torch.equal(Wh != 0, mask) or bool((Wh[~mask] == 0).all())
    bm = mask.reshape(4, 2, 4, 3)
    assert bool((bm.all(3).all(1) | ~bm.any(3).any(1)).all())
    assert bool((bm.any(3).any(1).sum(1) == 2).all())
    with pytest.raises(ValueError, match="must divide the shape"):
        pruning.magnitude(W, 0.5, block=(3, 3))
    with pytest.raises(ValueError, match="give nm= or block=, not both"):
        pruning.magnitude(W, 0.5, nm=(2, 4), block=block)


def test_refit_by_conjugate_gradients_matches_the_direct_solve():
    """solver='cg' (all rows at once, from SparseGPT's weights or the masked W) reaches the
    direct per-row Cholesky solution; bad solver names are refused."""
    W, X, H = _problem(out=20, d=64, n=500, seed=7)
    for density in (0.75, 0.25):
        mask, sg = pruning.sparsegpt(W, H, density)
        direct = pruning.refit(W, H, mask, solver="direct")
        for init in (sg, None):
            cg = pruning.refit(W, H, mask, solver="cg", init=init, tol=1e-12)
            assert bool((cg[~mask] == 0).all())
            torch.testing.assert_close(cg, direct, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="solver must be"):
        pruning.refit(W, H, mask, solver="lu")
