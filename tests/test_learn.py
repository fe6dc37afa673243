"""The structure learner: bad input, local receptive fields, depth rule, entropy, pooling."""

import copy
import math
import pickle

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torch_structlearn import (
    Connectivity,
    GroupPool,
    StructLearnedLinear,
    StructLearnedStack,
    ZCAWhitening,
    learn_structure,
    load,
    save,
)
from torch_structlearn.coding import DictionaryLearner
from torch_structlearn.entropy import (
    coding_efficiency,
    gaussian_total_correlation,
    marginal_entropy,
)
from torch_structlearn.pooling import learn_groups
from torch_structlearn.viz import receptive_field_spread


def _loader(X, bs=100, **kw):
    return DataLoader(TensorDataset(X), batch_size=bs, **kw)


# ---------------------------------------------------------------- bad input
class _Bad:
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


@pytest.mark.parametrize("loader, err, match", [
    (_Bad([]), ValueError, "no \\(non-empty\\) batches"),
    (_Bad([torch.randn(4, 5), torch.full((4, 5), float("nan"))]), ValueError, "batch 2: contains NaN"),
    (_Bad([torch.randn(4, 5), torch.randn(4, 6)]), ValueError, "batch 2: feature size changed from 5 to 6"),
    (_Bad(["not a tensor"]), TypeError, "batch 1: the loader must yield tensors"),
    (_Bad([{"y": torch.randn(4, 5)}]), KeyError, "no key 'x'"),
    (torch.randn(8, 5), ValueError, r"batch 1: x must be \(N, d\) or \(N, C, H, W\), got shape \(5,\)"),
])
def test_bad_loaders(loader, err, match):
    with pytest.raises(err, match=match):
        learn_structure(loader, 4, density=0.5, epochs=1, verbose=False)


def test_a_one_shot_iterator_is_refused_before_any_batch_is_read():
    X = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    calls = [
        ("learn_structure", lambda it: learn_structure(it, 4, density=0.5, epochs=1, verbose=False)),
        ("fit with epochs=2", lambda it: DictionaryLearner(4, epochs=2).fit(it)),
        ("learning", lambda it: StructLearnedLinear(6, 4).learn_structure(it, epochs=1, verbose=False)),
        ("learning", lambda it: StructLearnedStack(6, 4, group_size=2).learn_structure(it, epochs=1)),
    ]
    for why, call in calls:
        it = iter([X[:20], X[20:]])
        with pytest.raises(TypeError, match=f"{why} reads the loader more than once: pass a "
                                            f"re-iterable loader .*list_iterator"):
            call(it)
        assert next(it).shape == (20, 6)  # nothing was consumed
    one_pass = DictionaryLearner(4, epochs=1).fit(b for b in (X[:20], X[20:]))  # one pass is fine
    assert one_pass.dictionary_.shape == (6, 4)


def test_report_counts_active_codes():
    X = torch.randn(200, 12, generator=torch.Generator().manual_seed(0))
    reports = [learn_structure(_loader(X, 50), 6, density=0.5, epochs=1, lam1=lam, verbose=False)[2]
               for lam in (1e-6, 1e6)]
    assert reports[0].active > 0.95 and reports[1].active == 0.0


def test_loader_forms_and_dict_key():
    X = torch.randn(60, 1, 3, 3)  # images are flattened
    for loader in (_Bad([X]), _Bad([(X, torch.zeros(60))]), _Bad([[X]]), _Bad([{"img": X}])):
        conn, D, rep = learn_structure(loader, 6, density=0.5, epochs=1, key="img", verbose=False)
        assert conn.shape == (6, 9) and D.shape == (9, 6)


@pytest.mark.parametrize("kw, match", [
    (dict(density=0.0), "density must be in \\(0, 1\\], got 0.0"),
    (dict(density=1.5), "density must be in"),
    (dict(width=0), "width must be >= 1, got 0"),
    (dict(group_size=3), "group_size=3 must divide width=8"),
    (dict(lam1=-1.0), "lam1 must be >= 0, got -1.0"),
    (dict(lam_g=-0.5), "lam_g must be >= 0"),
    (dict(active_fraction=1.0), r"active_fraction must be in \(0, 1\), got 1.0"),
    (dict(active_fraction="many"), "active_fraction must be a float in"),
    (dict(memory=0), "memory must be >= 1, got 0"),
])
def test_bad_arguments_fail_before_work(kw, match):
    args = dict(width=8, density=0.5, group_size=2)
    args.update(kw)
    width = args.pop("width")
    with pytest.raises((ValueError, TypeError), match=match):
        StructLearnedStack(10, width, **args)
    touched = []

    class Spy:
        def __iter__(self):
            touched.append(1)
            return iter([torch.randn(4, 10)])

    with pytest.raises((ValueError, TypeError), match=match):
        learn_structure(Spy(), width, verbose=False, **args)
    assert not touched  # rejected before the loader was read


