"""The README's and the documentation's examples: every Python block marked
``<!-- tests/test_readme.py runs this block -->`` runs as written; every other Python block at
least parses (recipes, long commands and fragments are shown, not run)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- tests/test_readme.py runs this block -->\n```python\n"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(marked: bool):
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"(<!-- tests/test_readme.py runs this block -->\n)?```python\n(.*?)```",
                             text, re.S):
            if bool(m.group(1)) == marked:
                line = text[: m.start()].count("\n") + 1
                found.append(pytest.param(m.group(2), id=f"{page.name}:{line}"))
    return found


RUN, SHOWN = _blocks(True), _blocks(False)


def test_the_marked_blocks_are_found():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(MARK) == 3  # the README's three quick starts
    assert len(RUN) >= 4 and SHOWN


@pytest.mark.parametrize("code", RUN)
def test_marked_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quick starts save files in the working folder
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    if "same" in namespace:  # the quick start's save/load round trip
        import torch

        stack, same = namespace["stack"], namespace["same"]
        x = torch.rand(3, stack.in_features)
        torch.testing.assert_close(same(x), stack(x))
    if "fresh" in namespace:  # convert, save, and the structures applied to a fresh model
        import torch

        from torch_structlearn import StructLearnedLinear

        model, fresh = namespace["model"], namespace["fresh"]
        assert isinstance(fresh[0], StructLearnedLinear)
        x = torch.randn(5, 64)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), model(x))
            x8 = torch.randn(8, 64)  # the exported program (traced at batch 8)
            torch.testing.assert_close(namespace["program"].module()(x8), model(x8))


@pytest.mark.parametrize("code", SHOWN)
def test_every_other_block_parses(code):
    ast.parse(code)
