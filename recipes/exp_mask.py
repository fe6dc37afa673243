"""Experiment 3 — the role of the mask: learned mask + dictionary init, learned mask + random
init, dense + dictionary init (and random mask + random init for reference), 3 seeds.

    python recipes/exp_mask.py --dataset mnist --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, checkpoint, done, finish, network, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn import Connectivity, learn_structure  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.learn import dictionary_values  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, resumable=True)
    p.add_argument("--density", type=_density, default=0.05)
    args = p.parse_args(argv)
    cfg = setup(args, "mask")
    K, d, rho = cfg["K"], cfg["d"], args.density
    rows = list(cfg["done"])  # those an interrupted run saved (--resume)
    full = Connectivity.from_mask(torch.ones(K, d))
    names = ["learned mask + dictionary init", "learned mask + random init",
             "dense + dictionary init", "random mask + random init"]
    for seed in seed_range(args):
        todo = [name for name in names if not done(rows, method=name, seed=seed)]
        variants = {}
        if set(todo) & set(names[:3]):  # the ones the dictionary is learned for
            conn, D, _ = learn_structure(cfg["loader"], K, density=rho, group_size=args.group_size,
                                         epochs=cfg["dict_epochs"], seed=seed, verbose=False,
                                         **cfg["learn_kw"])
            variants = dict(zip(names[:3], [(conn, dictionary_values(D, conn)), (conn, None),
                                            (full, dictionary_values(D, full))], strict=True))
        variants[names[3]] = (Connectivity.random((K, d), density=rho, seed=seed), None)
        for name in todo:
            c, values = variants[name]
            torch.manual_seed(seed)
            model = network(c, d, K, args.group_size, cfg["n_classes"], values=values)
            r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
            rows.append({"method": name, "density": c.density, "seed": seed, **r})
            print(f"{name:>32} seed {seed}: test {r['test_accuracy']:.4f}", flush=True)
            checkpoint("mask", args, cfg, rows)
    finish("mask", args, cfg, rows, density=rho)
    return 0


if __name__ == "__main__":
    sys.exit(main())
