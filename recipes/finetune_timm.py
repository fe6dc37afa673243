"""Fine-tune a converted timm model with a plain PyTorch loop: AMP, gradient clipping, cosine
schedule, EMA of the weights (timm's ModelEmaV3).

    python recipes/finetune_timm.py --model vit_tiny_patch16_224 --include 'blocks.*.mlp.fc*' \\
        --density 0.1 --dataset cifar10 --epochs 10            # GPU
    python recipes/finetune_timm.py --quick                    # CPU smoke run (digits)

Converts the model's matching nn.Linear layers with structures learned from their own inputs
(`torch_structlearn.convert`), trains, and writes a JSON with the test accuracy of the model and
of its EMA.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import timm
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_structlearn import convert
from torch_structlearn.datasets import DATASETS, load_dataset
from torch_structlearn.train import accuracy


def _prepare(X: torch.Tensor, size: int) -> torch.Tensor:
    if X.shape[1] == 1:
        X = X.expand(-1, 3, -1, -1)
    if X.shape[-1] != size:
        X = nn.functional.interpolate(X, size=(size, size), mode="bilinear", align_corners=False)
    return X


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--include", default="blocks.*.mlp.fc*")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--data-root", default=None)
    p.add_argument("--img-size", type=int, default=32, help="model input size (ViT: img_size=)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: digits, 2 epochs")
    p.add_argument("--out", default="runs/finetune/result.json")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs, args.img_size, args.limit = "digits", 2, 32, 512

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    Xtr, ytr = load_dataset(args.dataset, "train", args.data_root, args.limit)
    Xte, yte = load_dataset(args.dataset, "test", args.data_root, args.limit)
    Xtr, Xte = _prepare(Xtr, args.img_size), _prepare(Xte, args.img_size)
    kw = {"img_size": args.img_size} if "vit" in args.model or "mixer" in args.model else {}
    model = timm.create_model(args.model, pretrained=False, num_classes=int(ytr.max()) + 1, **kw)
    t0 = time.perf_counter()
    report = convert(model, DataLoader(TensorDataset(Xtr), batch_size=64), density=args.density,
                     include=args.include, batches=8, verbose=False)
    t_convert = time.perf_counter() - t0
    model.to(device)
    ema = ModelEmaV3(model, decay=0.998)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=args.batch_size, shuffle=True)
    total = args.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    t0 = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=amp_dtype):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            ema.update(model, step=step)
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}", flush=True)
    result = {
        "command": "python recipes/finetune_timm.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model, "dataset": args.dataset, "density": args.density,
        "converted_layers": len(report), "convert_seconds": t_convert,
        "train_seconds": time.perf_counter() - t0, "device": str(device),
        "test_accuracy": accuracy(model.cpu(), Xte, yte),
        "ema_test_accuracy": accuracy(ema.module.cpu(), Xte, yte),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
