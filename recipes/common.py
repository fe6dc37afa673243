"""Shared pieces of the [repro] recipes: data with a validation split, the single-hidden-layer
network of docs/algorithm.md §6, one training recipe for every structure, and result files."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_structlearn import Connectivity, DynamicSparsity, StructLearnedLinear, ZCAWhitening
from torch_structlearn.bench import machine as bench_machine
from torch_structlearn.checks import arg_fraction as _fraction
from torch_structlearn.checks import arg_nonnegative as _nonnegative
from torch_structlearn.checks import arg_positive as _positive
from torch_structlearn.datasets import load_dataset
from torch_structlearn.entropy import gaussian_total_correlation, marginal_entropy
from torch_structlearn.filesystem import write_json as _write_json
from torch_structlearn.pooling import GroupPool
from torch_structlearn.train import accuracy, fit_classifier

# Denormal floats count as zero in this process. Adam's L2 decay drives the weights of units
# that never fire (zero data gradient) into the denormal range (below 1.2e-38), where each
# multiply costs ~100 cycles. Measured: the dense + dictionary init layer of exp_mask on
# CIFAR-10 spent 86 % of its time in the forward sgemm, 13 epochs in 47 min. It must be set
# before the first parallel op: OpenMP threads inherit it when they are created.
torch.set_flush_denormal(True)

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "repro"  # where a run writes its result
SHIPPED = ROOT / "recipes" / "results"  # the committed copies RESULTS.md is made from


def result_files() -> list[Path]:
    """Every result, by file name: the committed copies in ``recipes/results/``, each replaced
    by a newer run of the same name in ``runs/repro/`` (not the rows an unfinished run has
    saved, ``*.partial.json``)."""
    found = {f.name: f for folder in (SHIPPED, RUNS) for f in sorted(folder.glob("*.json"))
             if not f.name.endswith(".partial.json")}
    return [found[name] for name in sorted(found)]


def result_path(name: str) -> Path:
    """The result ``<name>.json``: the run's own in ``runs/repro/`` where there is one, else the
    committed copy (which may not exist either)."""
    own = RUNS / f"{name}.json"
    return own if own.exists() else SHIPPED / own.name


def machine() -> str:
    """The hardware line of a result (from the benchmark's probe)."""
    m = bench_machine()
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return f"{m['cpu']}, {m['threads']} threads{gpu}, torch {m['torch']}"


@functools.cache
def code_version() -> str:
    """The commit this process runs (the full hash, with ``-dirty`` when tracked files differ
    from it), or ``"unknown"`` outside a git checkout; read once per process (``setup`` reads it first). With
    :func:`machine` it says what a row's bits depend on: the same seed gives the same numbers
    only on the same hardware with the same code (another CPU or kernel sums in another order)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=60)
    try:
        head, changed = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode or changed.returncode:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def data(dataset: str, n_train: int | None, n_val: int, root=None, eps: float = 0.1):
    """Whitened ``(train, val, test)`` splits; the validation split is held out of the training
    images (every choice is made on it, never on test). Whitening is fitted on train only."""
    X, y = load_dataset(dataset, "train", root)
    g = torch.Generator().manual_seed(1234)
    perm = torch.randperm(len(y), generator=g)
    val, tr = perm[:n_val], perm[n_val:]
    if n_train is not None:
        tr = tr[:n_train]
    Xte, yte = load_dataset(dataset, "test", root)
    d = X[0].numel()
    w = ZCAWhitening(d, eps=eps).fit(DataLoader(TensorDataset(X[tr]), batch_size=1000))
    with torch.no_grad():
        out = [(w(X[tr]), y[tr]), (w(X[val]), y[val]), (w(Xte), yte)]
    return out, tuple(X.shape[1:])


def network(conn: Connectivity | None, d: int, K: int, group_size: int, n_classes: int,
            values: torch.Tensor | None = None, dense: bool = False) -> nn.Module:
    """``StructLearnedLinear(d, K) → ReLU → GroupPool(l2) → Linear``; ``dense`` uses nn.Linear."""
    layer = nn.Linear(d, K) if dense else StructLearnedLinear(d, K, connectivity=conn)
    if values is not None:
        with torch.no_grad():
            layer.copy_csr_values_(values)
            layer.bias.zero_()
    return nn.Sequential(layer, nn.ReLU(), GroupPool(group_size, "l2"), nn.Linear(K // group_size, n_classes))


def train_eval(model: nn.Module, splits, *, seed: int, **fit) -> dict:
    """Train with the shared recipe (``fit``: ``fit_classifier``'s keyword arguments, ``cfg["fit"]``
    of :func:`setup`); report validation/test accuracy, the training accuracy (on the images
    as they are, without the flips) and last epoch's mean training loss — what tells overfitting
    from underfitting — and the coding-efficiency score (entropy estimate) of the top hidden
    layer's outputs on the validation images — and where the row was made (:func:`machine`,
    :func:`code_version`), since a result extended over sessions may mix machines and commits."""
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    t0 = time.perf_counter()
    losses = fit_classifier(model, Xtr, ytr, seed=seed, **fit)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        hidden = model[:-1](Xva[:5000])  # everything but the head
    return {"val_accuracy": accuracy(model, Xva, yva), "test_accuracy": accuracy(model, Xte, yte),
            "train_accuracy": accuracy(model, Xtr, ytr), "train_loss": losses[-1],
            **score_parts(hidden), "train_seconds": seconds, "machine": machine(),
            "code": code_version()}


def dynamic_fit(fit: dict, model: nn.Module, method: str, seed: int) -> dict:
    """``fit`` with dynamic sparse training of every ``StructLearnedLinear`` of ``model``
    (``DynamicSparsity``, ``method`` 'rigl' or 'set') after each optimizer step, at the papers'
    settings: ΔT 100 steps, fraction 0.3 cosine-decayed to 0 at 75 % of training (SET's constant
    fraction replaced by the same schedule, so that only the growth rule differs)."""
    return {**fit, "after_step": lambda opt, n: DynamicSparsity(
        model, opt, method=method, update_every=100, fraction=0.3, total_steps=n, seed=seed).step}


def score_parts(hidden: torch.Tensor) -> dict:
    """The coding-efficiency score ``E = H − TC`` of ``hidden (N, K)`` (per unit, as
    :func:`torch_structlearn.entropy.coding_efficiency` computes it) with its two terms — the mean
    marginal entropy ``H`` of the standardised units and the Gaussian total correlation per unit
    ``TC`` — and two shape statistics of the units that bear on ``H``: the fraction of outputs that
    are exactly zero (a point mass, which a histogram entropy scores low) and the mean excess
    kurtosis of the non-constant units (a Gaussian has 0)."""
    K = hidden.shape[1]
    H = float(marginal_entropy(hidden).mean())
    tc = gaussian_total_correlation(hidden) / K
    Y = hidden.double()
    std = Y.std(0, correction=0)  # the moments' kurtosis m4 / m2²
    live = std > 1e-12 * (1 + Y.abs().amax(0))
    Z = (Y[:, live] - Y[:, live].mean(0)) / std[live]
    kurtosis = float((Z ** 4).mean(0).sub(3).mean()) if live.any() else float("nan")
    return {"score": H - tc, "score_entropy": H, "score_tc": tc,
            "zero_fraction": float((hidden == 0).double().mean()), "excess_kurtosis": kurtosis}


def _machines(*lines: str) -> str:
    """The distinct hardware lines, in order, joined by ``"; "`` (a run split over sessions
    may have run its parts on different machines)."""
    seen = [m for line in lines for m in line.split("; ") if m]
    return "; ".join(dict.fromkeys(seen))


def write(name: str, payload: dict, command: str | None = None) -> Path:
    path = RUNS / f"{name}.json"
    payload = {"command": command or _command(), "machine": machine(), **payload}
    _write_json(path, payload)
    print(f"wrote {path}")
    return path


def add_args(p, *, width_quick: int = 256, width_full: int = 1600, resumable: bool = False) -> None:
    """The arguments every experiment shares (``resumable``: also ``--resume``, for an experiment
    that saves its rows with :func:`checkpoint` as it goes)."""
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--quick", action="store_true", help="CPU setting: 10 000 images, fewer epochs")
    p.add_argument("--seeds", type=_positive(int), default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds first-seed .. first-seed + seeds - 1 and add their rows to the "
                        "existing result file of the same settings (a long run split over sessions)")
    p.add_argument("--width", type=_positive(int), default=None,
                   help=f"K (default {width_quick} with --quick, {width_full} otherwise)")
    p.add_argument("--group-size", type=_positive(int), default=4)
    p.add_argument("--epochs", type=_positive(int), default=None, help="supervised epochs (8 quick, 40 full)")
    p.add_argument("--dict-epochs", type=_positive(int), default=None, help="dictionary passes (2 quick, 5 full)")
    p.add_argument("--lr", type=_positive(float), default=3e-3)
    p.add_argument("--flip", action="store_true",
                   help="training augmentation: mirror a random half of each batch left-right "
                        "(in whitened space; off by default, the recipe of every earlier result)")
    p.add_argument("--weight-decay", type=_nonnegative, default=0.0, help="Adam's L2 weight decay")
    p.add_argument("--whiten-eps", type=_positive(float), default=None,
                   help="ZCA ε as a fraction of the mean eigenvalue (default: the validation "
                        "choice of exp_tune.py for the data set, TUNED)")
    p.add_argument("--active-fraction", type=_fraction, default=None,
                   help="the dictionary learner's active_fraction (default: TUNED)")
    p.add_argument("--dict-memory", choices=["short", "all"], default=None,
                   help="dictionary statistics over the last 4 batches (the learner's default) "
                        "or over all training images (default: TUNED)")
    if resumable:
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted run of the same command: keep the rows it "
                            "saved (runs/repro/<result>.partial.json) and train only the rest")
    p.set_defaults(_widths=(width_quick, width_full), resume=False)


# The choices exp_tune.py made on the validation split (RESULTS.md, "Validation choices"), and
# the settings every result before them used (result files without these keys).
TUNED = {
    "mnist": {"whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short"},
    "fashion-mnist": {"whiten_eps": 2.0, "active_fraction": 0.05, "dict_memory": "short"},
    "cifar10": {"whiten_eps": 8.0, "active_fraction": 0.3, "dict_memory": "short"},
}
LEGACY = {"whiten_eps": 0.1, "active_fraction": 0.05, "dict_memory": "short"}
# The training recipe's additions; every result from before they existed was trained without.
PLAIN = {"flip": False, "weight_decay": 0.0}


def recorded(res: dict) -> dict:
    """A result's (or a run's) ``whiten_eps``, ``active_fraction``, ``dict_memory``, ``flip`` and
    ``weight_decay``; LEGACY's and PLAIN's for a result file that predates recording them."""
    return {k: res.get(k, v) for k, v in {**LEGACY, **PLAIN}.items()}


def recipe_suffix(s: dict) -> str:
    """``-flip``/``-wd<value>`` for a training recipe other than PLAIN (result names, labels)."""
    return ("-flip" if s["flip"] else "") + (f"-wd{s['weight_decay']:g}" if s["weight_decay"] else "")


def tuned(args) -> dict:
    """``whiten_eps``, ``active_fraction`` and ``dict_memory``: the arguments given, else TUNED."""
    return {k: v if getattr(args, k) is None else getattr(args, k)
            for k, v in TUNED[args.dataset].items()}


def learn_kw(active_fraction: float, dict_memory: str, n_train: int) -> dict:
    """The dictionary learner's keyword arguments for these recipe settings."""
    return {"active_fraction": active_fraction,
            "memory": n_train if dict_memory == "all" else None}


