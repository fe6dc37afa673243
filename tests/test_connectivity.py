import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_structlearn import Connectivity
from torch_structlearn.connectivity import csr_transpose, validate_csr


@st.composite
def masks(draw, max_side=12):
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    p = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g) < p


@given(masks())
def test_mask_round_trip_and_transpose(mask):
    c = Connectivity.from_mask(mask)
    assert torch.equal(c.to_mask(), mask)
    assert c.nnz == int(mask.sum())
    assert torch.equal(c.fan_in, mask.sum(1))
    assert c.density == pytest.approx(mask.float().mean().item())
    t = c.transpose()
    assert t.shape == (mask.shape[1], mask.shape[0])
    assert torch.equal(t.to_mask(), mask.T)
    assert t.transpose() == c


@given(masks())
def test_transpose_permutation_moves_values(mask):
    c = Connectivity.from_mask(mask)
    vals = torch.arange(c.nnz, dtype=torch.float64) + 1
    dense = torch.zeros(mask.shape, dtype=torch.float64)
    dense[c.row_indices(), c.col_indices] = vals
    crow_t, col_t, perm = csr_transpose(c.crow_indices, c.col_indices, mask.shape[1])
    dense_t = torch.zeros(mask.shape[1], mask.shape[0], dtype=torch.float64)
    rows_t = torch.repeat_interleave(torch.arange(mask.shape[1]), crow_t.diff())
    dense_t[rows_t, col_t] = vals[perm]
    assert torch.equal(dense_t, dense.T)


def test_empty_rows_and_nnz_zero_are_legal():
    c = Connectivity(torch.zeros(4, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), (3, 5))
    assert c.nnz == 0 and c.density == 0.0
    assert not c.to_mask().any()
    c2 = Connectivity(torch.tensor([0, 0, 2, 2]), torch.tensor([1, 4]), (3, 5))
    assert c2.fan_in.tolist() == [0, 2, 0]


@pytest.mark.parametrize(
    "crow, col, shape, match",
    [
        (torch.tensor([0.0, 1.0]), torch.tensor([0]), (1, 2), "integer dtype"),
        (torch.tensor([0, 1]), torch.tensor([0.0]), (1, 2), "integer dtype"),
        (torch.tensor([[0, 1]]), torch.tensor([0]), (1, 2), "1-D"),
        (torch.tensor([0, 1, 1]), torch.tensor([0]), (1, 2), "out_features \\+ 1"),
        (torch.tensor([1, 1]), torch.tensor([0]), (1, 2), "start at 0"),
        (torch.tensor([0, 2]), torch.tensor([0]), (1, 2), "end at nnz"),
        (torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]), (3, 2), "non-decreasing"),
        (torch.tensor([0, 1]), torch.tensor([2]), (1, 2), "lie in \\[0, in_features=2\\)"),
        (torch.tensor([0, 1]), torch.tensor([-1]), (1, 2), "lie in"),
        (torch.tensor([0, 2]), torch.tensor([1, 0]), (1, 2), "sorted within each row"),
        (torch.tensor([0, 2]), torch.tensor([1, 1]), (1, 2), "unique within each row"),
        (torch.tensor([0, 1]), torch.tensor([0]), (1, 2, 3), "pair"),
    ],
)
def test_every_invariant_is_named(crow, col, shape, match):
    with pytest.raises((ValueError, TypeError), match=match):
        validate_csr(crow, col, shape)
    with pytest.raises((ValueError, TypeError), match=match):
        Connectivity(crow, col, shape)


def test_descending_across_row_boundary_is_fine():
    c = Connectivity(torch.tensor([0, 2, 3]), torch.tensor([3, 4, 0]), (2, 5))
    assert c.to_mask().nonzero().tolist() == [[0, 3], [0, 4], [1, 0]]


@pytest.mark.parametrize("seed", ["a", 1.5, True])
def test_random_seed_must_be_an_int(seed):
    import numpy as np

    from torch_structlearn import StructLearnedStack

    with pytest.raises(TypeError, match=f"seed must be an int, got {type(seed).__name__}"):
        Connectivity.random((4, 6), fan_in=2, seed=seed)
    stack = StructLearnedStack(6, 4, max_depth=2, density=0.5, group_size=2)
    with pytest.raises(TypeError, match="seed must be an int"):
        StructLearnedStack.random_like(stack, seed=seed)
    assert Connectivity.random((4, 6), fan_in=2, seed=np.int64(3)) == Connectivity.random(
        (4, 6), fan_in=2, seed=3)


