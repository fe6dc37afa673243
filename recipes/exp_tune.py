"""Validation choices: the ZCA ε and the dictionary learner's settings that the other recipes
use by default (``common.TUNED``), or the training recipe (``--training``), picked on the
validation split held out of the training images — this recipe never evaluates the test set.

    python recipes/exp_tune.py --dataset mnist --quick      # 2-core CPU, a few minutes
    python recipes/exp_tune.py --dataset cifar10 --training # full scale, about 40 min on 2 cores

For each ε of ``--eps-grid`` and each learner setting (``active_fraction`` × dictionary memory
of 4 batches or all training images) it learns the structure at ``--density`` (seed 0) and
trains the single-layer network; random-local wiring at the same density is trained for
reference. The choice is the setting with the best learned validation accuracy. Writes
runs/repro/tune-<dataset>[-quick].json.

With ``--training`` the structure is learned once with the data set's TUNED settings and the
single-layer network is trained with each training recipe of ``--flip-grid`` (mirror a random
half of every batch) × ``--weight-decay-grid``; writes runs/repro/tune-training-<dataset>[-quick].json.
``--network fully-connected`` trains the fully connected single layer on the same grid instead
(a baseline tuned on its own; runs/repro/tune-training-fc-<dataset>[-quick].json).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import random_local  # noqa: E402
from common import add_args, code_version, data, finish, fit_kw, learn_kw, machine, network, setup  # noqa: E402

from torch_structlearn import learn_structure  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.checks import arg_fraction as _fraction  # noqa: E402
from torch_structlearn.checks import arg_nonnegative as _nonnegative  # noqa: E402
from torch_structlearn.checks import arg_positive as _positive  # noqa: E402
from torch_structlearn.learn import dictionary_values  # noqa: E402
from torch_structlearn.train import accuracy, fit_classifier  # noqa: E402


def _yes_no(text: str) -> bool:
    if text not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return text == "yes"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--density", type=_density, default=0.05)
    p.add_argument("--eps-grid", type=_positive(float), nargs="+", default=[0.1, 0.5, 2.0, 8.0])
    p.add_argument("--fraction-grid", type=_fraction, nargs="+", default=[0.05, 0.3])
    p.add_argument("--memory-grid", nargs="+", choices=["short", "all"], default=["short", "all"])
    p.add_argument("--training", action="store_true",
                   help="choose the training recipe (--flip-grid × --weight-decay-grid) instead")
    p.add_argument("--flip-grid", type=_yes_no, nargs="+", default=[False, True])
    p.add_argument("--weight-decay-grid", type=_nonnegative, nargs="+", default=[0.0, 1e-4, 1e-3])
    p.add_argument("--network", choices=["learned", "fully-connected"], default="learned",
                   help="with --training: the single-layer network the recipe is chosen for")
    p.set_defaults(seeds=1)
    args = p.parse_args(argv)
    if args.training and (args.flip or args.weight_decay):
        p.error("--training searches --flip-grid and --weight-decay-grid; drop --flip/--weight-decay")
    if args.network != "learned" and not args.training:
        p.error(f"--network {args.network} needs --training (the ε/learner grid is for the "
                "learned layer)")
    name = ("tune-training" + ("-fc" if args.network == "fully-connected" else "")
            if args.training else "tune")
    cfg = setup(args, name)  # checks the arguments and data; the ε grid reloads per ε
    K, seed = cfg["K"], args.first_seed
    rows = []

    def run(eps, method, splits, conn, values=None, flip=False, weight_decay=0.0, **setting):
        torch.manual_seed(seed)
        model = network(conn, cfg["d"], K, args.group_size, cfg["n_classes"], values=values,
                        dense=method == "fully connected")
        (Xtr, ytr), (Xva, yva) = splits[:2]
        t0 = time.perf_counter()
        fit_classifier(model, Xtr, ytr, seed=seed, **fit_kw(cfg["epochs"], args.lr, flip,
                                                              weight_decay, cfg["image_shape"]))
        if args.training:
            setting.update(flip=flip, weight_decay=weight_decay,
                           train_seconds=time.perf_counter() - t0)
        rows.append({"whiten_eps": eps, "method": method, "seed": seed, **setting,
                     "val_accuracy": accuracy(model, Xva, yva), "machine": machine(),
                     "code": code_version()})
        print(f"ε {eps:<5} {method:>13} {setting}: val {rows[-1]['val_accuracy']:.4f}", flush=True)

    if args.training:
        conn = values = None  # the fully connected layer needs no structure
        if args.network == "learned":
            conn, D, _ = learn_structure(cfg["loader"], K, density=args.density,
                                         group_size=args.group_size, epochs=cfg["dict_epochs"],
                                         seed=seed, verbose=False, **cfg["learn_kw"])
            values = dictionary_values(D, conn)
        for flip, wd in itertools.product(args.flip_grid, args.weight_decay_grid):
            run(cfg["whiten_eps"], args.network.replace("-", " "), cfg["splits"], conn, values,
                flip=flip, weight_decay=wd)
        best = max(rows, key=lambda r: r["val_accuracy"])
        choice = {k: best[k] for k in ("flip", "weight_decay")}
        print(f"choice: {choice} (validation accuracy {best['val_accuracy']:.4f})")
        cfg.update(flip=args.flip_grid, weight_decay=args.weight_decay_grid)  # the grid searched
        finish(name, args, cfg, rows, density=args.density, choice=choice)
        return 0

    for eps in args.eps_grid:
        if eps == cfg["whiten_eps"]:
            splits, loader = cfg["splits"], cfg["loader"]
        else:
            splits = data(args.dataset, cfg["n_train"], 5_000, args.data_root, eps=eps)[0]
            loader = DataLoader(TensorDataset(splits[0][0]), batch_size=250)
        run(eps, "random-local", splits, random_local(K, cfg["image_shape"], args.density, seed))
        for frac, memory in itertools.product(args.fraction_grid, args.memory_grid):
            conn, D, rep = learn_structure(loader, K, density=args.density,
                                         group_size=args.group_size, epochs=cfg["dict_epochs"],
                                         seed=seed, verbose=False,
                                         **learn_kw(frac, memory, len(splits[0][1])))
            run(eps, "learned", splits, conn, dictionary_values(D, conn),
                active_fraction=frac, dict_memory=memory, active_codes=rep.active)
    best = max((r for r in rows if r["method"] == "learned"), key=lambda r: r["val_accuracy"])
    choice = {k: best[k] for k in ("whiten_eps", "active_fraction", "dict_memory")}
    print(f"choice: {choice} (validation accuracy {best['val_accuracy']:.4f})")
    cfg.update(whiten_eps=args.eps_grid, active_fraction=args.fraction_grid,
               dict_memory=args.memory_grid)  # the result's settings: the grid searched
    finish("tune", args, cfg, rows, density=args.density, choice=choice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