def fit_kw(epochs: int, lr: float, flip: bool, weight_decay: float, image_shape) -> dict:
    """``fit_classifier``'s keyword arguments for these recipe settings."""
    return {"epochs": epochs, "lr": lr, "weight_decay": weight_decay,
            "hflip": tuple(image_shape) if flip else None}


def seed_range(args) -> range:
    """The seeds this run trains."""
    return range(args.first_seed, args.first_seed + args.seeds)


def _result_name(name: str, args) -> str:
    return f"{name}-{args.dataset}" + ("-quick" if args.quick else "") + recipe_suffix(vars(args))


def _partial_path(name: str, args) -> Path:
    return RUNS / f"{_result_name(name, args)}.partial.json"


def _command() -> str:
    """This run's command line (without ``--resume``: a resumed run trains the rows it lacks with
    the same seeds, so the rows are those of the command run once)."""
    return "python " + " ".join(a for a in sys.argv if a != "--resume")


def checkpoint(name: str, args, cfg: dict, rows: list) -> None:
    """Save the rows so far to ``runs/repro/<result>.partial.json`` (call it after each row), so
    that ``--resume`` can continue the run when it is interrupted; :func:`finish` removes it."""
    payload = {"command": _command(), "machine": _machines(cfg.get("machine_before", ""), machine()),
               "rows": rows,
               "wall_seconds": cfg["wall_before"] + time.perf_counter() - cfg["t_start"]}
    _write_json(_partial_path(name, args), payload)