@pytest.mark.parametrize("kw, err, match", [
    (dict(pool="avg"), ValueError, "pool must be one of \\('l2', 'max', 'mean'\\), got 'avg'"),
    (dict(min_gain=float("nan")), ValueError, "min_gain must not be NaN"),
    (dict(min_gain="0.1"), TypeError, "min_gain must be a number, got str"),
    (dict(epoch=3), TypeError, "unexpected learning argument\\(s\\) \\['epoch'\\]"),
    (dict(score_samples=1), ValueError, "score_samples must be >= 2 \\(the score estimates entropies\\), got 1"),
    (dict(score_samples=100.0), TypeError, "score_samples must be an int"),
    (dict(max_depth=2, depth=3), ValueError, "depth must be <= max_depth \\(2\\), got 3"),
])
def test_stack_arguments_are_checked_at_construction(kw, err, match):
    with pytest.raises(err, match=match):
        StructLearnedStack(10, 8, **kw)


@pytest.mark.parametrize("kw, err, match", [
    (dict(density=0.2), TypeError, "unexpected learning argument\\(s\\) \\['density'\\]"),
    (dict(lam1=-1.0), ValueError, "lam1 must be >= 0, got -1.0"),  # values, not only names
    (dict(mode="rows"), ValueError, "mode must be one of"),
    (dict(score_samples=0), ValueError, "score_samples must be >= 1, got 0"),
])
def test_stack_learn_overrides_are_checked_before_reading(kw, err, match):
    loader = _Counting([torch.randn(4, 10)])
    with pytest.raises(err, match=match):
        StructLearnedStack(10, 8, verbose=False).learn_structure(loader, **kw)
    assert loader.reads == 0


class _Counting(_Bad):
    """A loader that counts how often it is read."""

    reads = 0

    def __iter__(self):
        self.reads += 1
        return super().__iter__()


@pytest.mark.parametrize("make", [
    lambda: StructLearnedLinear(64, 32),
    lambda: StructLearnedStack(64, 32, max_depth=1, group_size=4, verbose=False),
])
def test_wrong_input_width_fails_before_learning(make):
    loader = _Counting([torch.randn(50, 10)])
    with pytest.raises(ValueError, match="the loader yields 10 features, expected in_features=64"):
        make().learn_structure(loader)
    assert loader.reads == 1  # only the first batch was looked at


def test_block_not_dividing_the_input_width_fails_before_learning():
    loader = _Counting([torch.randn(50, 24)])
    with pytest.raises(ValueError, match=r"block=\(16, 16\) must divide the shape \(32, 24\)"):
        learn_structure(loader, 32, density=0.5, block=(16, 16), verbose=False)
    assert loader.reads == 1  # the validation pass, not the dictionary's


# ---------------------------------------------------------------- receptive fields
def _photo_crops(n=6000, size=16, seed=0):
    from skimage import color, data

    imgs = []
    for name in ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page"):
        im = getattr(data, name)()
        if im.ndim == 3:
            im = color.rgb2gray(im[..., :3])
        im = torch.tensor(im, dtype=torch.float32)
        imgs.append(im / im.max())
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        r = int(torch.randint(0, im.shape[0] - size, (1,), generator=g))
        c = int(torch.randint(0, im.shape[1] - size, (1,), generator=g))
        crops.append(im[r : r + size, c : c + size])
    return torch.stack(crops).reshape(n, -1)


def test_learned_masks_are_local_on_natural_images():
    X = _photo_crops(n=12000)
    v = X.var(1)
    X = X[v > v.median()]  # drop flat crops (sky, paper), as is usual for patch statistics
    w = ZCAWhitening(256, eps=0.1).fit(_loader(X, 500))
    Xw = w(X)
    conn, D, rep = learn_structure(_loader(Xw, 250), 128, density=0.05, epochs=5, seed=0,
                                   verbose=False)
    learned = receptive_field_spread(conn, (1, 16, 16)).mean().item()
    rand_conn = Connectivity.random((128, 256), fan_in=int(conn.fan_in[0]), seed=0)
    rand = receptive_field_spread(rand_conn, (1, 16, 16)).mean().item()
    print(f"mean spread learned {learned:.2f} px, random {rand:.2f} px, ratio {learned / rand:.3f}")
    assert learned <= 0.5 * rand, (learned, rand)


