"""Experiment 4 — depth: stacks forced to depth 1–4 against the depth the stopping rule picks;
test accuracy and coding-efficiency score against depth, 3 seeds.

Growth is greedy (layer ``l`` is learned on the fixed layers below it), so each seed grows one
stack to ``--max-depth`` with the stopping rule off and every forced depth ``k`` is its first ``k``
layers; the stopping rule's network is the prefix the rule keeps on that stack's scores (the
first layer whose relative gain is below ``min_gain`` ends it), trained once as that forced
depth and recorded with ``same_as``.

``--dynamic`` also trains every forced depth with dynamic sparse training (``DynamicSparsity``,
the density sweep's settings): ``rigl`` and ``set`` from a random stack of the same shape and
fan-in, ``learned-rigl`` from the learned stack and its dictionary init, and, with the same
number of weights spread over the layers by ERK (``erk_densities``), a static random stack
(``erk``) and RigL from it (``rigl-erk``).

    python recipes/exp_depth.py --dataset mnist --quick
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, checkpoint, done, dynamic_fit, finish, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn import Connectivity, StructLearnedStack  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.checks import arg_positive as _positive  # noqa: E402
from torch_structlearn.dynamic import erk_densities  # noqa: E402
from torch_structlearn.stack import rule_depth  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, resumable=True)
    p.add_argument("--density", type=_density, default=0.05)
    p.add_argument("--max-depth", type=_positive(int), default=4)
    p.add_argument("--min-gain", type=float, default=0.01, help="the stopping rule's threshold")
    p.add_argument("--verbose", action="store_true", help="progress bars while learning")
    p.add_argument("--dynamic", action="store_true",
                   help="also train each forced depth with RigL and SET (from a random stack), "
                        "RigL from the learned stack, and a static and a RigL random stack with "
                        "ERK layer densities")
    args = p.parse_args(argv)
    cfg = setup(args, "depth")
    K, d = cfg["K"], cfg["d"]
    rows = list(cfg["done"])  # those an interrupted run saved (--resume)
    for seed in seed_range(args):
        dynamic = ("rigl", "set", "learned-rigl", "erk", "rigl-erk") if args.dynamic else ()
        if all(done(rows, method=f"{m} depth {k}", seed=seed)  # the rule's pick is one of them
               for k in range(1, args.max_depth + 1) for m in ("forced", *dynamic)):
            continue
        torch.manual_seed(seed)
        grown = StructLearnedStack(d, K, max_depth=args.max_depth, density=args.density,
                                   group_size=args.group_size, min_gain=float("-inf"),
                                   epochs=cfg["dict_epochs"], seed=seed, **cfg["learn_kw"])
        grown.learn_structure(cfg["loader"], verbose=args.verbose)
        scores = [row["score"] for row in grown.report]
        picked = rule_depth([row["gain"] for row in grown.report], args.min_gain)
        for k in range(1, grown.depth + 1):
            if done(rows, method=f"forced depth {k}", seed=seed):
                continue
            stack = copy.deepcopy(grown)
            stack.layers = stack.layers[:k]
            model = nn.Sequential(stack, nn.Linear(stack.out_features, cfg["n_classes"]))
            r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
            row = {"depth": k, "seed": seed, "unsupervised_scores": scores[:k], **r}
            rows.append({"method": f"forced depth {k}", **row})
            if k == picked:
                rows.append({**row, "method": "stopping rule", "same_as": f"forced depth {k}",
                             "unsupervised_scores": scores[:k + 1]})  # with the rejected layer's
            print(f"depth {k} seed {seed}: test {r['test_accuracy']:.4f}"
                  + (" (the stopping rule's pick)" if k == picked else ""), flush=True)
            checkpoint("depth", args, cfg, rows)
        for k in range(1, grown.depth + 1):
            for method in dynamic:
                if done(rows, method=f"{method} depth {k}", seed=seed):
                    continue
                torch.manual_seed(seed)
                if method == "learned-rigl":
                    stack = copy.deepcopy(grown)
                    stack.layers = stack.layers[:k]
                else:  # random layers of the same shapes and fan-in
                    stack = StructLearnedStack(d, K, max_depth=k, density=args.density,
                                               group_size=args.group_size)
                if method.endswith("erk"):  # the same weights, spread by ERK
                    layers = [block[0] for block in stack.layers]
                    shapes = [(layer.out_features, layer.in_features) for layer in layers]
                    for layer, shape, dl in zip(layers, shapes, erk_densities(shapes, args.density),
                                                strict=True):
                        layer.set_connectivity(Connectivity.random(shape, density=dl))
                model = nn.Sequential(stack, nn.Linear(stack.out_features, cfg["n_classes"]))
                fit = (cfg["fit"] if method == "erk" else
                       dynamic_fit(cfg["fit"], model, "set" if method == "set" else "rigl", seed))
                r = train_eval(model, cfg["splits"], seed=seed, **fit)
                rows.append({"method": f"{method} depth {k}", "depth": k, "seed": seed, **r})
                print(f"{method} depth {k} seed {seed}: test {r['test_accuracy']:.4f}", flush=True)
                checkpoint("depth", args, cfg, rows)
    finish("depth", args, cfg, rows, density=args.density)
    return 0


if __name__ == "__main__":
    sys.exit(main())
