"""A plain supervised training loop (the same recipe for every structure we compare)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import finite_examples, image_shape, penalty, positive, positive_int
from .checks import seed as check_seed
from .progress import tqdm

__all__ = ["fit_classifier", "accuracy"]


def _check_xy(X, y) -> None:
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"X and y must be tensors, got {type(X).__name__} and {type(y).__name__}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be a 1-D tensor of integer class labels, got {y.dtype} of shape "
                        f"{tuple(y.shape)}")
    if X.dim() == 0 or len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got X {tuple(X.shape)} and y "
                         f"{tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError(f"X and y hold no examples (X {tuple(X.shape)}, y {tuple(y.shape)})")
    if int(y.min()) < 0:
        raise ValueError(f"y must hold class indices >= 0, got {int(y.min())} (example "
                         f"{int(y.argmin())})")


def _check_classes(y: Tensor, logits: Tensor) -> None:
    """``ValueError`` when a label of ``y`` has no logit in ``logits (n, classes)`` (checked on
    the first batch, before any step)."""
    classes = logits.shape[-1]
    if int(y.max()) >= classes:
        raise ValueError(f"y holds class {int(y.max())} (example {int(y.argmax())}), but the model "
                         f"gives {classes} logits per example")


def fit_classifier(model: nn.Module, X: Tensor, y: Tensor, *, epochs: int = 20, lr: float = 1e-3,
                   batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0,
                   hflip: tuple[int, int, int] | None = None, verbose: bool = False,
                   after_step=None) -> list[float]:
    """Train ``model`` (``X (N, ...)`` → logits) with Adam (L2 ``weight_decay``), cross-entropy
    and a cosine schedule; returns the mean training loss per epoch and leaves ``model`` in eval
    mode. Deterministic for a seed. NaN or Inf in ``X``, and a label outside the model's
    classes, are a ``ValueError`` before any step.

    ``hflip=(C, H, W)``: each training example, read as a ``(C, H, W)`` image, is mirrored
    left–right with probability 1/2 in every batch (augmentation; ``X`` may be flattened).
    ``verbose``: a tqdm progress bar over the epochs, showing the last epoch's loss.
    ``after_step(optimizer, total_steps)``: called once before training; the function it
    returns is called after every optimizer step — e.g. dynamic sparse training,
    ``lambda opt, n: DynamicSparsity(model, opt, total_steps=n).step``.
    """
    _check_xy(X, y)
    finite_examples("X", X)  # else every loss is NaN
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    if hflip is not None:
        hflip = image_shape("hflip", hflip)
        if math.prod(hflip) != X[0].numel():
            raise ValueError(f"hflip={tuple(hflip)} has {math.prod(hflip)} values per image, but "
                             f"each row of X has {X[0].numel()}")
    positive("lr", lr)
    penalty("weight_decay", weight_decay)
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    stepped = None if after_step is None else after_step(opt, epochs * math.ceil(len(y) / batch_size))
    losses = []
    model.train()
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not verbose)
    for _ in bar:
        perm = torch.randperm(len(y), generator=g)
        total = 0.0
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            xb = X[idx]
            if hflip is not None:
                flip = (torch.rand(len(idx), generator=g) < 0.5).view(-1, *[1] * (xb.dim() - 1))
                xb = torch.where(flip, xb.reshape(len(idx), *hflip).flip(-1).reshape(xb.shape), xb)
            logits = model(xb)
            if not losses and i == 0:
                _check_classes(y, logits)
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if stepped is not None:
                stepped()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / len(y))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``X (N, ...)`` classified as ``y (N,)``, computed in eval mode; ``model``'s
    train/eval mode is restored afterwards."""
    _check_xy(X, y)
    positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(y), batch_size):
            logits = model(X[i : i + batch_size])
            if i == 0:
                _check_classes(y, logits)
            correct += int((logits.argmax(1) == y[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / len(y)
