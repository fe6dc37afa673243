"""Experiment 4 — depth: stacks forced to depth 1–4 against the depth the stopping rule picks;
test accuracy and coding-efficiency score against depth, 3 seeds.

    python recipes/exp_depth.py --dataset mnist --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, finish, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn import StructLearnedStack  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--max-depth", type=int, default=4)
    args = p.parse_args(argv)
    cfg = setup(args, "depth")
    K, d = cfg["K"], cfg["d"]
    rows = []
    for seed in seed_range(args):
        settings = [(f"forced depth {k}", k, float("-inf")) for k in range(1, args.max_depth + 1)]
        settings.append(("stopping rule", args.max_depth, 0.01))
        for name, max_depth, min_gain in settings:
            torch.manual_seed(seed)
            stack = StructLearnedStack(d, K, max_depth=max_depth, density=args.density,
                                       group_size=args.group_size, min_gain=min_gain,
                                       epochs=cfg["dict_epochs"], seed=seed,
                                       **cfg["learn_kw"])
            stack.learn_structure(cfg["loader"], verbose=False)
            model = nn.Sequential(stack, nn.Linear(stack.out_features, cfg["n_classes"]))
            r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
            rows.append({"method": name, "depth": stack.depth, "seed": seed,
                         "unsupervised_scores": [row["score"] for row in stack.report], **r})
            print(f"{name:>16} (depth {stack.depth}) seed {seed}: test {r['test_accuracy']:.4f}",
                  flush=True)
    finish("depth", args, cfg, rows, density=args.density)
    return 0


if __name__ == "__main__":
    sys.exit(main())
