"""Produce a hub entry: run `structlearn learn`, keep the learned classifier, write its card.

    python recipes/hub_entry.py NAME --license "..." -- <structlearn learn arguments>

writes hub/NAME/structure.safetensors (the learned StructLearnedClassifier) and
hub/NAME/card.json (data set, exact command, hardware, density, depth, accuracies, data
license); `--hub-root DIR` writes DIR/NAME instead, and the learner's own output goes to
runs/hub/NAME beside the hub folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from torch_structlearn import hub, load  # noqa: E402
from torch_structlearn.cli import main as structlearn  # noqa: E402
from torch_structlearn.filesystem import write_atomic as _write_atomic  # noqa: E402
from torch_structlearn.filesystem import write_json as _write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: hub_entry.py NAME --license TEXT -- <structlearn learn args>", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--license", required=True)
    p.add_argument("--hub-root", default=str(ROOT / "hub"), help="folder the entry is written to")
    args = p.parse_args(argv[:cut])
    try:
        hub.check_name(args.name)
    except ValueError as e:
        p.error(str(e))
    learn_args = argv[cut + 1 :]
    hub_root = Path(args.hub_root).resolve()
    out = hub_root.parent / "runs" / "hub" / args.name  # the learner's own output, kept
    rc = structlearn(["learn", *learn_args, "--out", str(out), "--quiet"])
    if rc:
        return rc
    results = json.loads((out / "results.json").read_text())
    model = load(out / "structure.safetensors")  # checks the file before publishing it
    rows = {r["structure"]: r for r in results["results"]}
    entry = hub_root / args.name
    _write_atomic(entry / "structure.safetensors", (out / "structure.safetensors").read_bytes())
    card = {
        "name": args.name,
        "dataset": results["args"]["dataset"],
        "command": "python recipes/hub_entry.py " + shlex.join(argv),
        "hardware": machine(),
        "density": model.body.density,
        "depth": model.body.depth,
        "width": model.body.width,
        "group_size": model.body.group_size,
        "input_shape": list(model.input_shape),
        "test_accuracy": rows["learned"]["test_accuracy"],
        "baselines_same_recipe": {k: rows[k]["test_accuracy"] for k in ("random", "dense")},
        "structure_report": results["report"],
        "seed": results["args"]["seed"],
        "data_license": args.license,
        "usage": f"torch_structlearn.hub.load({args.name!r}) -> StructLearnedClassifier: "
                 "ToTensor() images (N, C, H, W) in [0, 1] -> logits",
    }
    _write_json(entry / "card.json", card)
    size = (entry / "structure.safetensors").stat().st_size
    print(f"wrote {entry} ({size / 2**20:.2f} MiB), test accuracy {card['test_accuracy']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
