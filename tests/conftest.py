import importlib.util
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")


@pytest.fixture(autouse=True, scope="session")
def _calibration_in_a_temporary_folder(tmp_path_factory):
    """``auto`` calibrates as it does for users, but into a folder of this test session: the
    suite neither reads decisions an earlier run cached nor writes into the user's cache."""
    from torch_structlearn.ops import calibrate

    calibrate.DIRECTORY = tmp_path_factory.mktemp("calibration")
    calibrate.clear()
    yield
    calibrate.DIRECTORY = None


@pytest.fixture(autouse=True)
def _fresh_compile_caches():
    """Each test compiles from scratch: torch.compile keeps at most 8 graphs per function, and
    the layer's ``forward`` is one function for every layer every test compiles (a test's
    recompilations must not depend on which tests ran before it)."""
    yield
    if "torch._dynamo" in __import__("sys").modules:
        torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def require_data(folder: str) -> None:
    """Skip the calling test when ``$STRUCTLEARN_DATA/<folder>`` is missing; under CI (CI=true)
    a missing data set fails it instead, so CI cannot pass by skipping the real-data checks."""
    from torch_structlearn.datasets import data_root

    if not (data_root() / folder).is_dir():
        msg = f"{folder} not found under {data_root()} (set STRUCTLEARN_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture
def load_recipe(monkeypatch):
    """``load_recipe("exp_single.py")`` imports that recipe script as a fresh module, with
    recipes/ on ``sys.path`` as when it runs. Importing the recipes' ``common`` turns
    flush-denormal on for the importing thread (recipes/common.py), so it is turned off again
    after the test."""
    monkeypatch.syspath_prepend(str(RECIPES))

    def load(script: str, name: str | None = None):
        spec = importlib.util.spec_from_file_location(name or Path(script).stem, RECIPES / script)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    yield load
    torch.set_flush_denormal(False)


def devices():
    """CPU always; CUDA as a `cuda`-marked parameter (skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
