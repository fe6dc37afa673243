"""``backend='auto'``: pick ``csr`` below the measured crossover density, else ``dense``.

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
    """The shipped crossover table: ``{device_type: {dtype_name: max_csr_density}}``."""
    if not TABLE_PATH.exists():
        return {}
    return json.loads(TABLE_PATH.read_text()).get("crossover", {})


# Read once at import: ``choose`` runs inside torch.compile traces, which must not do file I/O.
TABLE = load_table()


def choose(device: torch.device, dtype: torch.dtype, density: float) -> str:
    """The backend ``auto`` uses for a weight of this ``density`` on ``device`` in ``dtype``."""
    entry = TABLE.get(device.type, {})
    name = str(dtype).removeprefix("torch.")
    # MKL computes bf16/fp16 sparse products in float32, so the float32 crossover applies.
    limit = entry.get(name, entry.get("float32") if device.type == "cpu" else None)
    return "csr" if limit is not None and density <= limit else "dense"

