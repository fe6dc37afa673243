"""Converting a *trained* model: one-shot accuracy of every conversion method at several
densities (issue [convert-pretrained], first part: the Fashion-MNIST MLP).

Trains a 784-1024-1024-10 ReLU MLP on Fashion-MNIST (or loads it from --checkpoint), then
converts every nn.Linear with ``convert(model, loader, density=d, method=m)`` on
``--calib`` training images and reports test accuracy without fine-tuning, and each method's
mean relative output error on the calibration inputs:

    python recipes/exp_convert.py --data-root ../shared/data [--densities 0.5 0.25 0.1 0.05]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
from common import machine  # noqa: E402

from torch_structlearn import convert  # noqa: E402
from torch_structlearn.argtypes import density as _density  # noqa: E402
from torch_structlearn.argtypes import positive as _positive  # noqa: E402
from torch_structlearn.datasets import load_dataset  # noqa: E402
from torch_structlearn.files import write_json  # noqa: E402

METHODS = ("dictionary", "magnitude", "wanda", "sparsegpt", "refit")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                         nn.ReLU(), nn.Linear(1024, 10))


@torch.no_grad()
def accuracy(model: nn.Module, X, y) -> float:
    model.eval()
    return float(sum((model(xb).argmax(1) == yb).sum() for xb, yb in
                     zip(X.split(1000), y.split(1000), strict=True)) / len(y))


def train(X, y, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(X, y), batch_size=256, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        print(f"epoch {epoch + 1}/{epochs}", flush=True)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--densities", type=_density, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--epochs", type=_positive(int), default=10)
    p.add_argument("--calib", type=_positive(int), default=1024, help="calibration images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "convert" / "mlp-fashion-mnist.pt")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "convert" / "exp_convert-fashion-mnist.json")
    args = p.parse_args(argv)
    Xtr, ytr = load_dataset("fashion-mnist", "train", args.data_root)
    Xte, yte = load_dataset("fashion-mnist", "test", args.data_root)
    if args.checkpoint.exists():
        model = mlp()
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    else:
        model = train(Xtr, ytr, args.epochs, args.seed)
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.checkpoint)
    dense = accuracy(model, Xte, yte)
    print(f"dense test accuracy {dense:.2%}")
    g = torch.Generator().manual_seed(args.seed)
    calib = Xtr[torch.randperm(len(Xtr), generator=g)[: args.calib]]
    loader = [(b,) for b in calib.split(256)]
    rows = []
    for d in args.densities:
        for m in args.methods:
            conv = copy.deepcopy(model)
            t0 = time.perf_counter()
            report = convert(conv, loader, density=d, method=m, verbose=False)
            secs = time.perf_counter() - t0
            err = [r["output_error"] for r in report if "output_error" in r]
            acc = accuracy(conv, Xte, yte)
            rows.append({"density": d, "method": m, "test_accuracy": acc, "seconds": secs,
                         "output_error": sum(err) / len(err) if err else None})
            e = f"{rows[-1]['output_error']:.4f}" if err else "-"
            print(f"density {d:.0%}  {m:<10} test {acc:.2%}  output error {e}  ({secs:.1f} s)",
                  flush=True)
    write_json(args.out, {"command": " ".join(["python", "recipes/exp_convert.py", *(argv or sys.argv[1:])]),
                          "machine": machine(), "dense_test_accuracy": dense,
                          "calibration_images": args.calib, "seed": args.seed, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
