"""Sparse coding against scikit-learn and against planted structure."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import sparse_encode

from torch_structlearn import Connectivity, DictionaryLearner
from torch_structlearn.coding import fista, objective, prox


def _problem(n=200, d=30, k=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d, k, generator=g, dtype=torch.float64)
    D /= D.norm(dim=0)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    return X, D


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("lam", [0.05, 0.2, 1.0])
def test_lasso_objective_matches_sklearn_lasso_cd(lam):
    X, D = _problem()
    # sklearn: alpha = regularization / n_features, and Lasso's loss has 1/(2 n_features):
    # so sparse_encode(alpha=λ) minimises ½‖x − Dᵀa‖² + λ‖a‖₁ per sample, like ours.
    ref = sparse_encode(X.numpy(), D.T.numpy(), algorithm="lasso_cd", alpha=lam, max_iter=10000)
    A = fista(X, D, lam1=lam, max_iter=3000, tol=1e-10)
    ours = objective(X, D, A, lam).sum().item()
    theirs = objective(X, D, torch.from_numpy(ref), lam).sum().item()
    assert ours <= theirs * 1.005, (ours, theirs)


def test_nonneg_and_group_prox():
    V = torch.tensor([[3.0, -2.0, 0.5, 0.1]])
    assert prox(V, 1.0, 0.0, 1).tolist() == [[2.0, -1.0, 0.0, 0.0]]
    assert prox(V, 1.0, 0.0, 1, nonneg=True).tolist() == [[2.0, 0.0, 0.0, 0.0]]
    # group shrink after soft threshold: group (2, -1) has norm √5, group (0, 0) stays 0
    out = prox(V, 1.0, 1.0, 2)
    torch.testing.assert_close(out[0, :2], torch.tensor([2.0, -1.0]) * (1 - 1 / 5 ** 0.5))
    assert out[0, 2:].tolist() == [0.0, 0.0]


def test_group_fista_optimality():
    # KKT for the sparse-group lasso: A is a fixed point of the proximal gradient step.
    X, D = _problem(n=50)
    A = fista(X, D, lam1=0.1, lam_g=0.2, group_size=5, max_iter=5000, tol=1e-12)
    L = torch.linalg.eigvalsh(D.T @ D).max().item()
    step = prox(A - (A @ D.T @ D - X @ D) / L, 0.1 / L, 0.2 / L, 5)
    torch.testing.assert_close(step, A, atol=1e-6, rtol=1e-5)
    # whole groups switch off together more often than with plain l1 at the same λ₁
    A1 = fista(X, D, lam1=0.1, max_iter=5000, tol=1e-12)
    zero_groups = (A.view(50, 10, 5).abs().sum(2) == 0).float().mean()
    assert zero_groups > (A1.view(50, 10, 5).abs().sum(2) == 0).float().mean()


def _planted(n=6000, d=64, k=32, width=8, active=3, seed=0):
    """Data from a dictionary whose atoms have local (contiguous) supports."""
    g = torch.Generator().manual_seed(seed)
    D = torch.zeros(d, k)
    starts = torch.randint(0, d - width + 1, (k,), generator=g)
    for j in range(k):
        D[starts[j] : starts[j] + width, j] = torch.randn(width, generator=g)
    D /= D.norm(dim=0)
    A = torch.zeros(n, k)
    for i in range(n):
        idx = torch.randperm(k, generator=g)[:active]
        A[i, idx] = torch.randn(active, generator=g).abs() + 0.5
    X = A @ D.T + 0.01 * torch.randn(n, d, generator=g)
    return X, D


def test_dictionary_learning_recovers_planted_atoms_and_supports():
    X, D_true = _planted()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=256)
    dl = DictionaryLearner(32, lam1=0.1, epochs=15, seed=0, verbose=False).fit(loader)
    D = dl.dictionary_
    assert torch.allclose(D.norm(dim=0), torch.ones(32), atol=1e-5)
    cos = (D.T @ D_true).abs()  # (learned, true)
    best, match = cos.max(0)  # for each true atom, the best learned atom
    recovered = (best > 0.95).float().mean().item()
    assert recovered >= 0.9, recovered
    # the objective decreased over the epochs
    assert dl.objective_[-1] < dl.objective_[0]
    # connectivity read-off: the planted supports (8 of 64 inputs = 12.5 %)
    conn = Connectivity.from_scores(D.T, 8 / 64, "per_unit")
    mask = conn.to_mask()
    true_mask = (D_true.T != 0)
    ok = best > 0.95
    precision = (mask[match[ok]] & true_mask[ok]).sum() / mask[match[ok]].sum()
    assert precision >= 0.9, precision


def test_learning_is_deterministic_for_a_seed():
    X, _ = _planted(n=800)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=200)
    a = DictionaryLearner(16, epochs=2, seed=3, verbose=False).fit(loader).dictionary_
    b = DictionaryLearner(16, epochs=2, seed=3, verbose=False).fit(loader).dictionary_
    c = DictionaryLearner(16, epochs=2, seed=4, verbose=False).fit(loader).dictionary_
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dead_atoms_are_reinitialised():
    # The first batch (used for init: 8 samples, 8 atoms) holds one tiny sample along e9, a
    # direction no other sample has: its atom is never used, so it is replaced by a residual.
    g = torch.Generator().manual_seed(0)
    first = torch.zeros(8, 10)
    first[:7, :4] = torch.randn(7, 4, generator=g)
    first[7, 9] = 0.01
    rest = []
    for _ in range(5):
        b = torch.zeros(100, 10)
        b[:, :4] = torch.randn(100, 4, generator=g)
        rest.append(b)
    loader = [first] + rest
    # in the input space: the subspace of the data's energy has no e9 direction at all
    dl = DictionaryLearner(8, lam1=0.2, epochs=2, seed=0, subspace=None, verbose=False).fit(loader)
    assert dl.n_reinit_[0] >= 1
    assert dl.dictionary_[9].abs().max() < 0.5  # no atom still points along e9
    assert np.isfinite(dl.objective_).all()


def test_a_refit_starts_afresh_and_a_failed_one_keeps_the_previous_fit():
    g = torch.Generator().manual_seed(0)
    X = [torch.randn(100, 20, generator=g) for _ in range(5)]
    learner = DictionaryLearner(16, epochs=2, seed=0, verbose=False).fit(X)
    fresh = DictionaryLearner(16, epochs=2, seed=0, verbose=False).fit(X)
    assert torch.equal(learner.fit(X).dictionary_, fresh.dictionary_)  # no state carried over
    codes = learner.transform(X[0])
    assert torch.equal(learner.transform(X[0]), codes)  # transform changes no state
    state = dict(vars(learner))
    tensors = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}

    class FailsMidway:
        def __iter__(self):
            yield 3 * X[0]
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        learner.fit(FailsMidway())
    assert vars(learner).keys() == state.keys()
    assert all(vars(learner)[k] is v for k, v in state.items())
    assert all(torch.equal(getattr(learner, k), v) for k, v in tensors.items())
    assert torch.equal(learner.transform(X[0]), codes)
    unfitted = DictionaryLearner(16, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="no \\(non-empty\\) batches"):
        unfitted.fit([])
    with pytest.raises(RuntimeError, match="DictionaryLearner is not fitted"):  # not a crash
        unfitted.transform(X[0])


def test_transform_and_score_need_a_fitted_dictionary_of_the_data_size():
    learner = DictionaryLearner(8, epochs=1, seed=0)
    X = torch.randn(64, 16)
    with pytest.raises(RuntimeError, match=r"DictionaryLearner is not fitted: call \.fit\(loader\)"):
        learner.transform(X)
    learner.fit([X[:32], X[32:]])
    assert learner.transform(X).shape == (64, 8)
    assert learner.transform(X.view(64, 4, 4)).shape == (64, 8)  # (N, *) flattens
    with pytest.raises(ValueError, match=r"expected X of shape \(N, 16\).*got \(64, 15\)"):
        learner.transform(X[:, :15])
    with pytest.raises(ValueError, match=r"expected X of shape \(N, 16\).*got \(64, 20\)"):
        learner.score([torch.randn(64, 20)])
    assert learner.transform(X[:0]).shape == (0, 8)  # an empty batch, as nn.Linear allows
    before = learner.dictionary_.clone()
    assert learner.partial_fit(X[:0]) is learner and torch.equal(learner.dictionary_, before)
    bad = X.clone()
    bad[5, 3] = float("inf")
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        learner.partial_fit(bad)
    assert torch.equal(learner.dictionary_, before)
    fresh = DictionaryLearner(8, seed=0)  # the first batch too (it sets lam1='auto')
    bad[5, 3] = float("nan")
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fresh.partial_fit(bad)


@pytest.mark.parametrize("kw, err, match", [
    ({"n_atoms": 0}, ValueError, "n_atoms must be >= 1, got 0"),
    ({"group_size": 3}, ValueError, "group_size=3 must divide"),
    ({"lam1": -0.1}, ValueError, "lam1 must be >= 0, got -0.1"),
    ({"lam1": "big"}, TypeError, "lam1 must be a finite number or 'auto', got 'big'"),
    ({"lam_g": float("nan")}, TypeError, "lam_g must be a finite number, got nan"),
    ({"active_fraction": 1.0}, ValueError, "active_fraction must be in \\(0, 1\\), got 1.0"),
    ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
    ({"max_iter": 0}, ValueError, "max_iter must be >= 1, got 0"),
    ({"dict_steps": 0}, ValueError, "dict_steps must be >= 1, got 0"),
    ({"memory": 0}, ValueError, "memory must be >= 1, got 0"),
    ({"tol": -1e-4}, ValueError, "tol must be >= 0, got -0.0001"),
    ({"seed": "0"}, TypeError, "seed must be an int, got str '0'"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ({"check_every": 2.5}, TypeError, "check_every must be an int, got float 2.5"),
    ({"settle": 0.0}, ValueError, "settle must be in \\(0, 1\\], got 0.0"),
    ({"settle_density": 1.5}, ValueError, "settle_density must be in \\(0, 1\\], got 1.5"),
    ({"precision": "fp16"}, ValueError, "precision must be one of \\('auto', 'float32', 'bfloat16'\\), got 'fp16'"),
])
def test_bad_arguments_are_named_at_construction(kw, err, match):
    args = {"n_atoms": 8, **kw}
    with pytest.raises(err, match=match):
        DictionaryLearner(args.pop("n_atoms"), **args)


def test_a_numpy_integer_seed_is_stored_as_an_int():
    import numpy as np

    learner = DictionaryLearner(4, seed=np.int64(3), epochs=1, verbose=False)
    assert learner.seed == 3 and type(learner.seed) is int  # what Generator.manual_seed takes
    assert learner.fit([torch.randn(32, 6)]).dictionary_.shape == (6, 4)


# ---------------------------------------------------------------- steps, stopping rule, precision
def test_steps_regroup_the_rows_of_a_pass_in_order():
    from torch_structlearn.coding import _steps

    parts = [torch.arange(n * 2, dtype=torch.float32).view(n, 2) + 100 * i
             for i, n in enumerate([3, 5, 1, 7, 2])]
    steps = list(_steps(iter(parts), 4))
    assert [len(s) for s in steps] == [4, 4, 4, 4, 2]
    assert torch.equal(torch.cat(steps), torch.cat(parts))
    assert [len(s) for s in _steps(iter(parts), 100)] == [18]
    assert [s is p for s, p in zip(_steps(iter(parts), None), parts, strict=True)] == [True] * 5


def test_the_stopping_rule_stops_once_the_supports_settle():
    X, _ = _planted(n=4000)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=256)
    kw = dict(lam1=0.1, epochs=20, batch_size=256, check_every=1000, settle_density=8 / 64,
              seed=0, verbose=False)
    full = DictionaryLearner(32, **kw).fit(loader)
    assert not full.settled_ and full.passes_ == 20 and len(full.stability_) > 50  # checked, not stopped
    early = DictionaryLearner(32, settle=0.95, **kw).fit(loader)
    assert early.settled_ and early.passes_ < 20
    samples, overlaps = zip(*early.stability_, strict=True)
    assert overlaps[-1] >= 0.95 and all(o < 0.95 for o in overlaps[:-1])
    assert list(samples) == sorted(samples) and early.n_samples_seen_ == samples[-1]
    # the rule's supports are those of the finished dictionary: compare with a direct top-k
    k = 8
    top = early.dictionary_.abs().topk(k, dim=0).indices
    assert torch.equal(early._supports(), torch.zeros(64, 32, dtype=torch.bool).scatter_(0, top, True))
    # the run it cut short is the full run's beginning: the same overlaps up to the stop
    assert early.stability_ == full.stability_[: len(early.stability_)]


def test_bfloat16_products_give_the_float32_codes_up_to_rounding():
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(64, 48, generator=g), dim=0)
    X = torch.randn(200, 64, generator=g)
    A32 = fista(X, D, lam1=0.5, max_iter=300, tol=1e-8)
    A16 = fista(X, D, lam1=0.5, max_iter=300, tol=1e-8, compute_dtype=torch.bfloat16)
    assert A16.dtype == torch.float32
    f32 = objective(X, D, A32, 0.5).mean()
    f16 = objective(X, D, A16, 0.5).mean()
    assert abs(f16 - f32) / f32 < 1e-3
    assert ((A16 != 0) == (A32 != 0)).float().mean() > 0.98


def test_auto_precision_is_bfloat16_only_with_native_bfloat16(monkeypatch):
    from torch_structlearn.coding import _product_dtype

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert _product_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert _product_dtype("auto", torch.device("cuda")) == torch.float32
    assert _product_dtype("float32", cpu) == torch.float32
    assert _product_dtype("bfloat16", cpu) == torch.bfloat16


# ---------------------------------------------------------------- degenerate data ([convert-scale])


def _degenerate_cases():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 16, generator=g)
    return {
        "all zero": ([torch.zeros(32, 16), torch.zeros(32, 16)], "are all identical"),
        "one example repeated": ([one.expand(40, 16).clone()], "are all identical"),
        "a single example": (DataLoader(TensorDataset(one), batch_size=4), "from 1 example"),
        "a single example, unknown size": (iter([one]), "from 1 example"),
    }


@pytest.mark.parametrize("case", list(_degenerate_cases()))
def test_nothing_to_learn_from_is_an_error_and_keeps_the_previous_fit(case):
    loader, message = _degenerate_cases()[case]
    learner = DictionaryLearner(8, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=message):
        learner.fit(loader)
    assert not hasattr(learner, "dictionary_")  # nothing half-learned left behind


def test_fewer_examples_than_atoms_is_a_warning_naming_both():
    X = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="10 examples for 32 atoms"):
        learner = DictionaryLearner(32, epochs=1, verbose=False).fit([X])
    assert learner.dictionary_.shape == (16, 32)


def test_a_nan_in_the_third_batch_is_named_batch_3():
    batches = [torch.randn(8, 16) for _ in range(3)]
    batches[2][5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"batch 3: contains NaN or Inf \(first in example 5\)"):
        DictionaryLearner(4, epochs=1, verbose=False).fit(batches)


# ---------------------------------------------------------------- the principal subspace
def _in_subspace(n: int = 1200, d: int = 48, r: int = 12, seed: int = 0):
    """Samples that lie exactly in a random ``r``-dimensional subspace of ``R^d``."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, r, generator=g)).Q
    return (torch.randn(n, r, generator=g) * torch.linspace(3, 1, r)) @ Q.T, Q


