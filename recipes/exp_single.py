"""Experiment 1 — one structure-learned hidden layer against the fully connected single layer
with the same K, pooling and training recipe (the paper: 63.0 % vs 60.4 % on CIFAR-10).

    python recipes/exp_single.py --dataset cifar10 --quick      # CPU: 10 000 images, K = 400
    python recipes/exp_single.py --dataset cifar10              # full: K = 1600 (GPU)

``--baseline-only`` trains only the fully connected layer (no structure is learned), e.g. with
the training recipe ``exp_tune.py --training --network fully-connected`` chose for it; it writes
runs/repro/single-fc-<dataset>….json, apart from the paired results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, finish, network, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn import learn_structure  # noqa: E402
from torch_structlearn.learn import dictionary_values  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, width_quick=400, width_full=1600)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--baseline-only", action="store_true",
                   help="train only the fully connected layer")
    args = p.parse_args(argv)
    name = "single-fc" if args.baseline_only else "single"
    cfg = setup(args, name)
    K, d = cfg["K"], cfg["d"]
    rows = []
    for seed in seed_range(args):
        nets = [("fully connected", dict(conn=None, dense=True))]
        if not args.baseline_only:
            conn, D, rep = learn_structure(cfg["loader"], K, density=args.density,
                                           group_size=args.group_size, epochs=cfg["dict_epochs"],
                                           seed=seed, verbose=False, **cfg["learn_kw"])
            nets.insert(0, ("learned", dict(conn=conn, values=dictionary_values(D, conn))))
        for method, kw in nets:
            torch.manual_seed(seed)
            model = network(d=d, K=K, group_size=args.group_size, n_classes=cfg["n_classes"], **kw)
            r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
            density = kw["conn"].density if kw["conn"] is not None else 1.0
            rows.append({"method": method, "density": density, "seed": seed, **r})
            print(f"{method:>16} seed {seed}: test {r['test_accuracy']:.4f}", flush=True)
    finish(name, args, cfg, rows, density=args.density)
    return 0


if __name__ == "__main__":
    sys.exit(main())