# ---------------------------------------------------------------- entropy and pooling
def test_entropy_estimators_against_closed_forms():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(200_000, 3, generator=g)
    h = marginal_entropy(Z)
    torch.testing.assert_close(h, torch.full((3,), 0.5 * math.log(2 * math.pi * math.e), dtype=torch.float64), atol=0.02, rtol=0)
    # uniform: standardised width √12 → log √12; the fixed ±6σ grid cuts the two edge bins,
    # a known histogram bias of ~0.04 nats here
    U = torch.rand(200_000, 1, generator=g)
    assert abs(float(marginal_entropy(U)) - math.log(math.sqrt(12))) < 0.05
    # correlated Gaussian pair with ρ: TC = −½ log(1 − ρ²)
    rho = 0.8
    Y = torch.stack([Z[:, 0], rho * Z[:, 0] + math.sqrt(1 - rho**2) * Z[:, 1]], 1)
    assert abs(gaussian_total_correlation(Y) + 0.5 * math.log(1 - rho**2)) < 0.01
    assert coding_efficiency(Z) > coding_efficiency(Y)


@pytest.mark.parametrize("call, match", [
    (lambda Y: marginal_entropy(Y, bins=0), "bins must be >= 1, got 0"),
    (lambda Y: marginal_entropy(Y, bins=2.5), "bins must be an int"),
    (lambda Y: marginal_entropy(Y, limit=0.0), "limit must be > 0, got 0.0"),
    (lambda Y: gaussian_total_correlation(Y, ridge=-1.0), "ridge must be >= 0"),
    (lambda Y: coding_efficiency(Y[:1]), r"N >= 2 samples, got shape \(1, 3\)"),
    (lambda Y: coding_efficiency(Y.index_fill(0, torch.tensor([4]), float("nan"))),
     "Y has 3 NaN/Inf entries"),
])
def test_entropy_estimators_reject_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.randn(10, 3))


def test_group_pool_modes_and_learned_groups():
    h = torch.tensor([[3.0, 4.0, 1.0, -2.0]])
    assert torch.allclose(GroupPool(2, "l2")(h), torch.tensor([[5.0, math.sqrt(5)]]))
    assert GroupPool(2, "max")(h).tolist() == [[4.0, 1.0]]
    assert GroupPool(2, "mean")(h).tolist() == [[3.5, -0.5]]
    with pytest.raises(ValueError, match="mode must be one of"):
        GroupPool(2, "median")
    # units 0&2 and 1&3 share an energy source: learned groups pair them
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5000, 2, generator=g).abs() * torch.randn(5000, 2, generator=g).exp()
    H = torch.stack([s[:, 0], s[:, 1], s[:, 0] * 0.9, s[:, 1] * 1.1], 1) * torch.randn(5000, 4, generator=g).sign()
    perm = learn_groups(H, 2)
    pairs = {frozenset(perm[i : i + 2].tolist()) for i in (0, 2)}
    assert pairs == {frozenset({0, 2}), frozenset({1, 3})}
    pool = GroupPool(2, permutation=perm)
    assert pool(H).shape == (5000, 2)
    for wrong in (torch.cat([H, H], 1), H[:, :2]):  # 8 units were silently cut to the first 4
        with pytest.raises(ValueError, match=r"learned groups pools 4 units, got input of shape"):
            pool(wrong)
    with pytest.raises(ValueError, match="group_size must be >= 1, got 0"):
        learn_groups(H, 0)
    with pytest.raises(ValueError, match=r"H must be a 2-D \(N, K\) tensor, got \(4,\)"):
        learn_groups(H[0], 2)


