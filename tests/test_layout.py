"""The package's layout rules (issue [layers]): no import of one of our own modules inside a
function (they hid import cycles; `lint-imports`, run by `make lint`, checks the layers)."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "torch_structlearn"


def _function_level_own_imports():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                own = isinstance(node, ast.ImportFrom) and (
                    node.level > 0 or (node.module or "").startswith("torch_structlearn"))
                own = own or (isinstance(node, ast.Import)
                              and any(a.name.startswith("torch_structlearn") for a in node.names))
                if own:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} in {fn.name}()")
    return found


def test_no_function_level_imports_of_our_own_modules():
    assert _function_level_own_imports() == []


def test_every_subpackage_is_in_the_wheel_list():
    """pyproject.toml lists the packages explicitly (hub/ is mapped into the package): a new
    subpackage missing from the list would be missing from the wheel."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_every_module_is_in_the_import_layers():
    """The import-linter contract (pyproject.toml) names every top-level module and subpackage,
    so a new one cannot escape the layering."""
    import pytest

    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    layers = cfg["tool"]["importlinter"]["contracts"][0]["layers"]
    listed = {m.strip() for layer in layers for m in layer.split("|")}
    found = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    found |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert found <= listed, sorted(found - listed)


@pytest.mark.parametrize("old, new, prefix", [
    ("torch_structlearn.csr", "torch_structlearn.connectivity", ""),
    ("torch_structlearn.data", "torch_structlearn.loaders", ""),
    ("torch_structlearn.files", "torch_structlearn.filesystem", ""),
    ("torch_structlearn.kernel_caches", "torch_structlearn.ops.kernel_caches", ""),
    ("torch_structlearn.argtypes", "torch_structlearn.checks", "arg_"),
])
def test_renamed_modules_still_import_with_a_deprecation_warning(old, new, prefix):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    assert module.__all__
    assert all(getattr(module, name) is getattr(target, prefix + name) for name in module.__all__)
