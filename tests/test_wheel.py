"""The installed package is the product: a wheel built from this checkout, installed into a
temporary folder and imported from outside the checkout, has the hub entries, every CLI
subcommand's --help, and the default demo data set without scikit-learn."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMOKE = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    import torch_structlearn as tsl
    from torch_structlearn import hub
    from torch_structlearn.datasets import load_dataset
    site = Path(sys.argv[1])
    assert Path(tsl.__file__).resolve().is_relative_to(site), tsl.__file__
    names = hub.list()
    model = hub.load("mnist-single-d5")
    assert type(model).__name__ == "StructLearnedClassifier"
    X, y = load_dataset("digits", "train")
    assert tuple(X.shape[1:]) == (1, 8, 8)
    try:
        import sklearn  # noqa: F401
        raise SystemExit("scikit-learn was importable: the check would not show anything")
    except ImportError:
        pass
    helps = {}
    for cmd in ([], ["learn"], ["inspect"], ["hub"], ["convert"], ["bench"],
                ["bench", "kernels"], ["bench", "infer"], ["bench", "calibrate"],
                ["bench", "mlp"], ["bench", "coding"]):
        proc = subprocess.run([sys.executable, "-m", "torch_structlearn.cli", *cmd, "--help"],
                              capture_output=True, text=True)
        helps[" ".join(cmd) or "structlearn"] = proc.returncode
    print(json.dumps({"hub": names, "help": helps}))
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of the checkout, installed (without dependencies: they are this environment's)
    into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("torch_structlearn-*.whl")
    site = tmp / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    blocker = tmp / "blocker" / "sklearn"  # scikit-learn is a dev extra: hide it
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('scikit-learn hidden by the test')\n")
    return site, blocker.parent, tmp


def test_installed_wheel_has_the_hub_the_cli_and_the_demo_data(installed):
    import json

    from torch_structlearn import hub

    site, blocker, tmp = installed
    env = {"PYTHONPATH": f"{blocker}:{site}", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp), "STRUCTLEARN_CACHE": str(tmp / "cache")}
    proc = subprocess.run([sys.executable, "-c", SMOKE, str(site)], capture_output=True, text=True,
                          cwd=tmp, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hub"] == hub.list() and len(out["hub"]) >= 7
    assert out["help"] == {k: 0 for k in out["help"]}, out["help"]