# ---------------------------------------------------------------- depth rule and the stack
def test_depth_rule_stops_at_one_and_report_is_consistent(tmp_path):
    # i.i.d. Gaussian noise: there is no structure for a second layer to add
    X = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0))
    stack = StructLearnedStack(16, 16, max_depth=3, density=0.5, group_size=2, min_gain=0.01,
                               epochs=2, verbose=False)
    stack.learn_structure(_loader(X, 250))
    assert stack.depth == 1
    rep = stack.report
    assert len(rep) == 2 and rep[0]["kept"] and not rep[1]["kept"]
    assert rep[1]["gain"] < 0.01
    assert rep[1]["gain"] == pytest.approx((rep[1]["score"] - rep[0]["score"]) / abs(rep[0]["score"]))
    assert "layer" in stack.format_report()
    assert stack(torch.randn(5, 16)).shape == (5, 8)
    twin = copy.deepcopy(stack)  # a learned stack copies and pickles like any module
    assert twin.report == rep and twin.report[0].K == 16
    assert pickle.loads(pickle.dumps(rep[0])) == rep[0]
    with pytest.raises(AttributeError, match="no field 'nope'"):
        getattr(rep[0], "nope")  # noqa: B009
    back = load(save(stack, tmp_path / "s.safetensors"))
    assert isinstance(back, StructLearnedStack) and back.depth == 1
    x = torch.randn(7, 16)
    torch.testing.assert_close(back(x), stack(x))


def test_stack_keeps_every_layer_when_min_gain_allows_and_random_like():
    X = _photo_crops(n=3000, size=8)
    w = ZCAWhitening(64).fit(_loader(X, 500))
    stack = StructLearnedStack(64, 64, max_depth=2, density=0.25, group_size=4, min_gain=float("-inf"),
                               epochs=2, verbose=False)
    stack.learn_structure(_loader(w(X), 250))
    assert stack.depth == 2  # min_gain=-inf keeps every layer
    assert [r["K"] for r in stack.report] == [64, 64]
    rnd = StructLearnedStack.random_like(stack, seed=0)
    for a, b in zip(stack.layers, rnd.layers, strict=False):
        assert torch.equal(a[0].fan_in, b[0].fan_in)
        assert a[0].connectivity != b[0].connectivity


def test_random_like_copies_the_pooling_groups_without_sharing_them():
    """The baseline gets the same learned groups in a module of its own: moving it (here to the
    meta device) must leave the original stack where it was and working."""
    stack = StructLearnedStack(16, 8, max_depth=1, density=0.5, group_size=4)
    perm = torch.tensor([3, 0, 5, 1, 7, 2, 6, 4])
    stack.layers[0][2] = GroupPool(4, num_features=8, permutation=perm)
    rnd = StructLearnedStack.random_like(stack, seed=0)
    assert torch.equal(rnd.layers[0][2].permutation, perm)
    rnd.to("meta")
    assert stack.layers[0][2].permutation.device.type == "cpu"
    assert stack(torch.randn(2, 16)).shape == (2, 2)


def test_single_layer_learn_structure_inits():
    X = _photo_crops(n=2000, size=8)
    layer = StructLearnedLinear(64, 32, density=0.1)
    layer.learn_structure(_loader(X, 250), init="dictionary", epochs=2, verbose=False)
    assert layer.dictionary_.shape == (64, 32)
    w = layer.dense_weight().detach()
    torch.testing.assert_close(w.norm(dim=1), torch.full((32,), 1 / math.sqrt(3)), atol=1e-5, rtol=0)
    assert (layer.bias == 0).all()
    # the kept weights have the sign pattern of the dictionary
    D = layer.dictionary_.T
    mask = layer.connectivity.to_mask()
    assert (torch.sign(w[mask]) == torch.sign(D[mask])).all()
    with pytest.raises(ValueError, match="init must be"):
        layer.learn_structure(_loader(X), init="zeros")


def test_learned_groups_option_and_file_round_trip(tmp_path):
    X = _photo_crops(n=2000, size=8)
    stack = StructLearnedStack(64, 32, max_depth=1, density=0.25, group_size=4, groups="learned",
                               epochs=1, verbose=False)
    stack.learn_structure(_loader(X, 250))
    perm = stack.layers[0][2].permutation
    assert perm is not None and sorted(perm.tolist()) == list(range(32))
    back = load(save(stack, tmp_path / "g.safetensors"))
    assert torch.equal(back.layers[0][2].permutation, perm)
    x = torch.randn(3, 64)
    torch.testing.assert_close(back(x), stack(x))
    with pytest.raises(ValueError, match="groups must be"):
        StructLearnedStack(64, 32, groups="kmeans")


