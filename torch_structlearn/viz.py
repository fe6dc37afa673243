"""Pictures: receptive fields of a sparse layer as a PNG grid."""

from __future__ import annotations

import os

import torch
from einops import rearrange

from .layers import StructLearnedLinear

__all__ = ["save_receptive_fields"]


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
