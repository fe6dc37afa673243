import os

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


def devices():
    """CPU always; CUDA as a `cuda`-marked parameter (skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
