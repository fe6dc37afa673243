"""Experiment 2 — density sweep: learned connectivity against random (same per-unit fan-in),
random-local, a sparsifying RBM, SNIP, SynFlow and dense, 3 seeds, one training recipe.

    python recipes/exp_density.py --dataset mnist --quick     # 2-core CPU, < 20 min
    python recipes/exp_density.py --dataset cifar10           # full setting (GPU)

Network: whitened image → sparse layer (K units) → ReLU → L2 group pooling → linear head.
Learned = structure from group sparse coding on the unlabelled training images + dictionary
init; every other structure starts from the per-unit Kaiming init. Writes
runs/repro/density-<dataset>[-quick].json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import random_local, rbm_mask, snip_mask, synflow_mask  # noqa: E402
from common import data, network, train_eval, write  # noqa: E402

from torch_structlearn import Connectivity, learn_structure  # noqa: E402
from torch_structlearn.learn import dictionary_values  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--quick", action="store_true", help="CPU setting: 10 000 images, fewer epochs")
    p.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.10, 0.25])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--width", type=int, default=None, help="K (default 256 quick, 1600 full)")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--dict-epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--methods", nargs="+",
                   default=["learned", "random", "random-local", "rbm", "snip", "synflow"])
    args = p.parse_args(argv)
    quick = args.quick
    K = args.width or (256 if quick else 1600)
    epochs = args.epochs or (8 if quick else 40)
    dict_epochs = args.dict_epochs or (2 if quick else 5)
    t_start = time.perf_counter()
    splits, image_shape = data(args.dataset, 10_000 if quick else None, 5_000, args.data_root)
    (Xtr, ytr) = splits[0]
    d, n_classes = Xtr.shape[1], int(ytr.max()) + 1

    def dense_builder():
        return network(None, d, K, args.group_size, n_classes, dense=True)

    rows = []

    def run(method, density, seed, conn=None, values=None, dense=False):
        torch.manual_seed(seed)
        model = network(conn, d, K, args.group_size, n_classes, values=values, dense=dense)
        r = train_eval(model, splits, epochs=epochs, lr=args.lr, seed=seed)
        rows.append({"method": method, "density": density, "seed": seed,
                     "actual_density": 1.0 if dense else conn.density, **r})
        print(f"{method:>13} {density:>6.2%} seed {seed}: val {r['val_accuracy']:.4f} "
              f"test {r['test_accuracy']:.4f}", flush=True)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr), batch_size=250)
    for seed in range(args.seeds):
        run("dense", 1.0, seed, dense=True)
        for density in args.densities:
            for method in args.methods:
                if method == "learned":
                    conn, D, _ = learn_structure(loader, K, density=density, group_size=args.group_size,
                                                 epochs=dict_epochs, seed=seed, verbose=False)
                    run(method, density, seed, conn, dictionary_values(D, conn))
                elif method == "random":
                    run(method, density, seed, Connectivity.random((K, d), density=density, seed=seed))
                elif method == "random-local":
                    run(method, density, seed, random_local(K, image_shape, density, seed))
                elif method == "rbm":
                    run(method, density, seed, rbm_mask(Xtr, K, density, seed=seed))
                elif method == "snip":
                    run(method, density, seed, snip_mask(dense_builder, Xtr, ytr, density, seed))
                elif method == "synflow":
                    run(method, density, seed, synflow_mask(dense_builder, d, density, seed))
                else:
                    p.error(f"unknown method {method!r}")
    name = f"density-{args.dataset}" + ("-quick" if quick else "")
    write(name, {"experiment": "density", "dataset": args.dataset, "quick": quick,
                 "width": K, "group_size": args.group_size, "epochs": epochs,
                 "dict_epochs": dict_epochs, "n_train": len(ytr), "lr": args.lr,
                 "seeds": args.seeds, "rows": rows, "wall_seconds": time.perf_counter() - t_start})
    return 0


if __name__ == "__main__":
    sys.exit(main())
