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
    stats = pruning.InputStatistics(d)
    for chunk in X.split(37):  # streamed in uneven batches
        stats.update(chunk)
    return W, X, stats.H


def test_input_statistics_is_the_second_moment():
    W, X, H = _problem()
    torch.testing.assert_close(H, X.T @ X)


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
