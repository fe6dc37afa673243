"""The structure-file fuzzer (tests/_fuzz_files.py): mutated files loaded in worker processes.
No case may crash, hang, raise anything but StructureFileError (naming the file), blow up the
memory, or load a corrupted file as something else."""

import pytest

from tests import _fuzz_files


def _check(summary):
    assert summary["failures"] == [], summary["failures"][:5]
    families = summary["by_family"]
    assert set(families) == {"truncate", "flip", "insert", "table", "indices", "header"}
    assert sum(families["indices"].values()) == families["indices"].get("error", 0)


def test_fuzz_structure_files():
    _check(_fuzz_files.run(1000, seed=1))


@pytest.mark.slow
def test_fuzz_structure_files_10000():
    _check(_fuzz_files.run(10_000, seed=2))
