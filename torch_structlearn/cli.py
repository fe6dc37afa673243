"""The ``structlearn`` command.

* ``structlearn learn``  — learn a structure without labels, train it with labels, compare it
  with random connectivity (same per-unit fan-in) and a dense network under the same recipe,
  print the accuracy table, write ``structure.safetensors`` and ``receptive_fields.png``.
* ``structlearn inspect FILE [--png P]`` — summary of a structure file (and receptive fields).
* ``structlearn hub list`` — the hub entries.
* ``structlearn convert MODEL --dataset D --density ρ`` — convert a timm model's linear layers.
* ``structlearn bench ...`` — :mod:`torch_structlearn.bench`.

Errors are one clear line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from . import convert, hub, load, save
from ._checks import image_shape
from .argtypes import density, fraction, nonnegative, positive
from .bench import main as bench_main
from .classifier import StructLearnedClassifier
from .datasets import DATASETS, load_dataset
from .files import process_alive
from .files import write_atomic as _write_atomic
from .files import write_json as _write_json
from .io import sparse_layers
from .stack import StructLearnedStack
from .train import accuracy, fit_classifier
from .viz import save_receptive_fields
from .whitening import ZCAWhitening


def _learn(args) -> int:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # checked now, not when the results are written
        raise ValueError(f"--out {out} is a file; give a folder (it receives structure.safetensors, "
                         "receptive_fields.png and results.json)")
    _writable_folder(out, "--out")
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    Xtr, ytr = load_dataset(args.dataset, "train", args.data_root, args.limit)
    Xte, yte = load_dataset(args.dataset, "test", args.data_root)
    image_shape = tuple(Xtr.shape[1:])
    d = Xtr[0].numel()
    n_classes = int(max(ytr.max(), yte.max())) + 1
    verbose = not args.quiet
    print(f"{args.dataset}: {len(ytr)} train / {len(yte)} test images of shape {image_shape}")

    # 1. unsupervised: whitening and structure, from images only (labels unused)
    unlabelled = DataLoader(TensorDataset(Xtr), batch_size=args.batch_size, shuffle=False)
    if args.whitening_kernel and len(image_shape) != 3:
        raise ValueError(f"--whitening-kernel needs (C, H, W) images, got shape {image_shape}")
    if args.flip and len(image_shape) != 3:
        raise ValueError(f"--flip needs (C, H, W) images, got shape {image_shape}")
    # both built (and their arguments checked) before the whitening's pass over the data
    whiten = ZCAWhitening(d, eps=args.eps, kernel_size=args.whitening_kernel,
                          image_shape=image_shape if args.whitening_kernel else None)
    stack = StructLearnedStack(d, args.width, max_depth=args.max_depth, density=args.density,
                               group_size=args.group_size, min_gain=args.min_gain,
                               epochs=args.dict_epochs, active_fraction=args.active_fraction,
                               seed=args.seed)
    whiten.fit(unlabelled)
    white = DataLoader(TensorDataset(whiten(Xtr).detach()), batch_size=args.batch_size)
    stack.learn_structure(white, verbose=verbose)

    # 2. supervised: the same recipe for learned, random (same fan-in) and dense structures
    random_stack = StructLearnedStack.random_like(stack, seed=args.seed)
    dense_stack = StructLearnedStack(d, args.width, max_depth=args.max_depth, density=1.0,
                                     group_size=args.group_size, depth=stack.depth)
    rows, models = [], {}
    whiten.requires_grad_(False)
    for name, body in (("learned", stack), ("random", random_stack), ("dense", dense_stack)):
        torch.manual_seed(args.seed)
        model = models[name] = StructLearnedClassifier(whiten, body, n_classes, image_shape)
        t0 = time.perf_counter()
        fit_classifier(model, Xtr, ytr, epochs=args.epochs, lr=args.lr, seed=args.seed,
                       weight_decay=args.weight_decay, hflip=image_shape if args.flip else None,
                       verbose=verbose)
        acc = accuracy(model, Xte, yte)
        params = sum(p.numel() for p in body.parameters())
        rows.append({"structure": name, "depth": body.depth, "density": body.density,
                     "test_accuracy": acc, "parameters": params,
                     "train_seconds": time.perf_counter() - t0})

    print(f"\n{'structure':<10} {'depth':>5} {'density':>8} {'params':>8} {'test acc':>9}")
    for r in rows:
        print(f"{r['structure']:<10} {r['depth']:>5} {r['density']:>8.3f} {r['parameters']:>8} "
              f"{r['test_accuracy']:>9.2%}")
    # the learned classifier: whitening → learned stack → trained head. The three files are
    # written to a staging folder first, then renamed into place together: an interrupted run
    # leaves the previous run's results whole, not a new structure beside old results.
    with _staging(out) as stage:
        save(models["learned"], stage / "structure.safetensors",
             metadata={"dataset": args.dataset, "command": " ".join(sys.argv), "results": rows})
        save_receptive_fields(stack.layers[0][0], image_shape, stage / "receptive_fields.png")
        _write_json(stage / "results.json", {"args": vars(args), "report": stack.report,
                                             "results": rows,
                                             "seconds": time.perf_counter() - t_start}, default=str)
    print(f"\nwrote {out / 'structure.safetensors'}, {out / 'receptive_fields.png'}, "
          f"{out / 'results.json'} ({time.perf_counter() - t_start:.0f} s)")
    return 0


def _writable_folder(folder: Path, flag: str) -> None:
    """``ValueError`` unless files can be created in ``folder`` (or, where it does not exist
    yet, in its nearest existing parent) — checked before any long work, creating nothing."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {folder}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {folder}: cannot write in {probe} ({e.strerror or e})") from None