def test_convolutional_whitening_approximates_the_full_zca(tmp_path):
    """On natural-image crops (near-stationary statistics) a fitted 7x7 convolution reproduces
    the full ZCA output on held-out crops far better than the best 1x1 (per-pixel) filter."""
    X = _photo_crops(n=5000, size=16)
    train, test = X[:4000], X[4000:]
    full = ZCAWhitening(256).fit(_loader(train, 500))
    ref = full(test)

    def error(k):
        conv = ZCAWhitening(256, image_shape=(1, 16, 16), kernel_size=k).fit(_loader(train, 500))
        assert conv.weight.shape == (1, 1, k, k) and not hasattr(conv, "matrix")
        return float((conv(test) - ref).norm() / ref.norm()), conv

    e1, _ = error(1)
    e7, conv = error(7)
    assert e7 < 0.5 * e1, (e7, e1)
    assert "kernel_size=7" in repr(conv)
    with pytest.raises(ValueError, match="must be odd"):
        ZCAWhitening(256, image_shape=(1, 16, 16), kernel_size=4)
    with pytest.raises(ValueError, match="C\\*H\\*W = num_features = 256"):
        ZCAWhitening(256, image_shape=(1, 8, 8), kernel_size=3)
    with pytest.raises(ValueError, match=r"image_shape=\(1, 16, 16\) is only used with kernel_size"):
        ZCAWhitening(256, image_shape=(1, 16, 16))
    one_shot = iter(_loader(train, 500))
    with pytest.raises(TypeError, match="kernel_size whitening reads the loader more than once: pass a re-iterable loader"):
        ZCAWhitening(256, image_shape=(1, 16, 16), kernel_size=3).fit(one_shot)
    assert len(next(one_shot)[0]) == 500  # refused before reading anything


def test_low_rank_whitening_is_the_full_zca_on_its_directions_and_close_elsewhere(tmp_path):
    """rank=k: the k highest-variance directions whitened exactly, the rest at one common
    scale; fitted directly or made from a fitted full ZCA (low_rank), the same module; its
    error against the full ZCA output shrinks with k; saved and loaded in a classifier."""
    from torch_structlearn import StructLearnedClassifier, StructLearnedStack

    X = _photo_crops(n=5000, size=16)
    train, test = X[:4000], X[4000:]
    full = ZCAWhitening(256).fit(_loader(train, 500))
    ref = full(test)
    errors = {}
    for k in (8, 64, 200):
        low = ZCAWhitening(256, rank=k).fit(_loader(train, 500))
        assert low.basis.shape == (256, k) and not hasattr(low, "matrix")
        torch.testing.assert_close(low(test), full.low_rank(k)(test), rtol=1e-3, atol=1e-4)
        errors[k] = float((low(test) - ref).norm() / ref.norm())
        # exact on the kept directions: W u = s u for every kept eigenvector u
        u = low.basis
        torch.testing.assert_close(u.T @ full.matrix @ u, torch.diag(low.gains + low.floor),
                                   rtol=1e-3, atol=1e-4)
    assert errors[200] < errors[64] < errors[8] and errors[200] < 0.05, errors
    assert "rank=64" in repr(ZCAWhitening(256, rank=64))
    with pytest.raises(ValueError, match="give rank= or kernel_size=, not both"):
        ZCAWhitening(256, rank=8, image_shape=(1, 16, 16), kernel_size=3)
    with pytest.raises(ValueError, match="rank must be < num_features = 256"):
        ZCAWhitening(256, rank=256)
    with pytest.raises(ValueError, match="low_rank needs a fitted full-matrix"):
        ZCAWhitening(256).low_rank(8)
    stack = StructLearnedStack(256, 16, max_depth=1, density=0.25, group_size=2)
    model = StructLearnedClassifier(full.low_rank(64), stack, 3, (1, 16, 16)).eval()
    back = load(save(model, tmp_path / "c.safetensors"))
    assert back.whitening.rank == 64
    torch.testing.assert_close(back(test[:5]), model(test[:5]))