def done(rows: list, **key) -> bool:
    """Whether ``rows`` already holds the row with these values (one a resumed run saved)."""
    return any(all(r.get(k) == v for k, v in key.items()) for r in rows)


def read_partial(path: Path, command: str, keys: set[str]) -> dict:
    """``--resume``: the partial result an interrupted run of ``command`` saved at ``path``
    (``SystemExit`` when there is none, it is unreadable or lacks ``keys``, or it comes from
    another command: compared by the script's arguments)."""
    if not path.exists():
        raise SystemExit(f"--resume: no interrupted run to continue ({path} does not exist)")
    try:
        old = json.loads(path.read_text())
    except ValueError:
        old = None
    if not (isinstance(old, dict) and {"command", *keys} <= old.keys()):
        raise SystemExit(f"--resume: {path} is not a partial result (unreadable, or keys missing); "
                         "delete it to start the run again")
    if old["command"].split()[2:] != command.split()[2:]:  # the script's arguments
        raise SystemExit(f"--resume: {path} is from another command: {old['command']!r}, "
                         f"not {command!r}")
    return old


def _resumed(name: str, args) -> dict:
    """With ``--resume``: the interrupted run's rows and wall time so far (``SystemExit`` when
    there is no partial result, or it comes from another command)."""
    if not args.resume:
        return {"rows": [], "wall_seconds": 0.0, "machine": ""}
    path = _partial_path(name, args)
    old = read_partial(path, _command(), {"rows", "wall_seconds"})
    print(f"resuming {path}: {len(old['rows'])} rows done", flush=True)
    return {"machine": "", **old}


