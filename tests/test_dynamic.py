"""Dynamic sparse training (RigL, SET) on StructLearnedLinear layers, against a dense masked
reference written here row by row."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_structlearn import StructLearnedLinear
from torch_structlearn.dynamic import DynamicSparsity, update_mask


def _reference_update(weight, mask, n, grow):
    """Row by row, in plain Python: drop the n kept entries of smallest |w|, grow the n
    entries (not kept after the drop) of largest score."""
    new = mask.clone()
    for i in range(mask.shape[0]):
        kept = [j for j in range(mask.shape[1]) if mask[i, j]]
        for j in sorted(kept, key=lambda j: abs(float(weight[i, j])))[:n]:
            new[i, j] = False
        free = [j for j in range(mask.shape[1]) if not new[i, j]]
        for j in sorted(free, key=lambda j: -float(grow[i, j]))[:n]:
            new[i, j] = True
    return new


def test_update_mask_matches_the_row_by_row_reference():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        W = torch.randn(7, 20, generator=g)
        mask = torch.rand(7, 20, generator=g) < 0.3
        mask[:, 0] = True  # every row keeps something
        grow = torch.randn(7, 20, generator=g)
        n = 1 + trial % 2
        n = min(n, int(mask.sum(1).min()))
        got = update_mask(W, mask, n, grow)
        assert torch.equal(got, _reference_update(W, mask, n, grow))
        assert torch.equal(got.sum(1), mask.sum(1))  # every unit keeps its fan-in


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(StructLearnedLinear(24, 16, density=0.25), nn.ReLU(),
                         StructLearnedLinear(16, 4, density=0.5))


def _step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_a_mask_update_keeps_nnz_moves_the_optimizer_state_and_zeroes_regrown_weights(method):
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 24), torch.randint(0, 4, (64,))
    dst = DynamicSparsity(model, opt, method=method, update_every=3, fraction=0.5,
                          total_steps=30)
    layer = model[0]
    for _ in range(2):
        _step(model, opt, x, y)
        dst.step()
    before_mask = layer.connectivity.to_mask()
    state = opt.state[layer.values]
    before_m = torch.zeros(16, 24)
    before_m[before_mask] = state["exp_avg"].view(-1)
    _step(model, opt, x, y)  # the update step's batch (RigL's gradient)
    w_after_opt = layer.dense_weight().detach().clone()
    m_after_opt = torch.zeros(16, 24)
    m_after_opt[before_mask] = state["exp_avg"].view(-1)
    dst.step()
    assert len(dst.updates) == 1 and dst.updates[0]["changed"] > 0
    after_mask = layer.connectivity.to_mask()
    assert layer.nnz == int(before_mask.sum()) and torch.equal(after_mask.sum(1),
                                                               before_mask.sum(1))
    W = layer.dense_weight().detach()
    kept, grown = after_mask & before_mask, after_mask & ~before_mask
    assert bool(grown.any())
    torch.testing.assert_close(W[kept], w_after_opt[kept])  # kept weights keep their values
    assert bool((W[grown] == 0).all())  # regrown weights start at zero
    m = torch.zeros(16, 24)
    m[after_mask] = state["exp_avg"].view(-1)
    torch.testing.assert_close(m[kept], m_after_opt[kept])  # ... and their Adam moments
    assert bool((m[grown] == 0).all())
    # no stale cache: the layer computes its masked dense product, and training goes on
    xx = torch.randn(5, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(xx), F.linear(xx, W, layer.bias))
    losses = [_step(model, opt, x, y) for _ in range(20)]
    assert losses[-1] < losses[0]


def test_rigl_grows_where_the_dense_gradient_is_largest():
    """On the update step the grown connections are the free entries of largest |gyᵀ x| for
    that step's batch (computed here from a dense copy of the layer)."""
    model = _net(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: the drop is by |w| alone
    x, y = torch.randn(32, 24), torch.randint(0, 4, (32,))
    dst = DynamicSparsity(model, opt, method="rigl", update_every=1, fraction=0.25,
                          total_steps=100)
    layer = model[0]
    mask = layer.connectivity.to_mask()
    W = layer.dense_weight().detach().clone().requires_grad_()
    h = F.linear(x, W, layer.bias)  # the same forward with a dense weight: ∂L/∂W
    out = model[2](torch.relu(h))
    gW, = torch.autograd.grad(F.cross_entropy(out, y), W)
    n = round(dst.fraction_at(1) * 6)  # fan-in 6 of 24 at 25 %
    want = update_mask(W.detach(), mask, n, gW.abs())
    assert torch.equal(want, _reference_update(W.detach(), mask, n, gW.abs()))
    _step(model, opt, x, y)
    dst.step()
    assert torch.equal(layer.connectivity.to_mask(), want)


def test_schedule_and_bad_arguments():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dst = DynamicSparsity(model, opt, update_every=10, fraction=0.3, total_steps=100)
    assert dst.fraction_at(0) == pytest.approx(0.3) and dst.fraction_at(75) == 0.0
    assert dst.fraction_at(37.5) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="method must be one of"):
        DynamicSparsity(model, opt, method="prune", total_steps=10)
    with pytest.raises(ValueError, match="no StructLearnedLinear"):
        DynamicSparsity(nn.Linear(3, 3), opt, total_steps=10)
    with pytest.raises(ValueError, match="does not hold the values"):
        DynamicSparsity(model, torch.optim.SGD(model[2].parameters(), lr=0.1), total_steps=10)
    blocky = nn.Sequential(StructLearnedLinear(16, 16, density=0.5, block=(4, 4)))
    with pytest.raises(ValueError, match="block-sparse"):
        DynamicSparsity(blocky, torch.optim.SGD(blocky.parameters(), lr=0.1), total_steps=10)
    dst = DynamicSparsity(model, opt, method="rigl", update_every=1, total_steps=10)
    with pytest.raises(RuntimeError, match="no gradient was captured"):
        opt.step()
        dst.step()  # no forward/backward through the model before it


def test_erk_densities_keep_the_budget_in_the_erdos_renyi_proportions():
    from torch_structlearn.dynamic import erk_densities

    shapes = [(256, 3072), (256, 64), (128, 256)]
    dens = erk_densities(shapes, 0.05)
    sizes = [o * i for o, i in shapes]
    assert sum(d * n for d, n in zip(dens, sizes, strict=True)) == pytest.approx(0.05 * sum(sizes))
    ratios = [d / ((o + i) / (o * i)) for d, (o, i) in zip(dens, shapes, strict=True)]
    assert ratios == pytest.approx([ratios[0]] * 3)  # one ε for every layer
    assert erk_densities([(64, 64)], 0.05) == pytest.approx([0.05])  # one layer: uniform
    # a layer that would exceed 1 is dense, the budget left goes to the others
    capped = erk_densities([(4, 4), (1000, 1000)], 0.5)
    assert capped[0] == 1.0 and capped[1] == pytest.approx((0.5 * 1_000_016 - 16) / 1_000_000)
    assert erk_densities([(4, 4), (8, 8)], 1.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match="density must be in"):
        erk_densities(shapes, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        erk_densities([], 0.1)
