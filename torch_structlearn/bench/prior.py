"""Rebuild the prior ``backend='auto'`` ships with, ``torch_structlearn/ops/crossover.json``,
from ``structlearn bench kernels`` JSON files (later files win for the same entry):

    structlearn bench prior benchmarks/kernels-avx2-cpu.json [...] [--isa avx512]

``--isa`` names the instruction set of files written before results were kept per
instruction set. The prior is used where ``auto`` does not calibrate (``STRUCTLEARN_CALIBRATE=0``,
``torch.compile`` traces) and to break near-ties of the calibration (README, "auto").
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..filesystem import write_json
from ..ops import auto
from . import kernels


def read_rows(path: Path, isa: str | None) -> tuple[list[dict], dict]:
    """The rows of a ``bench kernels`` JSON file, each with its table device, and the machine;
    rows of files written before results were kept per instruction set get ``cpu/<isa>``
    (``ValueError`` without ``isa``)."""
    data = json.loads(path.read_text())
    rows, mach = data["rows"], data.get("machine", {})
    for r in rows:
        if "table_device" not in r:
            if r["device"] != "cpu":
                r["table_device"] = r["device"]
            elif isa:
                r["table_device"] = f"cpu/{isa}"
            else:
                raise ValueError(f"{path} predates per-instruction-set tables: give --isa, the "
                                 "instruction set of the machine it was measured on")
    return rows, mach


def write_tables(table: dict, by_shape: dict, cmd: str, sources: dict) -> None:
    """Write the prior (atomically) and reload it in this process; ``sources``: per table
    device, the machine its entries were measured on."""
    write_json(auto.TABLE_PATH, {"generated_by": cmd, "machines": sources,
                                 "crossover": table, "by_shape": by_shape}, indent=2)
    for live, fresh in ((auto.TABLE, auto.load_table()), (auto.BY_SHAPE, auto.load_by_shape())):
        live.clear()
        live.update(fresh)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structlearn bench prior",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", help="JSON written by `structlearn bench kernels`")
    p.add_argument("--isa", default=None, help="instruction set (avx2, avx512, ...) of old files")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    table, by_shape = auto.TABLE, auto.BY_SHAPE
    sources = dict(auto.load_sources())
    for f in args.files:
        try:
            rows, mach = read_rows(f, args.isa)
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            p.error(f"{f}: not a `bench kernels` JSON file ({e})")
        except ValueError as e:
            p.error(str(e))
        table, by_shape = kernels.update_tables(rows, table, by_shape)
        for dev in {r["table_device"] for r in rows}:
            sources[dev] = {"file": f.name, **{k: mach[k] for k in ("cpu", "threads", "torch")
                                                if k in mach}}
    write_tables(table, by_shape, shlex.join(["structlearn", "bench", "prior", *argv]),
                 sources)
    print(json.dumps({"crossover": table, "by_shape": by_shape}, indent=1))
    print(f"wrote {auto.TABLE_PATH}")
    return 0