def test_a_failed_refit_keeps_the_fitted_whitening():
    """The convolution whitening reads the loader twice; when the second pass fails, the module
    keeps its previous fit whole (it used to hold the new mean with the old filter)."""
    X = _photo_crops(n=600, size=8)
    conv = ZCAWhitening(64, image_shape=(1, 8, 8), kernel_size=3).fit(_loader(X[:300], 100))
    before = {k: v.clone() for k, v in conv.state_dict().items()}

    class FailsOnSecondPass:
        passes = 0

        def __iter__(self):
            self.passes += 1
            if self.passes == 2:
                raise OSError("disk went away")
            return iter(_loader(3.0 * X[300:], 100))  # other statistics: a refit changes them

    with pytest.raises(OSError, match="disk went away"):
        conv.fit(FailsOnSecondPass())
    after = conv.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("eps, exc, match", [(0.0, ValueError, "eps must be > 0, got 0.0"),
                                              (-1, ValueError, "eps must be > 0, got -1"),
                                              (float("nan"), TypeError, "eps must be a finite number"),
                                              (float("inf"), TypeError, "eps must be a finite number"),
                                              ("0.1", TypeError, "eps must be a finite number")])
def test_whitening_rejects_a_bad_eps(eps, exc, match):
    with pytest.raises(exc, match=match):
        ZCAWhitening(8, eps=eps)


@pytest.mark.parametrize("value", [1, "no", None])
def test_whitening_per_example_mean_must_be_a_bool(value):
    # before: accepted, and a classifier saved with it could not be loaded again
    # (the file format holds per_example_mean as a JSON bool)
    with pytest.raises(TypeError, match=f"per_example_mean must be True or False, got "
                                        f"{type(value).__name__} {value!r}"):
        ZCAWhitening(8, per_example_mean=value)


def test_whitening_refuses_to_run_before_it_is_fitted():
    X = torch.randn(200, 8) @ torch.randn(8, 8)
    with pytest.raises(RuntimeError, match=r"ZCAWhitening is not fitted: call \.fit\(loader\)"):
        ZCAWhitening(8)(X)
    fitted = ZCAWhitening(8).fit(_loader(X))
    Z = fitted(X)
    restored = ZCAWhitening(8)
    restored.load_state_dict(fitted.state_dict())  # a fitted state carries the flag
    torch.testing.assert_close(restored(X), Z)


def test_the_learner_settings_travel_as_one_object():
    """learn_layer, the stack and convert take the coding settings as one DictionaryLearner
    (its arguments still work, and override it); a wrong setting name is a TypeError naming
    it, before any work."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from torch_structlearn import DictionaryLearner, Learn, StructLearnedStack, convert, learn_layer
    from torch_structlearn.learn import learner_for

    settings = DictionaryLearner(2, lam1=0.2, epochs=1, max_iter=5, group_size=2, verbose=False)
    built = learner_for(8, settings, epochs=2)
    assert built.n_atoms == 8 and built.lam1 == 0.2 and built.epochs == 2 and built.group_size == 2
    assert settings.n_atoms == 2 and settings.epochs == 1  # the settings object is not changed
    with pytest.raises(TypeError, match=r"unexpected learner setting\(s\) \['lamda'\]"):
        learner_for(8, settings, lamda=0.1)
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64, 12)), batch_size=32)
    a, _ = learn_layer(loader, 8, density=0.25, learner=settings)
    b, _ = learn_layer(loader, 8, density=0.25, lam1=0.2, epochs=1, max_iter=5, group_size=2,
                       verbose=False)
    assert a.connectivity == b.connectivity and torch.equal(a.values, b.values)
    stack = StructLearnedStack(12, 8, max_depth=1, density=0.25, group_size=2, learner=settings)
    stack.learn_structure(loader, verbose=False)
    assert stack.depth == 1
    with pytest.raises(TypeError, match="learner must be a DictionaryLearner"):
        StructLearnedStack(12, 8, group_size=2, learner={"lam1": 0.2})
    model = torch.nn.Sequential(torch.nn.Linear(12, 8))
    convert(model, loader, density=0.25, method=Learn(learner=settings), verbose=False)
    assert model[0].nnz == 8 * 3


def test_stack_and_convert_refuse_data_with_nothing_to_learn():
    """A stack on all-zero data used to report its layer 'kept'; convert's dictionary method
    learned from it silently. Both now stop with the reason, naming the layer for convert."""
    from torch_structlearn import Learn, convert

    zeros = [torch.zeros(32, 16), torch.zeros(32, 16)]
    with pytest.raises(ValueError, match="are all identical"):
        StructLearnedStack(16, 8, max_depth=2, density=0.25, group_size=2).learn_structure(
            zeros, verbose=False)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"layer '0' input: the 64 examples are all identical"):
        convert(model, [(z,) for z in zeros], density=0.25, method=Learn(max_iter=5),
                verbose=False)
    assert type(model[0]) is torch.nn.Linear
