"""Receptive fields of a sparse layer: a PNG grid, how spatially compact they are, and how close
together the fields of one pooling group lie (docs/algorithm.md §7)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from .checks import image_shape as check_image_shape
from .checks import positive_int
from .connectivity import Connectivity
from .filesystem import write_atomic as _write_atomic
from .layers import StructLearnedLinear
from .pooling import check_permutation

__all__ = ["receptive_field_centres", "receptive_field_spread", "group_centre_distance",
           "save_receptive_fields"]


def _pixel_weights(connectivity: Connectivity, image_shape: tuple[int, int, int]):
    """``(K, H*W)`` weights of each unit's connected pixels (summing to 1; a pixel counts once
    however many of its channels connect) and the ``(H*W, 2)`` ``(y, x)`` pixel positions."""
    C, H, W = check_image_shape("image_shape", image_shape)
    if C * H * W != connectivity.shape[1]:
        raise ValueError(f"image_shape {tuple(image_shape)} has {C * H * W} pixels, the "
                         f"connectivity has {connectivity.shape[1]} inputs")
    used = connectivity.to_mask().view(-1, C, H * W).any(1).float()  # (K, H*W)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()  # (H*W, 2)
    return used / used.sum(1, keepdim=True).clamp_min(1), pos


def receptive_field_centres(connectivity: Connectivity, image_shape: tuple[int, int, int]) -> Tensor:
    """``(out_features, 2)`` centroid ``(y, x)``, in pixels, of each unit's connected pixels;
    ``image_shape = (C, H, W)`` of the layer's input."""
    w, pos = _pixel_weights(connectivity, image_shape)
    return w @ pos


def receptive_field_spread(connectivity: Connectivity, image_shape: tuple[int, int, int]) -> Tensor:
    """``(out_features,)`` mean distance, in pixels, from each unit's connected pixels to their
    centroid: small for a compact (local) receptive field. A pixel counts once however many of
    its ``C`` channels connect; ``image_shape = (C, H, W)`` of the layer's input. For scale,
    random masks spread over an ``H × H`` image give about ``0.38 H``."""
    w, pos = _pixel_weights(connectivity, image_shape)
    return ((pos[None] - (w @ pos)[:, None]).norm(dim=2) * w).sum(1)


def group_centre_distance(connectivity: Connectivity, image_shape: tuple[int, int, int],
                          group_size: int, permutation: Tensor | None = None) -> tuple[float, float]:
    """Mean distance, in pixels, between the receptive-field centres of two units of the same
    pooling group, and of two units of different groups. Groups are contiguous blocks of
    ``group_size`` units (after ``permutation``, as in :class:`~torch_structlearn.GroupPool`).
    If group members are variants of one feature at one place, the first is the smaller."""
    K = connectivity.shape[0]
    if not isinstance(group_size, int) or group_size < 2 or K % group_size:
        raise ValueError(f"group_size must be an integer >= 2 that divides out_features={K}, "
                         f"got {group_size!r}")
    centres = receptive_field_centres(connectivity, image_shape)
    if permutation is not None:
        centres = centres[check_permutation(permutation, group_size, K)]
    dist = torch.cdist(centres, centres)
    group = torch.arange(K) // group_size
    same = group[:, None] == group[None, :]
    same.fill_diagonal_(False)
    other = group[:, None] != group[None, :]
    return float(dist[same].mean()), float(dist[other].mean())


def save_receptive_fields(layer: StructLearnedLinear, image_shape: tuple[int, int, int],
                          path: str | os.PathLike, max_units: int = 64) -> None:
    """Save, for up to ``max_units`` units, the connection mask (white = connected) next to the
    weights (grey = 0) as one PNG grid; ``image_shape = (C, H, W)`` of the layer's input.
    The file is written atomically (an existing ``path`` is replaced only by a complete PNG)."""
    from torchvision.utils import save_image

    if not isinstance(layer, StructLearnedLinear):
        raise TypeError(f"layer must be a StructLearnedLinear, got {type(layer).__name__}")
    positive_int("max_units", max_units)
    C, H, W = check_image_shape("image_shape", image_shape)
    if C * H * W != layer.in_features:
        raise ValueError(f"image_shape {image_shape} has {C * H * W} pixels, the layer has "
                         f"in_features={layer.in_features}")
    n = min(max_units, layer.out_features)
    w = layer.dense_weight().detach().float().cpu()[:n]
    mask = layer.connectivity.to_mask()[:n].float()
    scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12)
    w = 0.5 + 0.5 * w / scale
    pairs = torch.stack([mask, w], 1)  # (n, 2, C*H*W)
    imgs = rearrange(pairs, "n two (c h w) -> (n two) c h w", c=C, h=H, w=W)
    if C not in (1, 3):
        imgs = imgs.mean(1, keepdim=True)
    imgs = torch.nn.functional.interpolate(imgs, scale_factor=max(1, 32 // H), mode="nearest")
    buf = io.BytesIO()
    save_image(imgs, buf, format="png", nrow=16, padding=2, pad_value=0.25)
    _write_atomic(Path(path), buf.getvalue())
