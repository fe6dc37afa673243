"""The README's self-contained examples run as written (the blocks marked for this test)."""

import re
from pathlib import Path

import pytest

MARK = "<!-- tests/test_readme.py runs this block -->\n```python\n"
README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(re.escape(MARK) + r"(.*?)```", README, re.S)


def test_the_marked_blocks_are_found():
    assert len(BLOCKS) == README.count(MARK) == 2


@pytest.mark.parametrize("code", BLOCKS, ids=[b.splitlines()[-1][:40] for b in BLOCKS])
def test_readme_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quick start saves stack.safetensors in the working folder
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    if "same" in namespace:  # the quick start's save/load round trip
        import torch

        stack, same = namespace["stack"], namespace["same"]
        x = torch.rand(3, stack.in_features)
        torch.testing.assert_close(same(x), stack(x))