class _staging:
    """A staging folder ``out/.incoming-<pid>-*``: files written into it are renamed into
    ``out`` together when the ``with`` block ends without error; the folder is removed either
    way (and those of killed earlier runs on entry)."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.glob(".incoming-*"):
            pid = old.name.split("-")[1]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".incoming-{os.getpid()}-", dir=self.out))
        return self.stage

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is None:
                for f in sorted(self.stage.iterdir()):
                    os.replace(f, self.out / f.name)
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)


def _inspect(args) -> int:
    module = load(args.file)
    layers = sparse_layers(module)
    print(args.file)
    if not isinstance(module, dict):
        print(f"  {type(module).__name__}: {module.extra_repr()}")
    if args.png:
        shape = args.image_shape or getattr(module, "input_shape", None)
        if shape is None:
            raise ValueError("--png needs --image-shape C,H,W for this file")
        save_receptive_fields(layers[0], shape, args.png)
        print(f"  wrote {args.png}")
    for i, layer in enumerate(layers):
        fan = layer.fan_in.long()
        print(f"  layer {i}: {layer.in_features} -> {layer.out_features}, nnz={layer.nnz}, "
              f"density={layer.density:.4%}, fan_in min/mean/max = "
              f"{int(fan.min())}/{fan.float().mean():.1f}/{int(fan.max())}, "
              f"empty units = {int((fan == 0).sum())}")
    return 0


def _printable(value, width: int = 0) -> str:
    """``value`` as text with control characters (ANSI escapes included) shown escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text[:width] if width else text


def _hub_list(args) -> int:
    entries = hub.scan()
    if not entries:
        print("no hub entries (folders searched: " + ", ".join(map(str, hub.folders())) + ")")
        return 0
    print(f"{'name':<26} {'dataset':<14} {'depth':>5} {'density':>8} {'test acc':>9}  model")
    for name, c, problem in entries:
        if problem is not None:
            print(f"{_printable(name, 60):<26} (invalid: {_printable(problem, 200)})")
            continue
        acc, density, depth = c.get("test_accuracy"), c.get("density"), c.get("depth", "?")
        number = (int, float)
        print(f"{_printable(name, 60):<26} {_printable(c.get('dataset', '?'), 14):<14} "
              f"{'-' if depth is None else _printable(depth, 5):>5} "
              f"{(f'{density:.4f}' if isinstance(density, number) and not isinstance(density, bool) else '?'):>8} "
              f"{(f'{acc:.2%}' if isinstance(acc, float) else '?'):>9}  "
              f"{_printable(c.get('timm_model', 'StructLearnedClassifier'), 60)}")
    return 0


