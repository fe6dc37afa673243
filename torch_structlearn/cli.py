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
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from . import convert, hub, load, save
from .bench import main as bench_main
from .checks import arg_density as density
from .checks import arg_fraction as fraction
from .checks import arg_nonnegative as nonnegative
from .checks import arg_positive as positive
from .checks import image_shape
from .classifier import StructLearnedClassifier
from .convert import Learn, Prune, parse_pattern
from .datasets import DATASETS, load_dataset, open_data, read_array
from .filesystem import process_alive
from .filesystem import write_atomic as _write_atomic
from .filesystem import write_json as _write_json
from .io import sparse_layers
from .loaders import MappedLoader
from .stack import StructLearnedStack
from .train import accuracy, fit_classifier
from .viz import save_receptive_fields
from .whitening import ZCAWhitening


def _learn(args) -> int:
    """``structlearn learn``: a named data set (learn, train, compare) or ``--data`` (learn and
    save the structure; train and compare only with ``--labels``)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # checked now, not when the results are written
        raise ValueError(f"--out {out} is a file; give a folder (it receives structure.safetensors, "
                         "receptive_fields.png and results.json)")
    _writable_folder(out, "--out")
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    verbose = not args.quiet
    name = args.dataset if args.data is None else str(args.data)
    if args.data is None:
        Xtr, ytr = load_dataset(args.dataset, "train", args.data_root, args.limit)
        Xte, yte = load_dataset(args.dataset, "test", args.data_root)
        shape = tuple(Xtr.shape[1:])
        print(f"{args.dataset}: {len(ytr)} train / {len(yte)} test images of shape {shape}")
        unlabelled = DataLoader(TensorDataset(Xtr), batch_size=args.batch_size, shuffle=False)
        labelled = (Xtr, ytr, Xte, yte)
    else:
        data = open_data(args.data, key=args.key, image_size=args.image_size)
        shape = tuple(data.example_shape)
        labels = None if args.labels is None else _labels(args.labels, len(data))
        print(f"{args.data}: {len(data)} examples of shape {shape}"
              + ("" if labels is None else f", {int(labels.max()) + 1} classes"))
        unlabelled = DataLoader(data, batch_size=args.batch_size, shuffle=False)
        labelled = None if labels is None else _split(data, labels, args)
    images = len(shape) == 3
    whiten, stack = _learn_unsupervised(args, unlabelled, shape, verbose)
    rows, models = ([], {}) if labelled is None else _train_and_compare(
        args, whiten, stack, shape, *labelled, verbose=verbose)
    # The files are written to a staging folder first, then renamed into place together: an
    # interrupted run leaves the previous run's results whole, not a new structure beside old
    # results. With labels: the learned classifier (whitening → stack → trained head);
    # without: the stack, and the whitening beside it.
    with _staging(out) as stage:
        meta = {"dataset": name, "command": " ".join(sys.argv), "results": rows}
        if models:
            save(models["learned"], stage / "structure.safetensors", metadata=meta)
        else:
            from safetensors.torch import save_file

            save(stack, stage / "structure.safetensors", metadata=meta)
            save_file({k: v.contiguous() for k, v in whiten.state_dict().items()},
                      str(stage / "whitening.safetensors"))
        if images:
            save_receptive_fields(stack.layers[0][0], shape, stage / "receptive_fields.png")
        _write_json(stage / "results.json", {"args": vars(args), "report": stack.report,
                                             "results": rows,
                                             "seconds": time.perf_counter() - t_start}, default=str)
    written = sorted(f.name for f in out.iterdir() if not f.name.startswith("."))
    print(f"\nwrote {', '.join(str(out / f) for f in written)} "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 0


def _learn_unsupervised(args, loader, shape: tuple, verbose: bool):
    """Whitening and structure, from the examples only (labels unused): ``(whiten, stack)``."""
    import math

    from torch.utils.data import DataLoader, TensorDataset

    d = math.prod(shape)
    if args.whitening_kernel and len(shape) != 3:
        raise ValueError(f"--whitening-kernel needs (C, H, W) images, got shape {shape}")
    if getattr(args, "flip", False) and len(shape) != 3:
        raise ValueError(f"--flip needs (C, H, W) images, got shape {shape}")
    # both built (and their arguments checked) before the whitening's pass over the data
    whiten = ZCAWhitening(d, eps=args.eps, kernel_size=args.whitening_kernel,
                          image_shape=shape if args.whitening_kernel else None,
                          rank=args.whitening_rank)
    stack = StructLearnedStack(d, args.width, max_depth=args.max_depth, density=args.density,
                               group_size=args.group_size, min_gain=args.min_gain,
                               epochs=args.dict_epochs, active_fraction=args.active_fraction,
                               seed=args.seed)
    whiten.fit(loader)
    if isinstance(loader.dataset, TensorDataset):  # in memory: whiten it once
        white = DataLoader(TensorDataset(whiten(loader.dataset.tensors[0]).detach()),
                           batch_size=args.batch_size)
    else:  # streamed: whitened batch by batch, each pass
        white = MappedLoader(loader, lambda x: whiten(x).detach())
    stack.learn_structure(white, verbose=verbose)
    return whiten, stack


def _train_and_compare(args, whiten, stack, shape, Xtr, ytr, Xte, yte, *, verbose: bool):
    """The same recipe for the learned, random (same fan-in) and dense structures: the table
    rows and the three trained classifiers."""
    import torch

    d, n_classes = Xtr[0].numel(), int(max(ytr.max(), yte.max())) + 1
    random_stack = StructLearnedStack.random_like(stack, seed=args.seed)
    dense_stack = StructLearnedStack(d, args.width, max_depth=args.max_depth, density=1.0,
                                     group_size=args.group_size, depth=stack.depth)
    rows, models = [], {}
    whiten.requires_grad_(False)
    for name, body in (("learned", stack), ("random", random_stack), ("dense", dense_stack)):
        torch.manual_seed(args.seed)
        model = models[name] = StructLearnedClassifier(whiten, body, n_classes, shape)
        t0 = time.perf_counter()
        fit_classifier(model, Xtr, ytr, epochs=args.epochs, lr=args.lr, seed=args.seed,
                       weight_decay=args.weight_decay, hflip=shape if args.flip else None,
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
    return rows, models


def _labels(path: str, n: int):
    """The ``(N,)`` integer class labels in an array file (``--labels``), one per example."""
    import numpy as np
    import torch

    y = read_array(path, "--labels")

    y = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y))
    if y.dim() != 1 or len(y) != n or y.is_floating_point() or (len(y) and int(y.min()) < 0):
        raise ValueError(f"--labels {path}: expected {n} non-negative integer class labels (one "
                         f"per example of --data), got shape {tuple(y.shape)} {y.dtype}")
    return y.long()


def _split(data, labels, args):
    """``(Xtr, ytr, Xte, yte)`` in memory: ``--test-fraction`` of the examples (a fixed random
    subset, seed ``--seed``) held out for the accuracy table."""
    import torch
    from torch.utils.data import DataLoader

    X = torch.cat(list(DataLoader(data, batch_size=args.batch_size, shuffle=False)))
    n_test = max(1, round(args.test_fraction * len(X)))
    if n_test >= len(X):
        raise ValueError(f"--test-fraction {args.test_fraction} leaves no training examples "
                         f"of {len(X)}")
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(args.seed))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], labels[train], X[test], labels[test]


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
    if isinstance(module, dict):  # a converted model's layers, by module name
        names = {id(layer): name for name, layer in module.items()}
    else:
        names = {id(m): name or type(m).__name__ for name, m in module.named_modules()}
    shape = None
    if args.png:  # checked before anything is printed
        shape = args.image_shape or getattr(module, "input_shape", None)
        if shape is None:
            raise ValueError("--png needs --image-shape C,H,W for this file")
        if math.prod(shape) != layers[0].in_features:
            raise ValueError(f"--image-shape {','.join(map(str, shape))}: the first layer takes "
                             f"{layers[0].in_features} inputs, not {math.prod(shape)}")
    print(args.file)
    if not isinstance(module, dict):
        print(f"  {type(module).__name__}: {module.extra_repr()}")
    if shape is not None:
        save_receptive_fields(layers[0], shape, args.png)
        print(f"  wrote {args.png}")
    for i, layer in enumerate(layers):
        fan = layer.fan_in.long()
        print(f"  {names.get(id(layer), f'layer {i}')}: {layer.in_features} -> "
              f"{layer.out_features}, nnz={layer.nnz}, "
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
    """``structlearn convert MODEL``: a timm model or the user's own (a factory, or a saved
    module with ``--trust-pickle``), calibrated on a named data set or ``--data``; writes the
    structures and the converted weights into the ``--out`` folder."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    out = Path(args.out)
    legacy = out.suffix == ".safetensors"  # 0.1's spelling: --out FILE.safetensors
    if legacy:
        warnings.warn("structlearn convert --out FILE.safetensors is deprecated: --out is a "
                      "folder (structures.safetensors and weights.safetensors go in it), as in "
                      "every subcommand", FutureWarning, stacklevel=1)
        structures, weights = out, out.with_suffix(".pt")
    else:
        if out.exists() and not out.is_dir():  # checked now, not after the conversion
            raise ValueError(f"--out {out} is a file; give a folder (it receives "
                             "structures.safetensors and weights.safetensors)")
        structures, weights = out / "structures.safetensors", out / "weights.safetensors"
    _writable_folder(structures.parent, "--out")
    name = args.method or ("dictionary" if args.init in ("dictionary", "random") else "refit")
    if name == "dictionary":
        if args.sequential:
            raise ValueError("--sequential is for the pruning methods (refit, sparsegpt, wanda, "
                             "magnitude), not --method dictionary")
        method = Learn(args.init or "dictionary")
    else:
        if args.init not in (None, "keep"):
            raise ValueError(f"--init {args.init} is for --method dictionary; --method {name} "
                             "keeps the trained weights")
        method = Prune(name, sequential=args.sequential)
    parse_pattern(args.pattern)  # a bad --pattern is refused before any data is read
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: not a file")
    if args.data is None and (args.key is not None or args.image_size is not None):
        raise ValueError("--key and --image-size only apply with --data")
    if args.data is not None and args.data_root is not None:
        raise ValueError("--data-root only applies to a named --dataset")
    if args.data is not None:
        import itertools

        data = open_data(args.data, key=args.key, image_size=args.image_size)
        first = DataLoader(data, batch_size=min(256, args.limit))  # read no more than --limit
        X = torch.cat(list(itertools.islice(first, -(-args.limit // first.batch_size))))
        X, n_classes = X[: args.limit], None
    else:
        X, y = load_dataset(args.dataset, "train", args.data_root, args.limit)
        n_classes = int(y.max()) + 1
    model, timm_size = _user_model(args, n_classes)
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
    if timm_size is not None and args.data is None:  # a named data set, fitted to timm's input
        if X.shape[1] != timm_size[0]:
            X = X.expand(-1, timm_size[0], -1, -1) if X.shape[1] == 1 else X[:, : timm_size[0]]
        if tuple(X.shape[-2:]) != tuple(timm_size[-2:]):
            X = torch.nn.functional.interpolate(X, size=tuple(timm_size[-2:]), mode="bilinear",
                                                align_corners=False)
    loader = DataLoader(TensorDataset(X), batch_size=args.batch_size)
    report = convert(model, loader, density=args.density, method=method, pattern=args.pattern,
                     include=args.include, exclude=args.exclude, batches=args.batches,
                     untie=args.untie, verbose=not args.quiet)
    save(model, structures, metadata={"model": args.model, "dataset": args.data or args.dataset,
                                      "command": " ".join(sys.argv), "report": report})
    if legacy:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        _write_atomic(weights, buf.getvalue())
    else:
        from safetensors.torch import save as save_tensors

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        _write_atomic(weights, save_tensors(state))
    print(f"converted {len(report)} layers; wrote {structures} (structures) and {weights} "
          "(state_dict of the converted model)")
    return 0


def _user_model(args, n_classes: int | None):
    """``(model, timm input size or None)`` for ``MODEL``: ``package.module:factory`` (called
    with no arguments), a ``torch.save``d module or TorchScript file (``--trust-pickle``), or a
    timm model name."""
    import importlib

    import torch
    from torch import nn

    spec = args.model
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"MODEL {spec}: cannot import {attr!r} from {module_name!r} ({e})") from None
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(model, nn.Module):
            raise TypeError(f"MODEL {spec}: expected an nn.Module (or a factory returning one), "
                            f"got {type(model).__name__}")
        return model, None
    if Path(spec).is_file():
        if not args.trust_pickle:
            raise ValueError(f"MODEL {spec} is a file: loading a saved module runs code from it; "
                             "pass --trust-pickle if you trust it (or give package.module:factory "
                             "and --checkpoint)")
        import zipfile

        scripted = zipfile.is_zipfile(spec) and any(
            n.endswith("constants.pkl") for n in zipfile.ZipFile(spec).namelist())
        if scripted:  # a TorchScript archive
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # (torch.jit is deprecated)
                model = torch.jit.load(spec, map_location="cpu")
        else:
            model = torch.load(spec, map_location="cpu", weights_only=False)
        if not isinstance(model, nn.Module):
            raise TypeError(f"MODEL {spec}: the file holds a {type(model).__name__}, not an "
                            "nn.Module")
        return model, None
    if args.trust_pickle:
        raise ValueError(f"--trust-pickle: MODEL {spec} is not a file")
    import timm

    if n_classes is None:
        raise ValueError(f"MODEL {spec} is a timm name: give --dataset (its classes size the "
                         "head) or your own model (package.module:factory)")
    try:
        model = timm.create_model(spec, pretrained=False, num_classes=n_classes)
    except RuntimeError as e:
        raise ValueError(f"MODEL {spec}: not a timm model name, package.module:factory or a "
                         f"file ({e})") from None
    return model, model.pretrained_cfg.get("input_size", (3, 224, 224))


S = argparse.SUPPRESS  # an option whose default is filled in after checking it applies

SUPERVISED = {  # the training options of `learn`: they need labels
    "--epochs": {"type": positive(int), "help": "supervised epochs (default: 40)"},
    "--lr": {"type": positive(float), "help": "Adam's learning rate (default: 0.003)"},
    "--weight-decay": {"type": nonnegative, "help": "Adam's L2 penalty (default: 0)"},
    "--flip": {"action": "store_true",
               "help": "mirror a random half of every training batch left-right (images)"},
}
_LEARN_DEFAULTS = {"dataset": "digits", "labels": None, "key": None, "image_size": None,
                   "test_fraction": 0.1, "data_root": None, "limit": None, "epochs": 40,
                   "lr": 3e-3, "weight_decay": 0.0, "flip": False}


def _learn_options(parser: argparse.ArgumentParser, args) -> None:
    """Refuse options given where they would be ignored (exit 2), then fill in the defaults."""
    given = {k for k in _LEARN_DEFAULTS if hasattr(args, k)}
    own = args.data is not None
    rules = [({"labels", "key", "image_size"}, own, "only apply with --data"),
             ({"test_fraction"}, own and "labels" in given, "only applies with --data and --labels"),
             ({"data_root", "limit"}, not own, "only apply to a named --dataset"),
             ({"epochs", "lr", "weight_decay", "flip"}, not own or "labels" in given,
              "train the structure, which needs labels: a named --dataset, or --labels with --data")]
    for names, ok, why in rules:
        bad = sorted(given & names)
        if bad and not ok:
            flags = ", ".join("--" + n.replace("_", "-") for n in bad)
            parser.error(f"{flags}: {why}")
    for k, v in _LEARN_DEFAULTS.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    if own:
        args.dataset = None


def _hw(s: str) -> tuple[int, int]:
    """An argparse type: an image size written ``H,W`` (positive ints)."""
    try:
        h, w = (int(v) for v in s.split(","))
        if min(h, w) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be H,W positive integers, got {s!r}") from None
    return h, w


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
    fmt = argparse.ArgumentDefaultsHelpFormatter
    lr = sub.add_parser(
        "learn", formatter_class=fmt,
        help="learn a structure from your data (--data) or a named data set (--dataset)",
        description="Learn a layer structure from unlabelled examples: whiten them, learn the "
                    "stack, save the structure (and receptive fields for images). With a named "
                    "data set, or --data with --labels, also train it and compare it with "
                    "random and dense structures under the same recipe.")
    src = lr.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=DATASETS, default=S,
                     help="a named data set, read offline (default: digits, when --data is not "
                          "given)")
    src.add_argument("--data", default=None, metavar="PATH",
                     help="your examples: an (N, d), (N, H, W) or (N, C, H, W) array in a .npy, "
                          ".pt or .safetensors file, or a folder of images (any layout, labels "
                          "not read); read as needed, so it may be larger than memory")
    lr.add_argument("--labels", default=S, metavar="PATH",
                    help="with --data: (N,) integer class labels in an array file; then also "
                         "train and compare (default: none, structure learning only)")
    lr.add_argument("--key", default=S, help="with --data: the array to read in a file holding "
                                             "several (default: its only one)")
    lr.add_argument("--image-size", type=_hw, default=S, metavar="H,W",
                    help="with an image folder: resize every image to H,W (default: all must "
                         "have the first image's size)")
    lr.add_argument("--test-fraction", type=fraction, default=S,
                    help="with --labels: examples held out for the accuracy table (default: 0.1)")
    lr.add_argument("--data-root", default=S, help="with --dataset: the data folder (default: "
                                                   "$STRUCTLEARN_DATA)")
    lr.add_argument("--limit", type=positive(int), default=S,
                    help="with --dataset: a fixed random subset of N training images (default: "
                         "all)")
    lr.add_argument("--density", type=density, default=0.25, help="connections per unit / inputs")
    lr.add_argument("--width", type=positive(int), default=128, help="units per layer")
    lr.add_argument("--max-depth", type=positive(int), default=2,
                    help="layers at most (the coding-efficiency score decides how many)")
    lr.add_argument("--group-size", type=positive(int), default=2, help="units pooled together")
    lr.add_argument("--min-gain", type=float, default=0.01,
                    help="relative coding-efficiency gain a layer must bring to be kept")
    lr.add_argument("--eps", type=positive(float), default=8.0, help="ZCA regulariser")
    lr.add_argument("--whitening-kernel", type=positive(int), default=None, metavar="K",
                    help="whiten with a KxK convolution fitted to the full ZCA (odd K; small "
                         "files for large images) instead of the d x d matrix")
    lr.add_argument("--whitening-rank", type=positive(int), default=None, metavar="R",
                    help="keep the ZCA in rank R: the R highest-variance directions exactly, "
                         "the others at one common scale (d x R numbers instead of d x d)")
    lr.add_argument("--dict-epochs", type=positive(int), default=2,
                    help="dictionary-learning passes over the data")
    lr.add_argument("--active-fraction", type=fraction, default=0.3,
                    help="codes active at the start of dictionary learning (sets lam1)")
    for flag, kw in SUPERVISED.items():
        lr.add_argument(flag, default=S, **kw)
    lr.add_argument("--batch-size", type=positive(int), default=256, help="examples per batch")
    lr.add_argument("--seed", type=int, default=0, help="random seed")
    lr.add_argument("--out", default="runs/demo",
                    help="output folder: structure.safetensors, results.json, and "
                         "receptive_fields.png for images (whitening.safetensors without labels)")
    lr.add_argument("--quiet", action="store_true", help="no progress bars")
    i = sub.add_parser("inspect", formatter_class=fmt, help="summarise a structure file (.safetensors)",
                       description="Per-layer summary of a structure file; with --png, the "
                                   "first layer's receptive fields as an image grid.")
    i.add_argument("file", help="a .safetensors file written by torch_structlearn.save")
    i.add_argument("--png", default=None, help="write the first layer's receptive fields here")
    i.add_argument("--image-shape", type=_shape, default=None,
                   help="C,H,W of the first layer's input (classifier files know it)")
    h = sub.add_parser("hub", formatter_class=fmt, help="the hub of pretrained structures",
                       description="List the hub entries (the repo's hub/ and $STRUCTLEARN_HUB).")
    h.add_argument("action", choices=["list"], help="what to do: list the entries")
    cv = sub.add_parser("convert", formatter_class=fmt,
                        help="convert a model's nn.Linear layers (timm or your own)",
                        description="Make a model's nn.Linear layers sparse: MODEL is a timm name, "
                                    "your factory (package.module:factory), or a saved module "
                                    "(--trust-pickle); weights from --checkpoint; calibration "
                                    "examples from --dataset or --data. Writes "
                                    "structures.safetensors and weights.safetensors into --out.")
    cv.add_argument("model", help="a timm model name (vit_tiny_patch16_224), package.module:"
                                  "factory (a callable returning your nn.Module), or a file "
                                  "written by torch.save(module) / TorchScript (with "
                                  "--trust-pickle)")
    csrc = cv.add_mutually_exclusive_group()
    csrc.add_argument("--dataset", choices=DATASETS, default="digits",
                      help="calibration images (resized to a timm model's input)")
    csrc.add_argument("--data", default=None, metavar="PATH",
                      help="your calibration examples, as the model takes them: an array file "
                           "(.npy, .pt, .safetensors) or an image folder (as learn --data)")
    cv.add_argument("--key", default=None, help="with --data: the array to read in a file "
                                               "holding several")
    cv.add_argument("--image-size", type=_hw, default=None, metavar="H,W",
                    help="with an image folder: resize every image to H,W")
    cv.add_argument("--trust-pickle", action="store_true",
                    help="MODEL is a saved module: allow loading it (this runs code from the "
                         "file; only for files you trust)")
    cv.add_argument("--data-root", default=None, help="data folder (default: $STRUCTLEARN_DATA)")
    cv.add_argument("--density", type=density, default=0.1,
                    help="connections kept per unit / inputs")
    cv.add_argument("--include", default=None, help="glob on module names, e.g. 'blocks.*.mlp.fc*'")
    cv.add_argument("--exclude", default=None, help="glob on module names left dense")
    cv.add_argument("--method", choices=["refit", "sparsegpt", "wanda", "magnitude", "dictionary"],
                    default=None, help="how masks and kept weights are chosen: a pruning "
                    "method keeps the trained weights; dictionary reads masks off a dictionary "
                    "of each layer's inputs, for training afterwards (default: refit; "
                    "dictionary with --init dictionary or random)")
    cv.add_argument("--pattern", default=None, metavar="N:M|BOxBI",
                    help="the masks' shape: unstructured (default), n:m (e.g. 2:4, with "
                         "--density 0.5) or blocks (e.g. 4x4)")
    cv.add_argument("--init", choices=["dictionary", "random", "keep"], default=None,
                    help="with --method dictionary: the converted layers' weights (the "
                         "dictionary's, random, or the trained ones on the mask; default "
                         "dictionary)")
    cv.add_argument("--sequential", action="store_true",
                    help="with a pruning method: calibrate layer by layer on the converted "
                         "model's inputs")
    cv.add_argument("--untie", action="store_true",
                    help="convert a layer whose weight is tied to another parameter anyway (it "
                         "gets its own copy; default: an error naming the tie)")
    cv.add_argument("--checkpoint", default=None,
                    help="a state_dict file for the model (read with weights_only=True)")
    cv.add_argument("--limit", type=positive(int), default=512, help="calibration examples used")
    cv.add_argument("--batches", type=positive(int), default=None,
                    help="calibration batches used (default: all)")
    cv.add_argument("--batch-size", type=positive(int), default=32, help="examples per batch")
    cv.add_argument("--out", default="runs/convert",
                    help="output folder: structures.safetensors (the sparse layers) and "
                         "weights.safetensors (the converted model's state_dict)")
    cv.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("bench", help="run the benchmarks and auto's calibration (structlearn bench "
                                 "--help)", add_help=False)
    args = p.parse_args(argv)
    if args.command == "learn":
        _learn_options(lr, args)
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
