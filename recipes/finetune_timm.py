"""Fine-tune a converted timm model with a plain PyTorch loop: AMP, gradient clipping, cosine
schedule, EMA of the weights (timm's ModelEmaV3).

    python recipes/finetune_timm.py --model vit_tiny_patch16_224 --include 'blocks.*.mlp.fc*' \\
        --density 0.1 --dataset cifar10 --epochs 10            # GPU
    python recipes/finetune_timm.py --quick                    # CPU smoke run (digits)

Converts the model's matching nn.Linear layers with structures learned from their own inputs
(`torch_structlearn.convert`), trains, and writes a JSON with the test accuracy of the model and
of its EMA.

No pretrained weights can be downloaded here, so `--pretrain-epochs N` first trains the dense
model on the same data (a stand-in for a pretrained checkpoint); the structures are then learned
from the activations of that trained model. `--compare` also fine-tunes the same trained model
with two other masks of the same per-unit density: top-|w| (magnitude pruning) and random.
`--hub NAME` publishes the learned structures as hub/NAME/ (structure.safetensors + card.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from pathlib import Path

import timm
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from torch_structlearn import Connectivity, StructLearnedLinear, convert, hub, save  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.checks import arg_positive as _positive  # noqa: E402
from torch_structlearn.convert import replace_module, select_linears  # noqa: E402
from torch_structlearn.datasets import DATASETS, load_dataset  # noqa: E402
from torch_structlearn.filesystem import write_json as _write_json  # noqa: E402
from torch_structlearn.train import accuracy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _prepare(X: torch.Tensor, size: int) -> torch.Tensor:
    if X.shape[1] == 1:
        X = X.expand(-1, 3, -1, -1)
    if X.shape[-1] != size:
        X = nn.functional.interpolate(X, size=(size, size), mode="bilinear", align_corners=False)
    return X


def fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
        batch_size: int, clip: float, device: torch.device, flip: bool = False,
        amp: bool | None = None) -> ModelEmaV3:
    """AdamW + cosine schedule + autocast + gradient clipping; returns the EMA of the weights.

    ``amp`` (default: on CUDA only): bf16 autocast on a CPU without native bf16 is far slower
    than fp32 — vit_tiny (depth 12, 32 px, patch 8), batch 128, one AdamW step on the 2-core
    AVX2 EPYC (another job running): 32.4 s with autocast, 2.0 s without."""
    amp = device.type == "cuda" if amp is None else amp
    model.to(device)
    ema = ModelEmaV3(model, decay=0.998, use_warmup=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    step = 0
    for epoch in range(epochs):
        model.train()
        for x, t in loader:
            x, t = x.to(device), t.to(device)
            if flip:  # horizontal flip of a random half of the batch
                sel = torch.rand(len(x), device=device) < 0.5
                x = torch.where(sel[:, None, None, None], x.flip(-1), x)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = nn.functional.cross_entropy(model(x), t)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            ema.update(model, step=step)
            step += 1
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", flush=True)
    model.cpu()
    ema.module.cpu()
    return ema


def _sparsify(model: nn.Module, include: str, density: float, how: str) -> None:
    """Replace the matching nn.Linear layers by top-|w| ('magnitude') or random masks."""
    for name in select_linears(model, include):
        lin = model.get_submodule(name)
        if how == "magnitude":
            new = StructLearnedLinear.from_linear(lin, density=density)
        else:
            conn = Connectivity.random((lin.out_features, lin.in_features), density=density)
            new = StructLearnedLinear.from_linear(lin, conn)
        replace_module(model, name, new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--include", default="blocks.*.mlp.fc*")
    p.add_argument("--density", type=_density, default=0.1)
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--data-root", default=None)
    p.add_argument("--img-size", type=_positive(int), default=32, help="model input size (ViT: img_size=)")
    p.add_argument("--patch-size", type=_positive(int), default=None, help="ViT patch size (default: the model's)")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="train the dense model this long before converting (no downloads here)")
    p.add_argument("--epochs", type=_positive(int), default=10)
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--convert-batches", type=int, default=8)
    p.add_argument("--compare", action="store_true", help="also magnitude and random masks")
    p.add_argument("--hub", default=None, metavar="NAME", help="publish hub/NAME/")
    p.add_argument("--hub-root", default=str(ROOT / "hub"), help="folder for --hub entries")
    p.add_argument("--license", default="", help="data license for the hub card")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: digits, 2 epochs")
    p.add_argument("--out", default="runs/finetune/result.json")
    args = p.parse_args(argv)
    if args.hub is not None:
        try:
            hub.check_name(args.hub)
        except ValueError as e:
            p.error(f"--hub: {e}")
    if args.quick:
        args.dataset, args.epochs, args.img_size, args.limit = "digits", 2, 32, 512
    argv = sys.argv[1:] if argv is None else argv

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    Xtr, ytr = load_dataset(args.dataset, "train", args.data_root, args.limit)
    Xte, yte = load_dataset(args.dataset, "test", args.data_root, args.limit)
    Xtr, Xte = _prepare(Xtr, args.img_size), _prepare(Xte, args.img_size)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    kw = {"num_classes": n_classes}
    if "vit" in args.model or "mixer" in args.model:
        kw["img_size"] = args.img_size
    if args.patch_size is not None:
        kw["patch_size"] = args.patch_size
    model = timm.create_model(args.model, pretrained=False, **kw)
    train = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
             "clip": args.clip, "device": device, "flip": args.dataset == "cifar10"}
    result = {"command": "python recipes/finetune_timm.py " + shlex.join(argv),
              "model": args.model, "model_kwargs": kw, "dataset": args.dataset,
              "density": args.density, "device": machine()}
    if args.pretrain_epochs:
        t0 = time.perf_counter()
        ema = fit(model, Xtr, ytr, **{**train, "epochs": args.pretrain_epochs})
        result["pretrain_seconds"] = time.perf_counter() - t0
        result["dense_test_accuracy"] = accuracy(model, Xte, yte)  # the pretrained stand-in
        result["dense_ema_test_accuracy"] = accuracy(ema.module, Xte, yte)
        print(f"dense (pretrained stand-in): test {result['dense_test_accuracy']:.4f}", flush=True)

    variants = ["learned", "magnitude", "random"] if args.compare else ["learned"]
    rows = {}
    for how in variants:
        m = copy.deepcopy(model)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        if how == "learned":
            loader = DataLoader(TensorDataset(Xtr), batch_size=64, shuffle=True,
                                generator=torch.Generator().manual_seed(0))
            report = convert(m, loader, density=args.density, include=args.include,
                             method="dictionary", batches=args.convert_batches, verbose=False)
            result["converted_layers"] = len(report)
            learned = m
        else:
            _sparsify(m, args.include, args.density, how)
        row = {"convert_seconds": time.perf_counter() - t0}
        if args.pretrain_epochs:
            row["test_accuracy_before_finetune"] = accuracy(m, Xte, yte)
        t0 = time.perf_counter()
        ema = fit(m, Xtr, ytr, **train)
        row.update(train_seconds=time.perf_counter() - t0, test_accuracy=accuracy(m, Xte, yte),
                   ema_test_accuracy=accuracy(ema.module, Xte, yte))
        print(f"{how}: {row}", flush=True)
        rows[how] = row
    result.update(rows["learned"])  # top-level keys: the learned structure
    result["masks"] = rows

    _write_json(args.out, result)
    print(json.dumps(result, indent=1))
    if args.hub:
        _publish(Path(args.hub_root) / args.hub, learned, result, args)
    return 0


def _publish(entry: Path, model: nn.Module, result: dict, args) -> None:
    name = entry.name
    entry.mkdir(parents=True, exist_ok=True)
    path = save(model, entry / "structure.safetensors")
    card = {
        "name": name, "dataset": args.dataset, "command": result["command"],
        "hardware": result["device"], "density": args.density, "depth": None,
        "timm_model": args.model, "timm_kwargs": result["model_kwargs"],
        "include": args.include,
        "test_accuracy": result["test_accuracy"],
        "baselines_same_recipe": {k: v["test_accuracy"] for k, v in result["masks"].items()
                                  if k != "learned"},
        "dense_test_accuracy": result.get("dense_test_accuracy"),
        "result": result,
        "data_license": args.license,
        "usage": f"torch_structlearn.hub.load({name!r}) -> timm {args.model} with the learned "
                 "MLP structures, freshly initialised (ready to train); hub.load_structure -> "
                 "the connectivity of each converted layer",
    }
    _write_json(entry / "card.json", card)
    print(f"wrote {entry} ({path.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
