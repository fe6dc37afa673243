"""Converting a *trained* model: accuracy of every conversion method, one-shot and after a short
fine-tune (issue [convert-pretrained]; the trained stand-ins).

Trains a 784-1024-1024-10 ReLU MLP on MNIST or Fashion-MNIST (``--model mlp``), or a timm
ViT (``--model vit``: vit_tiny's width, 6 blocks, 32 px CIFAR-10 in 8-px patches, AdamW with a
cosine schedule and flips, fp32) — or loads it from --checkpoint — then converts every
nn.Linear (the ViT's blocks: qkv, proj, fc1, fc2) with ``convert(model, loader, density=d, method=m)`` on
``--calib`` training images (one random subset per seed) and reports test accuracy one-shot and
after ``--finetune-steps`` AdamW steps on the training set (masks fixed; the dense model gets
the same steps as a reference), and each method's mean relative output error. ``-seq`` methods
calibrate layer by layer (``sequential=True``: Wanda and SparseGPT as their papers do, refit
fitting the dense model's outputs); ``2:4`` is ``nm=(2, 4)`` at 50 %. ``--calib-sweep`` adds
one-shot accuracy at 10 % against the number of calibration images:

    python recipes/exp_convert.py --dataset fashion-mnist --data-root ../shared/data
    python recipes/exp_convert.py --model vit --dataset cifar10 --epochs 6 --seeds 1 \
        --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
from common import RUNS, done, machine, read_partial  # noqa: E402

from torch_structlearn import Prune, StructLearnedLinear, convert, hub, save  # noqa: E402
from torch_structlearn.checks import arg_positive as _positive  # noqa: E402
from torch_structlearn.datasets import load_dataset  # noqa: E402
from torch_structlearn.filesystem import write_atomic, write_json  # noqa: E402
from torch_structlearn.train import accuracy  # noqa: E402

METHODS = ("dictionary", "magnitude", "wanda", "wanda-seq", "sparsegpt", "sparsegpt-seq",
           "refit", "refit-seq")
DENSITIES = ("0.5", "0.25", "0.1", "0.05", "2:4")
CONTEXT, STRIDE = 64, 16  # the character model's window, and the training windows' step


def mlp(n_out: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                         nn.ReLU(), nn.Linear(1024, n_out))


def vit(n_out: int) -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", num_classes=n_out, img_size=32,
                             patch_size=8, depth=6)


class CharLM(nn.Module):
    """A small GPT: token and position embeddings, pre-norm blocks of causal self-attention
    (``qkv``, ``proj``) and a GELU MLP (``fc1``, ``fc2``) — every projection an ``nn.Linear`` —
    and a linear head. ``(B, T)`` token ids → ``(B, T, vocab)`` next-character logits."""

    def __init__(self, vocab: int, dim: int = 128, depth: int = 4, heads: int = 4,
                 context: int = CONTEXT) -> None:
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
            "norm2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 4 * dim),
            "fc2": nn.Linear(4 * dim, dim)}) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        h = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = rearrange(b["qkv"](b["norm1"](h)), "b t (three n d) -> three b n t d",
                                three=3, n=self.heads)
            a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + b["proj"](rearrange(a, "b n t d -> b t (n d)"))
            h = h + b["fc2"](nn.functional.gelu(b["fc1"](b["norm2"](h))))
        return self.head(self.norm(h))


def charlm(n_out: int) -> nn.Module:
    return CharLM(n_out)


# builder (number of outputs -> model), layers converted
MODELS = {"mlp": (mlp, None), "vit": (vit, "blocks.*"), "charlm": (charlm, "blocks.*")}


def char_corpus() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The Python language reference that ships with CPython (``pydoc_data.topics``: 79 topics,
    about 465 000 characters, joined in sorted order) as character ids: the first 90 % for
    training in windows of ``CONTEXT + 1`` every ``STRIDE`` characters, the last 10 % for test
    in windows every ``CONTEXT`` (each test character after the first predicted once). Returns ``Xtr, ytr, Xte, yte`` (targets: the inputs shifted by one)
    and the vocabulary size."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text])
    cut = int(0.9 * len(ids))

    def windows(t: torch.Tensor, stride: int):
        w = t.unfold(0, CONTEXT + 1, stride)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    return (*windows(ids[:cut], STRIDE), *windows(ids[cut:], CONTEXT), len(vocab))


@torch.no_grad()
def perplexity(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """``exp`` of the mean next-character cross-entropy over every position of ``X``'s windows."""
    was = model.training
    model.eval()
    total = sum(float(nn.functional.cross_entropy(model(xb).flatten(0, -2), yb.flatten(),
                                                  reduction="sum"))
                for xb, yb in zip(X.split(batch_size), y.split(batch_size), strict=True))
    model.train(was)
    return math.exp(total / y.numel())


