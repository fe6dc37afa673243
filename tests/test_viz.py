"""Receptive-field pictures and the compactness measure, against hand-computed cases."""

import pytest
import torch
from PIL import Image

from torch_structlearn import Connectivity, StructLearnedLinear
from torch_structlearn.viz import (
    group_centre_distance,
    receptive_field_centres,
    receptive_field_spread,
    save_receptive_fields,
)


def test_spread_of_planted_masks():
    # (C, H, W) = (2, 3, 3): input c*9 + 3*y + x
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[0, [0, 2]] = True            # pixels (0,0) and (0,2): centroid (0,1), distance 1 each
    mask[1, [4, 9 + 4]] = True        # both channels of the centre pixel: one pixel, spread 0
    mask[2, [0, 8, 9 + 2, 9 + 6]] = True  # the four corners: distance √2 each
    spread = receptive_field_spread(Connectivity.from_mask(mask), (2, 3, 3))
    torch.testing.assert_close(spread, torch.tensor([1.0, 0.0, 2 ** 0.5]))


def test_centres_and_group_distance_of_planted_fields():
    # (1, 4, 4): one pixel per unit; units 0,1 at the top-left corner, 2,3 at the bottom-right
    mask = torch.zeros(4, 16, dtype=torch.bool)
    for unit, pixel in enumerate([0, 1, 15, 14]):  # (0,0), (0,1), (3,3), (3,2)
        mask[unit, pixel] = True
    conn = Connectivity.from_mask(mask)
    centres = receptive_field_centres(conn, (1, 4, 4))
    torch.testing.assert_close(centres, torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 3.0], [3.0, 2.0]]))
    within, between = group_centre_distance(conn, (1, 4, 4), 2)
    # within: both pairs 1 px apart; between: (0,0)-(3,3), (0,0)-(3,2), (0,1)-(3,3), (0,1)-(3,2)
    ref = [18 ** 0.5, 13 ** 0.5, 13 ** 0.5, 10 ** 0.5]
    assert within == pytest.approx(1.0) and between == pytest.approx(sum(ref) / 4)
    # grouping {0, 2} and {1, 3} (by permutation) puts far units together
    within, between = group_centre_distance(conn, (1, 4, 4), 2, permutation=torch.tensor([0, 2, 1, 3]))
    assert within == pytest.approx((18 ** 0.5 + 10 ** 0.5) / 2)
    assert between == pytest.approx((1 + 13 ** 0.5 + 13 ** 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="group_size must be an integer >= 2 that divides out_features=4, got 3"):
        group_centre_distance(conn, (1, 4, 4), 3)
    for bad, match in (([0, 1, 2], "permutation has 3 entries, num_features is 4"),
                       ([0, 0, 1, 2], "permutation must be a permutation of range")):
        with pytest.raises(ValueError, match=match):  # were an IndexError or a wrong grouping
            group_centre_distance(conn, (1, 4, 4), 2, permutation=torch.tensor(bad))


def test_spread_rejects_a_wrong_image_shape():
    conn = Connectivity.random((4, 784), density=0.1, seed=0)
    with pytest.raises(ValueError, match=r"image_shape \(1, 28, 27\) has 756 pixels.*784"):
        receptive_field_spread(conn, (1, 28, 27))
    for bad in [(28, 28), (1, 0, 784), (1.0, 28, 28), "1x28x28"]:
        with pytest.raises(ValueError, match=r"image_shape must be an image shape \(C, H, W\) of positive ints"):
            receptive_field_spread(conn, bad)
    with pytest.raises(ValueError, match=r"image_shape must be an image shape"):
        save_receptive_fields(StructLearnedLinear(784, 4), (28, 28), "unused.png")


def test_save_receptive_fields_writes_mask_and_weight_per_unit(tmp_path):
    layer = StructLearnedLinear(3 * 8 * 8, 20, density=0.1)
    path = tmp_path / "rf.png"
    save_receptive_fields(layer, (3, 8, 8), path, max_units=8)
    # 8 units × (mask, weights) = 16 tiles in one row of 16, each upscaled 8 → 32 px, padding 2
    assert Image.open(path).size == (16 * (32 + 2) + 2, 32 + 2 * 2)
    with pytest.raises(ValueError, match="in_features=192"):
        save_receptive_fields(layer, (1, 8, 8), path)
    with pytest.raises(ValueError, match="max_units must be >= 1, got 0"):
        save_receptive_fields(layer, (3, 8, 8), path, max_units=0)
    with pytest.raises(TypeError, match="layer must be a StructLearnedLinear, got Linear"):
        save_receptive_fields(torch.nn.Linear(192, 20), (3, 8, 8), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rf.png"]  # no temporary file left