def _settings(name: str, args, cfg: dict, n_train: int) -> dict:
    return {"experiment": name, "dataset": args.dataset, "quick": args.quick, "width": cfg["K"],
            "group_size": args.group_size, "epochs": cfg["epochs"],
            "dict_epochs": cfg["dict_epochs"], "n_train": n_train, "lr": args.lr,
            **recorded(cfg)}


def _earlier(name: str, args, cfg: dict, n_train: int) -> dict | None:
    """With ``--first-seed N > 0``: the existing result these seeds extend (``SystemExit`` when
    it is missing, was run with other settings, or already has one of these seeds)."""
    if args.first_seed == 0:
        return None
    path = result_path(_result_name(name, args))
    if not path.exists():
        raise SystemExit(f"--first-seed {args.first_seed}: no earlier result {path} to extend")
    old = json.loads(path.read_text())
    want = _settings(name, args, cfg, n_train)
    if hasattr(args, "density"):
        want["density"] = args.density
    before = recorded(old)
    diff = {k: (old.get(k, before.get(k)), v) for k, v in want.items()
            if old.get(k, before.get(k)) != v}
    if diff:
        raise SystemExit(f"--first-seed {args.first_seed}: {path} was run with other settings "
                         f"(earlier, now): {diff}")
    taken = {r["seed"] for r in old["rows"]} & set(seed_range(args))
    if taken:
        raise SystemExit(f"--first-seed {args.first_seed}: {path} already has seeds {sorted(taken)}")
    return old


