"""Experiment 1 — one structure-learned hidden layer against the fully connected single layer
with the same K, pooling and training recipe (the paper: 63.0 % vs 60.4 % on CIFAR-10).

    python recipes/exp_single.py --dataset cifar10 --quick      # CPU: 10 000 images, K = 400
    python recipes/exp_single.py --dataset cifar10              # full: K = 1600 (GPU)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, checkpoint, done, finish, network, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn import learn_structure  # noqa: E402
from torch_structlearn.bench.coding import spams_dictionary  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.learn import dictionary_values, read_layer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, width_quick=400, width_full=1600, resumable=True)
    p.add_argument("--density", type=_density, default=0.05)
    p.add_argument("--spams", action="store_true",
                   help="also train the structure read off SPAMS's dictionary (spams.trainDL, "
                        "mode 2, with our learner's λ₁ and passes; pip install spams-bin — "
                        "an optional peer, never a dependency)")
    args = p.parse_args(argv)
    if args.spams and importlib.util.find_spec("spams") is None:
        raise SystemExit("--spams: SPAMS is not installed (pip install spams-bin)")
    cfg = setup(args, "single")
    K, d = cfg["K"], cfg["d"]
    rows = list(cfg["done"])  # those an interrupted run saved (--resume)
    for seed in seed_range(args):
        variants = {}
        if not done(rows, method="learned", seed=seed):  # the fully connected layer needs no dictionary
            conn, D, report = learn_structure(cfg["loader"], K, density=args.density,
                                              group_size=args.group_size,
                                              epochs=cfg["dict_epochs"], seed=seed,
                                              verbose=False, **cfg["learn_kw"])
            variants["learned"] = (dict(conn=conn, values=dictionary_values(D, conn)), conn.density)
        if args.spams and not done(rows, method="SPAMS dictionary", seed=seed):
            if not variants:  # a resumed run: the learner's λ₁ comes from its first batch again
                report = learn_structure(cfg["loader"], K, density=args.density,
                                         group_size=args.group_size, epochs=1, seed=seed,
                                         verbose=False, **cfg["learn_kw"])[2]
            D, _ = spams_dictionary(cfg["splits"][0][0], K, report.lam1, report.passes, 256, seed)
            layer = read_layer(D, args.density)
            variants["SPAMS dictionary"] = (dict(conn=layer.connectivity, values=layer.values),
                                            layer.connectivity.density)
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
