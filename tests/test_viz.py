"""Receptive-field pictures and the compactness measure, against hand-computed cases."""

import pytest
import torch
from PIL import Image

from torch_structlearn import Connectivity, StructLearnedLinear
from torch_structlearn.viz import receptive_field_spread, save_receptive_fields


def test_spread_of_planted_masks():
    # (C, H, W) = (2, 3, 3): input c*9 + 3*y + x
    mask = torch.zeros(3, 18, dtype=torch.bool)
    mask[0, [0, 2]] = True            # pixels (0,0) and (0,2): centroid (0,1), distance 1 each
    mask[1, [4, 9 + 4]] = True        # both channels of the centre pixel: one pixel, spread 0
    mask[2, [0, 8, 9 + 2, 9 + 6]] = True  # the four corners: distance √2 each
    spread = receptive_field_spread(Connectivity.from_mask(mask), (2, 3, 3))
    torch.testing.assert_close(spread, torch.tensor([1.0, 0.0, 2 ** 0.5]))


def test_spread_rejects_a_wrong_image_shape():
    conn = Connectivity.random((4, 784), density=0.1, seed=0)
    with pytest.raises(ValueError, match=r"image_shape \(1, 28, 27\) has 756 pixels.*784"):
        receptive_field_spread(conn, (1, 28, 27))


def test_save_receptive_fields_writes_mask_and_weight_per_unit(tmp_path):
    layer = StructLearnedLinear(3 * 8 * 8, 20, density=0.1)
    path = tmp_path / "rf.png"
    save_receptive_fields(layer, (3, 8, 8), path, max_units=8)
    # 8 units × (mask, weights) = 16 tiles in one row of 16, each upscaled 8 → 32 px, padding 2
    assert Image.open(path).size == (16 * (32 + 2) + 2, 32 + 2 * 2)
    with pytest.raises(ValueError, match="in_features=192"):
        save_receptive_fields(layer, (1, 8, 8), path)