def test_learning_in_the_subspace_is_exact_when_the_data_lies_in_it():
    # The reference is the learner in the whole input space: the objective is invariant under
    # the rotation into the subspace's coordinates, so both runs make the same steps.
    X, Q = _in_subspace()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=100)
    kw = dict(group_size=2, epochs=2, precision="float32", seed=1, verbose=False)
    whole = DictionaryLearner(16, subspace=None, **kw).fit(loader)
    sub = DictionaryLearner(16, subspace=0.999, **kw).fit(loader)
    assert whole.basis_ is None and sub.basis_.shape == (48, 12)
    assert torch.allclose(sub.basis_.T @ sub.basis_, torch.eye(12), atol=1e-5)
    assert (Q.T @ sub.basis_).svd().S.min() > 0.999  # the data's own subspace
    assert torch.allclose(sub.dictionary_, whole.dictionary_, atol=2e-3)
    assert np.allclose(sub.objective_, whole.objective_, rtol=1e-4)
    assert torch.allclose(sub.transform(X[:50]), whole.transform(X[:50]), atol=2e-3)


def test_the_subspace_learner_starts_from_the_input_space_atoms_and_penalty():
    # more atoms than the first batch has samples: the rest start as Gaussian directions,
    # drawn in the input space and projected, so lam1='auto' reads the same inner products
    X, _ = _in_subspace(n=400, d=48, r=12)
    kw = dict(epochs=1, precision="float32", seed=2, verbose=False)
    whole = DictionaryLearner(64, subspace=None, **kw).fit([X[:40], X[40:]])
    sub = DictionaryLearner(64, subspace=0.999, **kw).fit([X[:40], X[40:]])
    assert sub.basis_.shape == (48, 12)
    assert sub.lam1_ == pytest.approx(whole.lam1_, rel=1e-5)


