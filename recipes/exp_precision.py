"""``convert``'s float32 statistics and solvers against float64 on a trained stand-in: a
784-1024-1024-10 ReLU MLP trained 2 epochs on MNIST (Adam, seed 0), its two hidden layers
converted by ``refit`` on 1 024 training images (the head left dense) at 10 % and 25 % density
and 2:4, once with ``Prune('refit')`` (float32, the default) and once with
``Prune('refit', dtype=torch.float64)``; test accuracy and each layer's relative output error.

    python recipes/exp_precision.py --data-root ../shared/data [--out recipes/results/convert-precision-mnist.json]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from torch_structlearn import Prune, convert  # noqa: E402
from torch_structlearn.datasets import load_dataset  # noqa: E402
from torch_structlearn.filesystem import write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None, help="data folder (default: $STRUCTLEARN_DATA)")
    p.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the dense MLP")
    p.add_argument("--calib", type=int, default=1024, help="calibration images")
    p.add_argument("--hidden", type=int, default=1024, help="width of the two hidden layers")
    p.add_argument("--out", type=Path, default=Path("recipes/results/convert-precision-mnist.json"),
                   help="result file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    X, y = load_dataset("mnist", "train", args.data_root, args.limit)
    Xt, yt = load_dataset("mnist", "test", args.data_root)
    X, Xt = X.flatten(1), Xt.flatten(1)
    h = args.hidden
    model = nn.Sequential(nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(args.epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def accuracy(m) -> float:
        with torch.no_grad():
            return float((m(Xt).argmax(1) == yt).float().mean())

    calib = [(X[i : i + 256],) for i in range(0, min(args.calib, len(X)), 256)]
    rows = []
    print(f"dense {accuracy(model):.4f}")
    for density, pattern in ((0.1, None), (0.25, None), (0.5, "2:4")):
        for dtype in (torch.float32, torch.float64):
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            report = convert(m, calib, density=density, pattern=pattern, exclude="4",
                             method=Prune("refit", dtype=dtype), verbose=False)
            rows.append({"density": density, "pattern": pattern, "dtype": str(dtype),
                         "test_accuracy": accuracy(m), "seconds": time.perf_counter() - t0,
                         "output_error": {r["name"]: r["output_error"] for r in report}})
            print(rows[-1], flush=True)
    write_json(args.out, {"command": "python recipes/exp_precision.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "dense_test_accuracy": accuracy(model),
        "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