def test_immutable():
    c = Connectivity.random((4, 6), fan_in=2, seed=0)
    with pytest.raises(AttributeError):
        c._col = torch.zeros(1)
    col = c.col_indices
    col.zero_()  # a copy: the structure is untouched
    assert c.col_indices.sum() > 0
    assert pickle.loads(pickle.dumps(c)) == c


@given(st.integers(1, 20), st.integers(1, 40), st.floats(0.01, 1.0), st.integers(0, 100))
def test_random_has_exact_fan_in(rows, cols, density, seed):
    c = Connectivity.random((rows, cols), density=density, seed=seed)
    import math

    expect = min(cols, math.ceil(round(density * cols, 9)))
    assert (c.fan_in == expect).all()
    assert Connectivity.random((rows, cols), density=density, seed=seed) == c


def test_random_is_not_degenerate():
    # Every input gets picked about equally often (uniform subsets).
    c = Connectivity.random((2000, 10), fan_in=3, seed=1)
    counts = torch.bincount(c.col_indices, minlength=10).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1


def test_random_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        Connectivity.random((2, 3))
    with pytest.raises(ValueError, match="exactly one"):
        Connectivity.random((2, 3), density=0.5, fan_in=1)
    with pytest.raises(ValueError, match="density must be in \\(0, 1\\], got 1.5"):
        Connectivity.random((2, 3), density=1.5)
    with pytest.raises(ValueError, match="fan_in must be an int in \\[0, in_features=3\\], got 4"):
        Connectivity.random((2, 3), fan_in=4)


def test_from_scores_per_unit_and_global():
    scores = torch.tensor([[0.1, -5.0, 0.3, 0.2], [1.0, 2.0, 3.0, 4.0]])
    c = Connectivity.from_scores(scores, 0.5, "per_unit")
    assert c.to_mask().tolist() == [[False, True, True, False], [False, False, True, True]]
    g = Connectivity.from_scores(scores, 0.25, "global")  # top 2 of 8 by |score|
    assert g.to_mask().tolist() == [[False, True, False, False], [False, False, False, True]]
    for bad in ("nope", ["per_unit"], None, 1):  # a list is unhashable; none is accepted
        with pytest.raises(ValueError, match=r"mode must be one of \('per_unit', 'global'\), got "):
            Connectivity.from_scores(scores, 0.5, bad)
    with pytest.raises(ValueError, match="NaN"):
        Connectivity.from_scores(torch.tensor([[float("nan")]]), 0.5)


@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([(1, 1), (2, 2), (2, 3)]),
       st.floats(0.05, 1.0), st.integers(0, 1000))
def test_blocks(rb, cb, block, density, seed):
    bo, bi = block
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(rb * bo, cb * bi, generator=g)
    c = Connectivity.from_scores(scores, density, "global", block=block)
    mask = c.to_mask().reshape(rb, bo, cb, bi)
    block_any = mask.any(3).any(1)
    block_all = mask.all(3).all(1)
    assert torch.equal(block_any, block_all)  # whole blocks only
    assert int(block_all.sum()) == min(rb * cb, round(density * rb * cb))
    # the kept blocks are the top-scoring ones
    bscore = scores.reshape(rb, bo, cb, bi).sum((1, 3))
    if 0 < block_all.sum() < rb * cb:
        assert bscore[block_all].min() >= bscore[~block_all].max()


def test_blocks_errors():
    with pytest.raises(ValueError, match="must divide"):
        Connectivity.from_scores(torch.rand(4, 6), 0.5, block=(3, 2))
    with pytest.raises(ValueError, match="pair of positive ints"):
        Connectivity.from_scores(torch.rand(4, 6), 0.5, block=(0, 2))


def test_overlap_is_the_mean_per_unit_jaccard_of_the_input_sets():
    torch.manual_seed(0)
    a = Connectivity.random((20, 50), density=0.2)
    b = Connectivity.random((20, 50), density=0.3)
    sets = lambda c: [set(c.col_indices[c.crow_indices[i]:c.crow_indices[i + 1]].tolist())  # noqa: E731
                      for i in range(c.shape[0])]
    want = sum(len(x & y) / len(x | y) for x, y in zip(sets(a), sets(b), strict=True)) / 20
    assert a.overlap(b) == pytest.approx(want)
    assert a.overlap(a) == 1.0
    with pytest.raises(ValueError, match="of shape"):
        a.overlap(Connectivity.random((20, 49), density=0.2))
