"""Receptive fields of a sparse layer: a PNG grid, and how spatially compact they are."""

from __future__ import annotations

import os

import torch
from einops import rearrange
from torch import Tensor

from .connectivity import Connectivity
from .layers import StructLearnedLinear

__all__ = ["receptive_field_spread", "save_receptive_fields"]


def receptive_field_spread(connectivity: Connectivity, image_shape: tuple[int, int, int]) -> Tensor:
    """``(out_features,)`` mean distance, in pixels, from each unit's connected pixels to their
    centroid: small for a compact (local) receptive field. A pixel counts once however many of
    its ``C`` channels connect; ``image_shape = (C, H, W)`` of the layer's input. For scale,
    random masks spread over an ``H × H`` image give about ``0.38 H``."""
    C, H, W = image_shape
    if C * H * W != connectivity.shape[1]:
        raise ValueError(f"image_shape {tuple(image_shape)} has {C * H * W} pixels, the "
                         f"connectivity has {connectivity.shape[1]} inputs")
    used = connectivity.to_mask().view(-1, C, H * W).any(1).float()  # (K, H*W)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()  # (H*W, 2)
    w = used / used.sum(1, keepdim=True).clamp_min(1)
    centre = w @ pos  # (K, 2)
    return ((pos[None] - centre[:, None]).norm(dim=2) * w).sum(1)


def save_receptive_fields(layer: StructLearnedLinear, image_shape: tuple[int, int, int],
                          path: str | os.PathLike, max_units: int = 64) -> None:
    """Save, for up to ``max_units`` units, the connection mask (white = connected) next to the
    weights (grey = 0) as one PNG grid; ``image_shape = (C, H, W)`` of the layer's input."""
    from torchvision.utils import save_image

    C, H, W = image_shape
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
    save_image(imgs, str(path), nrow=16, padding=2, pad_value=0.25)