def test_the_subspace_holds_the_asked_energy_and_is_skipped_when_nearly_whole():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([8.0, 4.0, 2.0, 1.0] + [0.05] * 16)  # energy 64 16 4 1, then 16·0.0025
    X = torch.randn(20_000, 20, generator=g) * scales
    energy = (scales.square().cumsum(0) / scales.square().sum()).tolist()
    for fraction, r in ((0.7, 1), (0.9, 2), (0.99, 4)):
        assert (r == 1 or energy[r - 2] < fraction) and fraction <= energy[r - 1]
        learner = DictionaryLearner(4, subspace=fraction, epochs=1, verbose=False).fit([X])
        assert learner.basis_.shape == (20, r)
        assert learner.dictionary_.shape == (20, 4)
    # all 20 directions (more than 90 %): the whole input space is cheaper
    assert DictionaryLearner(4, subspace=0.99999, epochs=1, verbose=False).fit([X]).basis_ is None


@pytest.mark.parametrize("value, err", [(0.0, ValueError), (1.5, ValueError), ("all", ValueError),
                                        ([0.9], TypeError)])
def test_a_bad_subspace_is_named(value, err):
    with pytest.raises(err, match="subspace must be"):
        DictionaryLearner(4, subspace=value)


def test_auto_subspace_only_for_layers_at_least_a_quarter_as_wide_as_their_input():
    X, _ = _in_subspace(n=400, d=48, r=6)
    assert DictionaryLearner(11, epochs=1, verbose=False).fit([X]).basis_ is None  # 44 < 48
    assert DictionaryLearner(12, epochs=1, verbose=False).fit([X]).basis_.shape == (48, 6)
    # a one-shot iterator is read once, by the learning: 'auto' skips the subspace, a fraction
    # asked for explicitly is an error before anything is read
    assert DictionaryLearner(12, epochs=1, verbose=False).fit(iter([X])).basis_ is None
    with pytest.raises(TypeError, match="subspace=0.99 reads the loader more than once"):
        DictionaryLearner(12, epochs=1, subspace=0.99, verbose=False).fit(iter([X]))