def setup(args, name: str) -> dict:
    """Resolve the quick/full defaults and load the whitened splits (checking first that an
    earlier result exists to extend when ``--first-seed`` is given)."""
    if args.seeds < 1 or args.first_seed < 0:
        raise SystemExit(f"--seeds must be >= 1 and --first-seed >= 0, got {args.seeds} and "
                         f"{args.first_seed}")
    code_version()  # the commit is read now, before the run's long work (it is cached)
    wq, wf = args._widths
    cfg = {"K": args.width or (wq if args.quick else wf),
           "epochs": args.epochs or (8 if args.quick else 40),
           "dict_epochs": args.dict_epochs or (2 if args.quick else 5),
           "t_start": time.perf_counter()}
    cfg.update(tuned(args), flip=args.flip, weight_decay=args.weight_decay)
    cfg["n_train"] = 10_000 if args.quick else None  # None: every training image
    part = _resumed(name, args)  # before the data: a wrong --resume fails at once
    cfg.update(done=part["rows"], wall_before=part["wall_seconds"], machine_before=part["machine"])
    splits, image_shape = data(args.dataset, cfg["n_train"], 5_000, args.data_root,
                               eps=cfg["whiten_eps"])
    Xtr, ytr = splits[0]
    cfg["learn_kw"] = learn_kw(cfg["active_fraction"], cfg["dict_memory"], len(ytr))
    cfg["earlier"] = _earlier(name, args, cfg, len(ytr))
    cfg.update(splits=splits, image_shape=image_shape, d=Xtr.shape[1], n_classes=int(ytr.max()) + 1,
               loader=DataLoader(TensorDataset(Xtr), batch_size=250),
               fit=fit_kw(cfg["epochs"], args.lr, args.flip, args.weight_decay, image_shape))
    return cfg


def finish(name: str, args, cfg: dict, rows: list, **extra) -> Path:
    """Write ``runs/repro/<name>-<dataset>[-quick].json`` with the settings and rows (with
    ``--first-seed``, the earlier result's rows first; commands joined, wall times summed, and
    every machine that ran a part named)."""
    wall = cfg.get("wall_before", 0.0) + time.perf_counter() - cfg["t_start"]
    here = _machines(cfg.get("machine_before", ""), machine())
    payload = {**_settings(name, args, cfg, len(cfg["splits"][0][1])), "seeds": args.seeds,
               "rows": rows, "wall_seconds": wall, "machine": here, **extra}
    old = cfg.get("earlier")
    command = _command()
    if old is not None:
        payload["rows"] = old["rows"] + rows
        payload["seeds"] = len({r["seed"] for r in payload["rows"]})
        payload["wall_seconds"] += old["wall_seconds"]
        payload["machine"] = _machines(old["machine"], here)
        command = f"{old['command']}; {command}"
    path = write(_result_name(name, args), payload, command)
    _partial_path(name, args).unlink(missing_ok=True)
    return path
