"""Benchmarks and ``auto``'s calibration: ``structlearn bench WHAT`` (or
``python -m torch_structlearn.bench WHAT``).

* ``kernels`` (default): every backend, ``auto`` and (``--peers``) other libraries' sparse
  layers against ``nn.Linear``, forward and forward+backward, with peak memory
  (:mod:`.kernels`).
* ``infer``: forward only in ``eval()`` under ``torch.inference_mode()``, batch 1 / 16 / 256.
* ``calibrate``: measure and print ``auto``'s decisions for a grid of calls on this machine.
* ``overhead``: ``auto`` against ``nn.Linear`` from batch 1 up, layer sizes 256–4096, density
  1–50 % (the worst ratio printed), and what a call costs around the kernel (:mod:`.overhead`).
* ``mlp``: one training epoch of a sparse MLP, or of a hub entry's model (:mod:`.mlp`).
* ``coding``: dictionary learning against scikit-learn and SPAMS (:mod:`.coding`).
* ``learn``: time to a structure at the paper's size, the learner's defaults against v0.1's
  settings and SPAMS (:mod:`.learn`).

Each measures, prints a table and writes JSON (``--json``); every result names the machine,
its CPU flags and the ``cpu`` kernels' build, since a CPU speed holds for one instruction set.

More, each with its own ``--help``:

* ``compile-time``: a converted timm model's training step eager against ``torch.compile``,
  and the compile's time (:mod:`.compile_time`).
* ``convert-time``: converting timm models by method, time and peak memory (:mod:`.convert_time`).
* ``page-faults``: what a fresh output tensor costs on this machine (:mod:`.page_faults`).
* ``markdown BENCHMARKS.md RESULT.json ...``: rewrite each result's BENCHMARKS.md section
  (:mod:`.markdown`; nothing else here edits files of the repository).
* ``prior kernels-*.json``: rebuild the prior ``backend='auto'`` ships with (:mod:`.prior`).

The code of every benchmark lives here; their results in ``benchmarks/*.json``, their tables
and analysis in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import hub
from ..checks import arg_density as density
from ..checks import arg_fraction as fraction
from ..checks import arg_nonnegative as nonnegative
from ..checks import arg_positive as positive
from ..filesystem import write_json
from ..ops import BACKENDS, calibrate
from . import compile_time, convert_time, kernels, markdown, overhead, page_faults, prior
from .coding import run_coding
from .learn import SETTINGS as LEARN_SETTINGS
from .learn import run_learn
from .mlp import run_mlp
from .overhead import run_overhead
from .timing import machine

__all__ = ["machine", "main", "RENDERERS", "TOOLS"]


RENDERERS = markdown.RENDERERS
"""The Markdown of a result, by its ``"benchmark"`` field (what ``structlearn bench markdown``
writes into BENCHMARKS.md)."""

TOOLS = {"compile-time": compile_time, "convert-time": convert_time, "page-faults": page_faults,
         "markdown": markdown, "prior": prior}
"""Subcommands with parsers of their own (each module's ``parser()``): ``structlearn bench
NAME ...`` runs ``TOOLS[NAME].main``."""


def _shape(s: str) -> tuple[int, int, int]:
    try:
        b, i, o = (int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be 'batch,in,out', got {s!r}") from None
    if min(b, i, o) < 1:
        raise argparse.ArgumentTypeError(f"shape must be three positive ints 'batch,in,out', got {s!r}")
    return b, i, o


def _layer(s: str) -> tuple[int, int]:
    try:
        i, o = (int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer must be 'in,out', got {s!r}") from None
    if min(i, o) < 1:
        raise argparse.ArgumentTypeError(f"layer must be two positive ints 'in,out', got {s!r}")
    return i, o


def _fixed(s: str) -> tuple[int, int, float]:
    try:
        i, o, d = s.split(",")
        return _layer(f"{i},{o}") + (density(d),)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected 'in,out,density', got {s!r}") from None


def _grid_options(q: argparse.ArgumentParser, json_default: str, repeats: int) -> None:
    q.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    q.add_argument("--shapes", type=_shape, nargs="+", default=None, metavar="B,IN,OUT",
                   help="default: the grid of the device")
    q.add_argument("--densities", type=density, nargs="+", default=None,
                   help="default: the grid of the device")
    q.add_argument("--repeats", type=positive(int), default=repeats,
                   help="timed rounds per measurement (the median kept)")
    q.add_argument("--json", type=Path, default=Path(json_default), help="result file")
    q.add_argument("--tag", default="", help="suffix of the result's BENCHMARKS.md section key")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structlearn bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = p.add_subparsers(dest="what")
    k = sub.add_parser("kernels", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="every backend and auto vs nn.Linear (default)")
    for q in (p, k):  # `bench` alone runs kernels
        _grid_options(q, "runs/bench/kernels.json", 5)
        q.add_argument("--blocks", type=int, nargs="+", default=None,
                       help="block sizes b (b x b blocks); 0 = unstructured (default: 0 32 on "
                            "cpu, 0 16 32 64 on cuda)")
        q.add_argument("--backends", nargs="+", default=None,
                       help="only these backends (default: every available one, then auto)")
        q.add_argument("--peers", action="store_true",
                       help="also time torch's CSR with autograd and SparseProp (if installed)")
    inf = sub.add_parser("infer", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="forward only, eval + inference_mode, batch 1/16/256")
    _grid_options(inf, "runs/bench/infer.json", 20)
    inf.add_argument("--backends", nargs="+", default=None,
                     help="only these backends (default: every available one, then auto)")
    inf.add_argument("--peers", action="store_true",
                     help="also time torch's CSR and SparseProp (if installed)")
    cal = sub.add_parser("calibrate", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="measure and print auto's decisions on this machine")
    _grid_options(cal, "runs/bench/calibrate.json", calibrate.REPEATS)
    cal.add_argument("--blocks", type=int, nargs="+", default=[0],
                     help="block sizes b (b x b blocks); 0 = unstructured")
    cal.add_argument("--modes", nargs="+", choices=("train", "infer"), default=["train", "infer"],
                     help="training (forward + backward) and/or inference calls")
    cal.add_argument("--keep", action="store_true",
                     help="reuse decisions already cached instead of measuring them again")
    ov = sub.add_parser("overhead", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="auto vs nn.Linear at every size and batch, and the "
                                         "fixed cost of a call around the kernel")
    ov.add_argument("--layers", type=_layer, nargs="+", default=overhead.LAYERS, metavar="IN,OUT",
                    help="layer shapes (default: %(default)s)")
    ov.add_argument("--batches", type=positive(int), nargs="+", default=overhead.BATCHES,
                    help="inference batches (default: %(default)s)")
    ov.add_argument("--train-batches", type=positive(int), nargs="+",
                    default=overhead.TRAIN_BATCHES, help="forward+backward batches (default: "
                                                         "%(default)s)")
    ov.add_argument("--densities", type=density, nargs="+", default=overhead.DENSITIES,
                    help="layer densities")
    ov.add_argument("--runs", type=positive(int), default=5,
                    help="interleaved runs per cell, the median kept (default: %(default)s)")
    ov.add_argument("--max-work", type=positive(int), default=overhead.MAX_WORK,
                    help="leave out cells with batch*in*out above this (default: %(default)s)")
    ov.add_argument("--fixed", type=_fixed, nargs="+", default=overhead.FIXED,
                    metavar="IN,OUT,DENSITY", help="layers of the batch-1 fixed-cost table "
                                                   "(default: %(default)s)")
    ov.add_argument("--json", type=Path, default=Path("runs/bench/overhead.json"),
                    help="result file")
    ov.add_argument("--tag", default="", help="suffix of the result's BENCHMARKS.md section key")
    mp = sub.add_parser("mlp", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="one training epoch of a sparse MLP vs nn.Linear")
    mp.add_argument("--device", default="cpu", help="cpu or cuda")
    mp.add_argument("--sizes", type=positive(int), nargs="+", default=[3072, 4096, 4096, 10],
                    help="layer sizes: in, hidden..., out")
    mp.add_argument("--densities", type=density, nargs="+", default=[0.01, 0.05, 0.10, 0.25],
                    help="densities of the sparse layers")
    mp.add_argument("--blocks", type=int, nargs="+", default=[0, 32],
                    help="block sizes b (b x b blocks); 0 = unstructured")
    mp.add_argument("--backend", default="auto", choices=BACKENDS,
                    help="backend of the sparse layers (default auto)")
    mp.add_argument("--n", type=positive(int), default=10240, help="samples in the epoch")
    mp.add_argument("--batch-size", type=positive(int), default=256, help="samples per step")
    mp.add_argument("--hub", default=None, metavar="NAME",
                    help="time this hub entry's model against itself with nn.Linear layers "
                         "instead of the MLP (--sizes, --densities, --blocks unused)")
    mp.add_argument("--dynamic", choices=["rigl", "set"], default=None,
                    help="also train each unstructured sparse MLP with its masks updated this "
                         "way (DynamicSparsity)")
    mp.add_argument("--update-every", type=positive(int), default=10,
                    help="with --dynamic: steps between mask updates (RigL's paper: 100; the "
                         "default puts several updates in one benchmark epoch)")
    mp.add_argument("--json", type=Path, default=Path("runs/bench/mlp.json"), help="result file")
    mp.add_argument("--tag", default="", help="suffix of the result's BENCHMARKS.md section key")
    c = sub.add_parser("coding", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="dictionary learning vs scikit-learn (and SPAMS, where "
                                      "installed) on MNIST")
    c.add_argument("--device", default="cpu", help="cpu or cuda")
    c.add_argument("--n", type=positive(int), default=20000, help="MNIST training images")
    c.add_argument("--atoms", type=positive(int), default=256, help="dictionary atoms K")
    c.add_argument("--lam", type=nonnegative, default=0.1, help="the L1 penalty λ")
    c.add_argument("--passes", type=positive(int), default=3, help="passes over the data")
    c.add_argument("--batch-size", type=positive(int), default=256, help="samples per step")
    c.add_argument("--data-root", default=None, help="data folder (default: $STRUCTLEARN_DATA)")
    c.add_argument("--skip-sklearn", action="store_true", help="time ours only (e.g. on a GPU)")
    c.add_argument("--skip-spams", action="store_true",
                   help="leave out SPAMS even where it is installed (pip install spams-bin)")
    c.add_argument("--json", type=Path, default=Path("runs/bench/coding.json"), help="result file")
    lb = sub.add_parser("learn", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="time to a structure: the learner's defaults vs v0.1's "
                                      "settings and SPAMS, on whitened images")
    lb.add_argument("--dataset", default="cifar10",
                    choices=["cifar10", "mnist", "fashion-mnist", "digits"], help="images learned from")
    lb.add_argument("--data-root", default=None, help="data folder (default $STRUCTLEARN_DATA)")
    lb.add_argument("--n", type=positive(int), default=45000, help="training images")
    lb.add_argument("--held-out", type=positive(int), default=2000,
                    help="other images the objective is scored on")
    lb.add_argument("--atoms", type=positive(int), default=1600, help="K, the layer's units")
    lb.add_argument("--group-size", type=positive(int), default=4, help="units pooled together")
    lb.add_argument("--density", type=density, default=0.05, help="the layer's density")
    lb.add_argument("--eps", type=positive(float), default=8.0, help="ZCA ε")
    lb.add_argument("--active-fraction", type=fraction, default=None,
                    help="the learner's active_fraction (default: its default)")
    lb.add_argument("--settings", nargs="+", choices=list(LEARN_SETTINGS),
                    default=list(LEARN_SETTINGS), help="the learners timed")
    lb.add_argument("--seed", type=int, default=0, help="random seed")
    lb.add_argument("--skip-spams", action="store_true",
                    help="leave out SPAMS even where it is installed (pip install spams-bin)")
    lb.add_argument("--json", type=Path, default=Path("runs/bench/learn.json"), help="result file")
    lb.add_argument("--tag", default="", help="suffix of the result's BENCHMARKS.md section key")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]].main(argv[1:])
    what = next((i for i, a in enumerate(argv) if a in RENDERERS or a in TOOLS), None)
    early = [a for a in argv[:what] if a.startswith("-") and a not in ("-h", "--help")]
    if what is not None and early:  # they would be parsed, then overridden by the subcommand's
        p.error(f"{' '.join(early)}: options go after the subcommand "
                f"(structlearn bench {argv[what]} {' '.join(early)} ...)")
    args = p.parse_args(argv)
    args.argv = argv
    if getattr(args, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine")
    gpu = getattr(args, "device", "cpu").startswith("cuda")
    if args.what == "coding":
        result, key = run_coding(args), f"coding-lam{args.lam:g}"
    elif args.what == "learn":
        result = run_learn(args)
        key = f"learn-{args.dataset}" + (f"-{args.tag}" if args.tag else "")
    elif args.what == "mlp":
        if len(args.sizes) < 3:
            p.error(f"--sizes needs at least 3 sizes (in, hidden..., out), got {args.sizes}")
        if args.hub is not None and args.hub not in hub.list():
            p.error(f"--hub {args.hub!r}: no such entry; available: {hub.list()}")
        if args.hub is not None and args.dynamic:
            p.error(f"--dynamic {args.dynamic}: times the MLP's masks, not a hub entry's (--hub)")
        result = run_mlp(args)
        key = ("mlp" if args.hub is None else f"epoch-{args.hub}") + (
            "" if args.backend == "auto" else f"-{args.backend}") + (
            f"-{args.dynamic}" if args.dynamic else "") + (f"-{args.tag}" if args.tag else "")
    elif args.what == "overhead":
        result = run_overhead(args)
        key = "overhead" + (f"-{args.tag}" if args.tag else "")
    elif args.what == "infer":
        args.shapes = args.shapes or kernels.INFER_SHAPES
        args.densities = args.densities or kernels.DENSITIES
        result = kernels.run_infer(args)
        key = "infer" + (f"-{args.tag}" if args.tag else "")
    elif args.what == "calibrate":
        args.shapes = args.shapes or (kernels.GPU_SHAPES if gpu else
                                      kernels.CPU_SHAPES + kernels.INFER_SHAPES)
        args.densities = args.densities or (kernels.GPU_DENSITIES if gpu else kernels.DENSITIES)
        if any(b < 0 for b in args.blocks):
            p.error(f"--blocks must be >= 0, got {args.blocks}")
        result = kernels.run_calibrate(args)
        key = "calibrate" + (f"-{args.tag}" if args.tag else "")
    else:
        args.shapes = args.shapes or (kernels.GPU_SHAPES if gpu else kernels.CPU_SHAPES)
        args.densities = args.densities or (kernels.GPU_DENSITIES if gpu else kernels.DENSITIES)
        args.blocks = args.blocks if args.blocks is not None else ([0, 16, 32, 64] if gpu else [0, 32])
        if any(b < 0 for b in args.blocks):
            p.error(f"--blocks must be >= 0, got {args.blocks}")
        result = kernels.run_kernels(args)
        key = "kernels" + (f"-{args.tag}" if args.tag else "")
    result["section"] = f"{key}-{torch.device(args.device).type}"  # its BENCHMARKS.md section
    write_json(args.json, result)
    print(f"wrote {args.json} (BENCHMARKS.md: structlearn bench markdown BENCHMARKS.md "
          f"{args.json})")
    return 0
