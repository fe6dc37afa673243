"""Experiment 1 — one structure-learned hidden layer against the fully connected single layer
with the same K, pooling and training recipe (the paper: 63.0 % vs 60.4 % on CIFAR-10).

    python recipes/exp_single.py --dataset cifar10 --quick      # CPU: 10 000 images, K = 400
    python recipes/exp_single.py --dataset cifar10              # full: K = 1600 (GPU)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, checkpoint, done, finish, network, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn import learn_structure  # noqa: E402
from torch_structlearn.argtypes import density as _density  # noqa: E402
from torch_structlearn.learn import dictionary_values  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, width_quick=400, width_full=1600, resumable=True)
    p.add_argument("--density", type=_density, default=0.05)
    args = p.parse_args(argv)
    cfg = setup(args, "single")
    K, d = cfg["K"], cfg["d"]
    rows = list(cfg["done"])  # those an interrupted run saved (--resume)
    for seed in seed_range(args):
        variants = {}
        if not done(rows, method="learned", seed=seed):  # the fully connected layer needs no dictionary
            conn, D, _ = learn_structure(cfg["loader"], K, density=args.density,
                                         group_size=args.group_size, epochs=cfg["dict_epochs"],
                                         seed=seed, verbose=False, **cfg["learn_kw"])
            variants["learned"] = (dict(conn=conn, values=dictionary_values(D, conn)), conn.density)
        if not done(rows, method="fully connected", seed=seed):
            variants["fully connected"] = (dict(conn=None, dense=True), 1.0)
        for name, (kw, density) in variants.items():
            torch.manual_seed(seed)
            model = network(d=d, K=K, group_size=args.group_size, n_classes=cfg["n_classes"], **kw)
            r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
            rows.append({"method": name, "density": density, "seed": seed, **r})
            print(f"{name:>16} seed {seed}: test {r['test_accuracy']:.4f}", flush=True)
            checkpoint("single", args, cfg, rows)
    finish("single", args, cfg, rows, density=args.density)
    return 0


if __name__ == "__main__":
    sys.exit(main())
