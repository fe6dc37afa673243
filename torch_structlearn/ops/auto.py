"""``backend='auto'``: the backend measured fastest for this kind of call on this machine.

**Calibrated** (the default, :mod:`~torch_structlearn.ops.calibrate`): the first call of a kind
(device, dtype, block, shape and density buckets, training or inference) times every usable
backend on it and keeps the fastest, in memory and on disk, per machine.

**The shipped prior** (``crossover.json`` beside this file), used when calibration is off
(``STRUCTLEARN_CALIBRATE=0``) or the call's shape is not known (dynamic shapes in a
``torch.compile`` trace; with static shapes a trace decides as an eager call would:
``sparse_linear._choice_in_trace``): below a measured crossover density the sparse kernel, above it
``dense``. Entries are per device and, on the CPU, per instruction set of the ``cpu`` kernels
(``"cpu/avx2"``, ``"cpu/avx512"``; a crossover measured on one instruction set says nothing
about another), then per dtype and block shape (key ``"float32"`` or ``"float32/b32x32"``).
The sparse kernel is ``cpu`` (the fused kernels) on the CPU, ``triton`` for block layers on
CUDA and ``csr`` (cuSPARSE) for unstructured layers on CUDA. Where the ``cpu`` kernels did not
compile (no C++ compiler), ``csr`` (MKL) stands in for them with its own measured crossover
(keys ``"float32@csr"``). A device, instruction set or dtype without a measured entry uses
``dense``: without a measurement there is no evidence the sparse path is faster.

Each entry has a crossover per measured ``(batch, in, out)`` shape (``by_shape``) and the
smallest of them (``crossover``). A call with a known shape uses the measured shape nearest to
it (distance: summed ``|log|`` ratios of batch, in and out); without a shape, the smallest.
The table is written by ``structlearn bench prior benchmarks/kernels-*.json``
(never edited by hand).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from . import calibrate, cpu

TABLE_PATH = Path(__file__).with_name("crossover.json")


def load_table() -> dict:
    """The shipped crossover table: ``{table_device: {key: max_sparse_density}}``."""
    return _read().get("crossover", {})


def load_by_shape() -> dict:
    """Per measured shape: ``{table_device: {key: {"BxIxO": max_sparse_density}}}``."""
    return _read().get("by_shape", {})


def load_sources() -> dict:
    """Per table device, the machine (and benchmark file) its entries were measured on."""
    return _read().get("machines", {})


def _read() -> dict:
    """The table file as a dict; ``{}`` when there is none, and ``{}`` with a warning (every
    layer then dense) when it is not a readable JSON object, so that a damaged file never stops
    ``import torch_structlearn``."""
    if not TABLE_PATH.exists():
        return {}
    try:
        table = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            raise ValueError(f"a JSON {type(table).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        warnings.warn(f"ignoring the unreadable crossover table {TABLE_PATH} ({e}): backend='auto' "
                      f"uses 'dense' everywhere; regenerate it from a checkout with "
                      f"`structlearn bench prior benchmarks/kernels-*.json`", stacklevel=2)
        return {}
    return table


# Read once at import: ``prior`` runs inside torch.compile traces, which must not do file I/O.
TABLE = load_table()
BY_SHAPE = load_by_shape()


def table_device(device: torch.device) -> str:
    """The table's device key: ``"cpu/<isa>"`` (the ``cpu`` kernels' instruction set, or the
    CPU's where they did not build) or the device type (``"cuda"``)."""
    return f"cpu/{cpu.cpu_isa()}" if device.type == "cpu" else device.type


def key(dtype: torch.dtype, block: tuple[int, int] | None = None, stand_in: bool = False) -> str:
    """The table key of a dtype (and block shape): ``"float32"``, ``"bfloat16/b32x32"``; with
    ``stand_in``, the entry measured for ``csr`` where it stands in for the preferred kernel
    (``"float32@csr"``: CPU layers without a C++ compiler)."""
    name = str(dtype).removeprefix("torch.")
    name = name if block is None else f"{name}/b{block[0]}x{block[1]}"
    return name + "@csr" if stand_in else name


def preferred_backend(device: torch.device, block: tuple[int, int] | None) -> str:
    """The sparse kernel meant for this device and kind of layer: ``cpu`` on the CPU,
    ``triton`` for block layers on CUDA, else ``csr``."""
    if device.type == "cpu":
        return "cpu"
    return "triton" if block is not None and device.type == "cuda" else "csr"


