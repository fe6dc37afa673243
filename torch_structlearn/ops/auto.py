"""``backend='auto'``: pick the sparse kernel below the measured crossover density, else ``dense``.

The sparse kernel is ``cpu`` (the fused kernels) on the CPU, ``triton`` for block layers on
CUDA and ``csr`` (cuSPARSE) for unstructured layers on CUDA. Where the ``cpu`` kernels did not
compile (no C++ compiler), ``csr`` (MKL) stands in for them with its own measured crossover
(keys ``"float32@csr"``, ``"float32/b32x32@csr"``), which is lower: ``csr`` is slower (see
BENCHMARKS.md).
Entries are per device type and dtype, and per block shape for block layers (key
``"float32"`` or ``"float32/b32x32"``).

The crossover table ``crossover.json`` beside this file is written by
``python -m torch_structlearn.bench --write-crossover`` (never edited by hand). Devices or
dtypes without a measured entry use ``dense``: without a measurement there is no evidence the
sparse path is faster, and dense is never slower than ``nn.Linear`` by more than its scatter.

Each entry has a crossover per measured ``(batch, in, out)`` shape (``by_shape``) and the
smallest of them (``crossover``). A call with a known shape uses the measured shape nearest to
it (distance: summed ``|log|`` ratios of batch, in and out); without a shape, the smallest.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from . import cpu

TABLE_PATH = Path(__file__).with_name("crossover.json")


def load_table() -> dict:
    """The shipped crossover table: ``{device_type: {key: max_sparse_density}}``."""
    return _read().get("crossover", {})


def load_by_shape() -> dict:
    """Per measured shape: ``{device_type: {key: {"BxIxO": max_sparse_density}}}``."""
    return _read().get("by_shape", {})


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
                      f"uses 'dense' everywhere; regenerate it with `python -m "
                      f"torch_structlearn.bench crossover benchmarks/kernels-*.json`", stacklevel=2)
        return {}
    return table


# Read once at import: ``choose`` runs inside torch.compile traces, which must not do file I/O.
TABLE = load_table()
BY_SHAPE = load_by_shape()


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
    """The sparse kernel ``auto`` uses here: the preferred one, or its stand-in when the
    preferred kernels did not compile."""
    preferred = preferred_backend(device, block)
    return stand_in_for(preferred) if preferred == "cpu" and not cpu.available() else preferred


def _entry(device: torch.device, dtype: torch.dtype, block) -> str | None:
    """The table key that applies, or None when nothing was measured (for the kernel that
    will run: a ``csr`` standing in for ``cpu`` reads its own ``@csr`` entry)."""
    entry = TABLE.get(device.type, {})
    stand_in = sparse_backend(device, block) != preferred_backend(device, block)
    if key(dtype, block, stand_in) in entry:
        return key(dtype, block, stand_in)
    low = dtype in (torch.float16, torch.bfloat16)
    if device.type == "cpu" and low and key(torch.float32, block, stand_in) in entry:
        # MKL computes bf16/fp16 sparse products in float32, so the float32 crossover applies.
        return key(torch.float32, block, stand_in)
    return None


def _nearest(shape: tuple[int, int, int], measured: dict) -> float | None:
    def distance(name: str) -> float:
        return sum(abs(math.log(max(a, 1) / max(int(b), 1))) for a, b in zip(shape, name.split("x"), strict=True))

    return measured[min(measured, key=distance)]


def limits(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None = None) -> list:
    """Every crossover density ``choose`` may use for this layer (one per measured shape);
    empty when nothing was measured. Layers use it to cache what each possible backend needs."""
    k = _entry(device, dtype, block)
    if k is None:
        return []
    return [TABLE[device.type][k], *BY_SHAPE.get(device.type, {}).get(k, {}).values()]


def _pick(device: torch.device, block, density: float, limit: float | None) -> str:
    return sparse_backend(device, block) if limit is not None and density <= limit else "dense"


def reachable(device: torch.device, dtype: torch.dtype, density: float,
              block: tuple[int, int] | None = None) -> set[str]:
    """The backends ``choose`` may return for this layer at some input shape (what a layer
    caches for)."""
    return {_pick(device, block, density, lim) for lim in limits(device, dtype, block)} or {"dense"}


def choose(device: torch.device, dtype: torch.dtype, density: float,
           block: tuple[int, int] | None = None, shape: tuple[int, int, int] | None = None) -> str:
    """The backend ``auto`` uses for a weight of this ``density`` (and ``block`` shape) on
    ``device`` in ``dtype``, for an input of ``shape = (batch, in, out)`` when known."""
    k = _entry(device, dtype, block)
    if k is None:
        return "dense"
    limit = TABLE[device.type][k]
    measured = BY_SHAPE.get(device.type, {}).get(k)
    if shape is not None and measured:
        limit = _nearest(shape, measured)
    return _pick(device, block, density, limit)
