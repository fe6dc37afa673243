"""``backend='auto'``: pick the sparse kernel below the measured crossover density, else ``dense``.

The sparse kernel is ``csr`` (torch's CSR/BSR) except for block layers on CUDA, where it is
``triton``. Entries are per device type and dtype, and per block shape for block layers
(key ``"float32"`` or ``"float32/b32x32"``).

The crossover table ``crossover.json`` beside this file is written by
``python -m torch_structlearn.bench --write-crossover`` (never edited by hand). Devices or
dtypes without a measured entry use ``dense``: without a measurement there is no evidence the
sparse path is faster, and dense is never slower than ``nn.Linear`` by more than its scatter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TABLE_PATH = Path(__file__).with_name("crossover.json")


def load_table() -> dict:
    """The shipped crossover table: ``{device_type: {key: max_sparse_density}}``."""
    if not TABLE_PATH.exists():
        return {}
    return json.loads(TABLE_PATH.read_text()).get("crossover", {})


# Read once at import: ``choose`` runs inside torch.compile traces, which must not do file I/O.
TABLE = load_table()


def key(dtype: torch.dtype, block: tuple[int, int] | None = None) -> str:
    """The table key of a dtype (and block shape): ``"float32"``, ``"bfloat16/b32x32"``."""
    name = str(dtype).removeprefix("torch.")
    return name if block is None else f"{name}/b{block[0]}x{block[1]}"


def sparse_backend(device: torch.device, block: tuple[int, int] | None) -> str:
    """The sparse kernel for this device and kind of layer."""
    return "triton" if block is not None and device.type == "cuda" else "csr"


def choose(device: torch.device, dtype: torch.dtype, density: float,
           block: tuple[int, int] | None = None) -> str:
    """The backend ``auto`` uses for a weight of this ``density`` (and ``block`` shape) on
    ``device`` in ``dtype``."""
    entry = TABLE.get(device.type, {})
    limit = entry.get(key(dtype, block))
    if limit is None and device.type == "cpu":
        # MKL computes bf16/fp16 sparse products in float32, so the float32 crossover applies.
        limit = entry.get(key(torch.float32, block))
    return sparse_backend(device, block) if limit is not None and density <= limit else "dense"