def train(model: nn.Module, X, y, *, steps: int | None = None, epochs: int = 1, lr: float,
          seed: int) -> nn.Module:
    """AdamW on cross-entropy (over every position of a sequence model's outputs), batch 128;
    ``steps`` (if given) ends it early."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loader = DataLoader(TensorDataset(X, y), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    done = 0
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb).flatten(0, -2), yb.flatten()).backward()
            opt.step()
            done += 1
            if steps is not None and done >= steps:
                return model
    return model


def _convert(model, calib, density: str, method: str, include=None) -> tuple[list[dict], float]:
    name, seq = method.removesuffix("-seq"), method.endswith("-seq")
    kw = {"density": 0.5, "pattern": "2:4"} if density == "2:4" else {"density": float(density)}
    t0 = time.perf_counter()
    report = convert(model, [(b,) for b in calib.split(256)],
                     method=Prune(name, sequential=seq) if name != "dictionary" else name,
                     include=include, verbose=False, **kw)
    return report, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), default="mlp")
    p.add_argument("--dataset", choices=["fashion-mnist", "mnist", "cifar10", "pydoc-topics"],
                   default=None, help="default fashion-mnist; pydoc-topics (the text) for charlm")
    p.add_argument("--data-root", default=None)
    p.add_argument("--densities", nargs="+", choices=DENSITIES, default=list(DENSITIES))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--epochs", type=_positive(int), default=10, help="dense training epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="dense training learning rate")
    p.add_argument("--calib", type=_positive(int), default=1024, help="calibration images")
    p.add_argument("--seeds", type=_positive(int), default=3, help="calibration subsets")
    p.add_argument("--finetune-steps", type=int, default=200, help="0: one-shot only")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--calib-sweep", type=int, nargs="*", default=[128, 256, 512, 1024])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="default runs/convert/<model>-<dataset>.pt (made when missing)")
    p.add_argument("--hub", default=None, metavar="NAME",
                   help="publish hub/NAME: the model converted by refit at --hub-density "
                        "(calibration seed 0), with all its weights (--model vit only)")
    p.add_argument("--hub-density", type=float, default=0.1)
    p.add_argument("--hub-root", type=Path, default=ROOT / "hub")
    p.add_argument("--license", default="", help="data license for the hub card")
    p.add_argument("--out", type=Path, default=None,
                   help="default runs/repro/convert-<model>-<dataset>.json")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command: keep the rows it saved "
                        "(<out>.partial.json, written after every row) and run only the rest")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "recipes/exp_convert.py", *(a for a in argv if a != "--resume")])
    lm = args.model == "charlm"
    args.dataset = args.dataset or ("pydoc-topics" if lm else "fashion-mnist")
    if lm != (args.dataset == "pydoc-topics"):
        p.error("--model charlm goes with --dataset pydoc-topics (and only it)")
    if args.hub is not None:
        if args.model != "vit":
            p.error("--hub publishes timm models: it needs --model vit")
        try:
            hub.check_name(args.hub)
        except ValueError as e:
            p.error(f"--hub: {e}")
    build, include = MODELS[args.model]
    ckpt = args.checkpoint or ROOT / "runs" / "convert" / f"{args.model}-{args.dataset}.pt"
    out = args.out or RUNS / f"convert-{args.model}-{args.dataset}.json"
    partial = out.with_suffix(".partial.json")
    saved = {"rows": [], "calib_sweep": []}
    if args.resume:
        saved = read_partial(partial, command, set(saved))
        print(f"resuming {partial}: {len(saved['rows'])} rows and {len(saved['calib_sweep'])} "
              "sweep points done", flush=True)
    if lm:
        Xtr, ytr, Xte, yte, n_out = char_corpus()
    else:
        Xtr, ytr = load_dataset(args.dataset, "train", args.data_root)
        Xte, yte = load_dataset(args.dataset, "test", args.data_root)
        n_out = 10
    score, metric = (perplexity, "perplexity") if lm else (accuracy, "accuracy")

    def show(v: float) -> str:
        return f"{v:.3f}" if lm else f"{v:.2%}"

    model = build(n_out)
    pretrain = None
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt, weights_only=True))
    else:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        if args.model == "vit":
            from finetune_timm import fit

            fit(model, Xtr, ytr, epochs=args.epochs, lr=args.lr, batch_size=128, clip=1.0,
                device=torch.device("cpu"), flip=True, amp=False)
        else:
            train(model, Xtr, ytr, epochs=args.epochs, lr=args.lr, seed=0)
        pretrain = time.perf_counter() - t0
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), ckpt)
    dense = score(model, Xte, yte)
    print(f"dense test {metric} {show(dense)}", flush=True)
    ref = []
    for seed in range(args.seeds if args.finetune_steps > 0 else 0):
        torch.manual_seed(seed)
        ref.append(score(train(copy.deepcopy(model), Xtr, ytr, steps=args.finetune_steps,
                               lr=args.finetune_lr, seed=seed), Xte, yte))
    rows, sweep = saved["rows"], saved["calib_sweep"]

    def result() -> dict:
        return {"experiment": "convert", "model": args.model, "dataset": args.dataset,
                "dense_training_seconds": pretrain, "dense_epochs": args.epochs,
                "command": command, "machine": machine(), "metric": metric,
                f"dense_test_{metric}": dense, "dense_finetuned": ref,
                "calibration_images": args.calib, "seeds": args.seeds,
                "finetune_steps": args.finetune_steps, "finetune_lr": args.finetune_lr,
                "rows": rows, "calib_sweep": sweep}

    def calib_set(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        return Xtr[torch.randperm(len(Xtr), generator=g)[:n]]

    for d in args.densities:
        for m in args.methods:
            if d == "2:4" and m == "dictionary":
                continue  # N:M masks are for the trained-model methods
            for seed in range(args.seeds):
                if done(rows, density=d, method=m, seed=seed):
                    continue
                conv = copy.deepcopy(model)
                report, secs = _convert(conv, calib_set(args.calib, seed), d, m, include)
                err = [r["output_error"] for r in report if "output_error" in r]
                one_shot = score(conv, Xte, yte)
                torch.manual_seed(seed)
                tuned = None if args.finetune_steps <= 0 else score(
                    train(conv, Xtr, ytr, steps=args.finetune_steps, lr=args.finetune_lr,
                          seed=seed), Xte, yte)
                rows.append({"density": d, "method": m, "seed": seed, "one_shot": one_shot,
                             "finetuned": tuned, "seconds": secs,
                             "output_error": sum(err) / len(err) if err else None})
                write_json(partial, result())
                ft = "-" if tuned is None else show(tuned)
                print(f"{d:>5} {m:<14} seed {seed}  one-shot {show(one_shot)}  fine-tuned {ft}  "
                      f"({secs:.1f} s)", flush=True)
    for n in args.calib_sweep:
        for m in ("wanda", "sparsegpt", "refit"):
            for seed in range(args.seeds):
                if done(sweep, calib=n, method=m, seed=seed):
                    continue
                conv = copy.deepcopy(model)
                _convert(conv, calib_set(n, seed), "0.1", m, include)
                sweep.append({"calib": n, "method": m, "seed": seed,
                              "one_shot": score(conv, Xte, yte)})
                write_json(partial, result())
                print(f"calib {n:>5} {m:<10} seed {seed}  one-shot {show(sweep[-1]['one_shot'])}",
                      flush=True)
    if args.hub is not None:
        conv = copy.deepcopy(model)
        report, secs = _convert(conv, calib_set(args.calib, 0), str(args.hub_density), "refit",
                                include)
        one_shot = accuracy(conv, Xte, yte)
        publish(args.hub_root / args.hub, conv, {
            "name": args.hub, "dataset": args.dataset, "density": args.hub_density, "depth": None,
            "command": command,
            "hardware": machine(), "timm_model": "vit_tiny_patch16_224",
            "timm_kwargs": {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 6},
            "include": include, "test_accuracy": one_shot, "one_shot_accuracy": one_shot,
            "dense_test_accuracy": dense, "method": "refit", "calibration_images": args.calib,
            "convert_seconds": secs, "data_license": args.license,
            "usage": f"torch_structlearn.hub.load({args.hub!r}) -> the trained stand-in ViT "
                     f"converted one-shot by method='refit' at {args.hub_density:.0%} (every "
                     "weight included: test_accuracy is its one-shot accuracy, no fine-tune)"})
        print(f"published {args.hub}: one-shot {one_shot:.2%}")
    write_json(out, result())
    partial.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


def publish(entry: Path, model: nn.Module, card: dict) -> None:
    """A hub entry of a converted trained model: ``structure.safetensors`` (the converted
    layers with their weights), ``weights.safetensors`` (every other weight) and the card."""
    from safetensors.torch import save as tensors_bytes

    entry.mkdir(parents=True, exist_ok=True)
    save(model, entry / "structure.safetensors")
    sparse = {n for n, m in model.named_modules() if isinstance(m, StructLearnedLinear)}
    rest = {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if k.rpartition(".")[0] not in sparse}
    write_atomic(entry / "weights.safetensors", tensors_bytes(rest))
    write_json(entry / "card.json", card)


if __name__ == "__main__":
    sys.exit(main())