def stand_in_for(preferred: str) -> str | None:
    """The backend that runs in place of ``preferred`` where it cannot (``csr`` for ``cpu``,
    whose kernels need a C++ compiler), measured under its own ``@csr`` table entries."""
    return "csr" if preferred == "cpu" else None


def sparse_backend(device: torch.device, block: tuple[int, int] | None) -> str:
    """The sparse kernel the prior uses here: the preferred one, or its stand-in when the
    preferred kernels did not compile."""
    preferred = preferred_backend(device, block)
    return stand_in_for(preferred) if preferred == "cpu" and not cpu.available() else preferred


def _entry(device: torch.device, dtype: torch.dtype, block) -> str | None:
    """The table key that applies, or None when nothing was measured (for the kernel that
    will run: a ``csr`` standing in for ``cpu`` reads its own ``@csr`` entry)."""
    entry = TABLE.get(table_device(device), {})
    stand_in = sparse_backend(device, block) != preferred_backend(device, block)
    if key(dtype, block, stand_in) in entry:
        return key(dtype, block, stand_in)
    low = dtype in (torch.float16, torch.bfloat16)
    if device.type == "cpu" and low and key(torch.float32, block, stand_in) in entry:
        # the CPU kernels compute bf16/fp16 in float32, so the float32 crossover applies
        return key(torch.float32, block, stand_in)
    return None


def _nearest(shape: tuple[int, int, int], measured: dict) -> float | None:
    def distance(name: str) -> float:
        return sum(abs(math.log(max(a, 1) / max(int(b), 1))) for a, b in zip(shape, name.split("x"), strict=True))

    return measured[min(measured, key=distance)]


def limits(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None = None) -> list:
    """Every crossover density the prior may use for this layer (one per measured shape);
    empty when nothing was measured. Layers use it to cache what each possible backend needs."""
    k = _entry(device, dtype, block)
    if k is None:
        return []
    dev = table_device(device)
    return [TABLE[dev][k], *BY_SHAPE.get(dev, {}).get(k, {}).values()]


def _pick(device: torch.device, block, density: float, limit: float | None) -> str:
    return sparse_backend(device, block) if limit is not None and density <= limit else "dense"


def reachable(device: torch.device, dtype: torch.dtype, density: float,
              block: tuple[int, int] | None = None) -> set[str]:
    """The backends the prior may return for this layer at some input shape (what a layer
    caches for when it does not calibrate)."""
    return {_pick(device, block, density, lim) for lim in limits(device, dtype, block)} or {"dense"}


def prior(device: torch.device, dtype: torch.dtype, density: float,
          block: tuple[int, int] | None = None, shape: tuple[int, int, int] | None = None) -> str:
    """The shipped table's backend for a weight of this ``density`` (and ``block`` shape) on
    ``device`` in ``dtype``, for an input of ``shape = (batch, in, out)`` when known."""
    k = _entry(device, dtype, block)
    if k is None:
        return "dense"
    dev = table_device(device)
    limit = TABLE[dev][k]
    measured = BY_SHAPE.get(dev, {}).get(k)
    if shape is not None and measured:
        limit = _nearest(shape, measured)
    return _pick(device, block, density, limit)


def choose(device: torch.device, dtype: torch.dtype, density: float,
           block: tuple[int, int] | None = None, shape: tuple[int, int, int] | None = None, *,
           training: bool = True, candidates: Callable[[], list[str]] | None = None,
           make_runs: Callable[[list[str]], dict[str, Callable[[], None]]] | None = None) -> str:
    """The backend ``auto`` uses: calibrated among ``candidates()`` (timing ``make_runs``; see
    :func:`~torch_structlearn.ops.calibrate.decide`; the prior's pick is kept unless another is
    measured clearly faster) when calibration is on and the call's shape is known; inside a
    ``torch.compile`` trace the decision this process holds for such a call, if any (traces of
    layers decide through ``sparse_linear._choice_in_trace``, which also measures); else the
    shipped :func:`prior`."""
    if shape is not None and candidates is not None and calibrate.enabled():
        if not torch.compiler.is_compiling() and make_runs is not None:
            return calibrate.decide(device, dtype, block, shape, density, training, candidates,
                                    make_runs, lambda: prior(device, dtype, density, block, shape))
        made = calibrate.recall(device, dtype, block, shape, density, training, candidates)
        if made is not None:
            return made
    return prior(device, dtype, density, block, shape)
