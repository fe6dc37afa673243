"""Rewrite sections of BENCHMARKS.md from benchmark JSON files (what ``structlearn bench``
writes): each result replaces the block between ``<!-- bench:SECTION -->`` and
``<!-- /bench:SECTION -->`` (appended when missing), SECTION being the result's ``"section"``
(older files: the file's name without ``.json``). The text outside the markers — the analysis —
is kept.

    structlearn bench markdown BENCHMARKS.md benchmarks/kernels-avx2-cpu.json [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..filesystem import write_atomic
from . import kernels
from .coding import coding_markdown
from .learn import learn_markdown
from .mlp import mlp_markdown
from .overhead import overhead_markdown

RENDERERS = {"kernels": kernels.markdown, "infer": kernels.infer_markdown,
             "calibrate": kernels.calibrate_markdown, "mlp": mlp_markdown,
             "coding": coding_markdown, "learn": learn_markdown, "overhead": overhead_markdown}
"""The Markdown of a result, by its ``"benchmark"`` field."""


def update(path: Path, key: str, body: str) -> None:
    """Replace the block between ``<!-- bench:key -->`` and ``<!-- /bench:key -->`` of ``path``."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(path, text.encode())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="structlearn bench markdown",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("markdown", type=Path, help="the file to update, e.g. BENCHMARKS.md")
    p.add_argument("results", type=Path, nargs="+", help="JSON written by `structlearn bench`")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for f in args.results:
        try:
            result = json.loads(f.read_text())
            render = RENDERERS[result["benchmark"]]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            p.error(f"{f}: not a `structlearn bench` result ({type(e).__name__}: {e})")
        key = result.get("section") or f.stem
        update(args.markdown, key, render(result))
        print(f"{args.markdown}: section {key} from {f}")
    return 0

