"""Structure learning on several processes (CPU: gloo; GPUs: nccl), launched with torchrun:

    torchrun --nproc_per_node 2 recipes/distributed_learn.py --dataset mnist --out runs/dist

Each rank streams its shard of the training images through a ``DistributedSampler``; the
dictionary statistics are all-reduced, so all ranks learn the same stack; rank 0 saves it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from torch_structlearn import StructLearnedStack, ZCAWhitening, save
from torch_structlearn.checks import arg_density as _density
from torch_structlearn.checks import arg_positive as _positive
from torch_structlearn.datasets import DATASETS, load_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=_positive(int), default=None)
    p.add_argument("--width", type=_positive(int), default=64)
    p.add_argument("--density", type=_density, default=0.25)
    p.add_argument("--group-size", type=_positive(int), default=2)
    p.add_argument("--max-depth", type=_positive(int), default=2)
    p.add_argument("--epochs", type=_positive(int), default=3)
    p.add_argument("--batch-size", type=_positive(int), default=128, help="per rank")
    p.add_argument("--out", default="runs/distributed")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    try:
        X, _ = load_dataset(args.dataset, "train", args.data_root, args.limit)
        d = X[0].numel()
        # the whitening is cheap: every rank fits it on all data, identically
        whiten = ZCAWhitening(d).fit(DataLoader(TensorDataset(X), batch_size=1000))
        ds = TensorDataset(whiten(X).detach())
        loader = DataLoader(ds, batch_size=args.batch_size,
                            sampler=DistributedSampler(ds, shuffle=False))
        stack = StructLearnedStack(d, args.width, max_depth=args.max_depth, density=args.density,
                                   group_size=args.group_size, epochs=args.epochs, device=device)
        stack.learn_structure(loader, verbose=rank == 0)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save(stack.cpu(), out / f"stack-rank{rank}.safetensors",
             metadata={"world_size": dist.get_world_size(), "rank": rank})
        if rank == 0:
            print(f"learned depth {stack.depth} on {dist.get_world_size()} ranks; wrote {out}")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
