"""Experiment 7 — a CNN reference of similar hidden size, for context ("comparable to
expert-designed structures"): two 5×5 conv layers with max pooling, then a hidden layer of
K / group_size units (the pooled width of the other experiments) and the linear head; the same
whitened inputs, recipe and seeds.

    python recipes/exp_cnn.py --dataset cifar10 --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, checkpoint, done, finish, seed_range, setup, train_eval  # noqa: E402


class _Unflatten(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def cnn(image_shape, hidden: int, n_classes: int) -> nn.Sequential:
    C, H, W = image_shape
    return nn.Sequential(
        _Unflatten(image_shape),
        nn.Conv2d(C, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (H // 4) * (W // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, resumable=True)
    args = p.parse_args(argv)
    cfg = setup(args, "cnn")
    hidden = cfg["K"] // args.group_size
    rows = list(cfg["done"])  # those an interrupted run saved (--resume)
    name = f"CNN (2 conv + {hidden} hidden)"
    for seed in seed_range(args):
        if done(rows, method=name, seed=seed):
            continue
        torch.manual_seed(seed)
        model = cnn(cfg["image_shape"], hidden, cfg["n_classes"])
        r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
        rows.append({"method": name, "seed": seed, **r})
        print(f"CNN seed {seed}: test {r['test_accuracy']:.4f}", flush=True)
        checkpoint("cnn", args, cfg, rows)
    finish("cnn", args, cfg, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