def _convert(args) -> int:
    import timm
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    out = Path(args.out)
    if out.is_dir():  # checked now, not after the conversion
        raise ValueError(f"--out {out} is a folder; give a file path such as "
                         f"{out / 'structures.safetensors'}")
    _writable_folder(out.parent, "--out")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: not a file")
    X, y = load_dataset(args.dataset, "train", args.data_root, args.limit)
    n_classes = int(y.max()) + 1
    model = timm.create_model(args.model, pretrained=False, num_classes=n_classes)
    if args.checkpoint:
        try:
            with warnings.catch_warnings():  # (torch warns about the pickle protocol first)
                warnings.simplefilter("ignore")
                state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"--checkpoint {args.checkpoint}: not a state_dict that "
                             "torch.load(weights_only=True) accepts (it holds objects or code "
                             "other than tensors); refused") from None
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    if X.shape[1] != size[0]:
        X = X.expand(-1, size[0], -1, -1) if X.shape[1] == 1 else X[:, : size[0]]
    if tuple(X.shape[-2:]) != tuple(size[-2:]):
        X = torch.nn.functional.interpolate(X, size=tuple(size[-2:]), mode="bilinear",
                                            align_corners=False)
    loader = DataLoader(TensorDataset(X, y), batch_size=args.batch_size)
    report = convert(model, loader, density=args.density, include=args.include,
                     exclude=args.exclude, init=args.init, method=args.method,
                     sequential=args.sequential, batches=args.batches,
                     verbose=not args.quiet)
    save(model, out, metadata={"model": args.model, "dataset": args.dataset,
                               "command": " ".join(sys.argv), "report": report})
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    _write_atomic(out.with_suffix(".pt"), buf.getvalue())
    print(f"converted {len(report)} layers; wrote {out} (structures) and "
          f"{out.with_suffix('.pt')} (state_dict of the converted model)")
    return 0


def _shape(s: str) -> tuple[int, int, int]:
    """An argparse type: an image shape written ``C,H,W`` (positive ints)."""

    try:
        return image_shape("--image-shape", tuple(int(v) for v in s.split(",")))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"must be C,H,W positive integers, got {s!r}") from e


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser (and --help): everything after 'bench' is its

        try:
            return bench_main(argv[1:])
        except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as e:
            print(f"structlearn bench: error: {e}", file=sys.stderr)
            return 2
    import torch

    # before the first parallel op, so that every OpenMP thread inherits it: weights that
    # Adam's weight decay drives below 1.2e-38 are then zeros, not 100x slower denormals
    torch.set_flush_denormal(True)

    p = argparse.ArgumentParser(prog="structlearn", description="torch_structlearn command line")
    sub = p.add_subparsers(dest="command", required=True)
    lr = sub.add_parser("learn", help="learn a structure without labels, then train and compare it",
                        description="Learn a layer structure from unlabelled images, train it with "
                                    "labels, and compare with random and dense structures.")
    lr.add_argument("--dataset", choices=DATASETS, default="digits")
    lr.add_argument("--data-root", default=None, help="data folder (default $STRUCTLEARN_DATA)")
    lr.add_argument("--density", type=density, default=0.25)
    lr.add_argument("--width", type=positive(int), default=128)
    lr.add_argument("--max-depth", type=positive(int), default=2)
    lr.add_argument("--group-size", type=positive(int), default=2)
    lr.add_argument("--min-gain", type=float, default=0.01)
    lr.add_argument("--eps", type=positive(float), default=8.0, help="ZCA regulariser")
    lr.add_argument("--whitening-kernel", type=positive(int), default=None, metavar="K",
                    help="whiten with a KxK convolution fitted to the full ZCA (odd K; small "
                         "files for large images) instead of the d x d matrix")
    lr.add_argument("--dict-epochs", type=positive(int), default=2)
    lr.add_argument("--active-fraction", type=fraction, default=0.3,
                    help="codes active at the start of dictionary learning (sets lam1)")
    lr.add_argument("--epochs", type=positive(int), default=40, help="supervised epochs")
    lr.add_argument("--lr", type=positive(float), default=3e-3)
    lr.add_argument("--weight-decay", type=nonnegative, default=0.0, help="Adam's L2 penalty")
    lr.add_argument("--flip", action="store_true",
                    help="mirror a random half of every training batch left-right")
    lr.add_argument("--batch-size", type=positive(int), default=256)
    lr.add_argument("--limit", type=positive(int), default=None, help="use a fixed random subset of N training images")
    lr.add_argument("--seed", type=int, default=0)
    lr.add_argument("--out", default="runs/demo")
    lr.add_argument("--quiet", action="store_true")
    i = sub.add_parser("inspect", help="summarise a structure file (.safetensors)",
                       description="Per-layer summary of a structure file; with --png, the "
                                   "first layer's receptive fields as an image grid.")
    i.add_argument("file")
    i.add_argument("--png", default=None, help="write the first layer's receptive fields here")
    i.add_argument("--image-shape", type=_shape, default=None,
                   help="C,H,W of the first layer's input (classifier files know it)")
    h = sub.add_parser("hub", help="the hub of pretrained structures",
                       description="List the hub entries (the repo's hub/ and $STRUCTLEARN_HUB).")
    h.add_argument("action", choices=["list"])
    cv = sub.add_parser("convert", help="convert a timm model's nn.Linear layers",
                        description="Build a timm model (pretrained=False, or weights from "
                                    "--checkpoint), learn sparse structures for its nn.Linear "
                                    "layers from a data set, write the structures and state_dict.")
    cv.add_argument("model", help="timm model name, e.g. vit_tiny_patch16_224")
    cv.add_argument("--dataset", choices=DATASETS, default="digits")
    cv.add_argument("--data-root", default=None)
    cv.add_argument("--density", type=density, default=0.1)
    cv.add_argument("--include", default=None, help="glob on module names, e.g. 'blocks.*.mlp.fc*'")
    cv.add_argument("--exclude", default=None)
    cv.add_argument("--init", choices=["keep", "dictionary", "random"], default="keep")
    cv.add_argument("--method", choices=["refit", "sparsegpt", "wanda", "magnitude", "dictionary"],
                    default=None, help="how masks and kept weights are chosen (default: refit "
                    "with --init keep, else dictionary)")
    cv.add_argument("--sequential", action="store_true",
                    help="calibrate layer by layer on the converted model's inputs")
    cv.add_argument("--checkpoint", default=None, help="a state_dict file for the timm model")
    cv.add_argument("--limit", type=positive(int), default=512, help="training images used")
    cv.add_argument("--batches", type=positive(int), default=None)
    cv.add_argument("--batch-size", type=positive(int), default=32)
    cv.add_argument("--out", default="runs/convert/structures.safetensors")
    cv.add_argument("--quiet", action="store_true")
    sub.add_parser("bench", help="run the benchmarks and auto's calibration (structlearn bench "
                                 "--help)", add_help=False)
    args = p.parse_args(argv)
    try:
        if args.command == "learn":
            return _learn(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "hub":
            return _hub_list(args)
        return _convert(args)
    except (ValueError, TypeError, OSError, KeyError, RuntimeError, pickle.UnpicklingError,
            EOFError) as e:
        print(f"structlearn {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: BaseException) -> str:
    """One line for an error: an ``OSError`` as 'what: path' (the path given, not a temporary
    file's)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return _printable(str(e).replace("\n", " "))


if __name__ == "__main__":
    sys.exit(main())
