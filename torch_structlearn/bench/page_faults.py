"""What a fresh output tensor costs on this machine: the page faults of first touch.

    structlearn bench page-faults

Prints, for the (4096, 768 -> 3072) benchmark shape: a ``torch.empty`` + fill of the 50 MB
output against a fill of an existing one, and for the ``cpu`` kernels' forward at 1 % and
``nn.Linear``'s forward, the wall time and the minor page faults per call (``getrusage``).
Both allocate the same output, so both pay the same faults; what the faults cost depends on the
machine (a VM's can be several times a bare-metal host's).
"""

import argparse
import resource
import statistics
import time

import torch
from torch import nn

from ..layers import StructLearnedLinear
from .timing import machine, machine_line


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def per_call(fn, n: int = 9) -> tuple[float, float]:
    fn()
    times, f0 = [], faults()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), (faults() - f0) / n


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="structlearn bench page-faults",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    parser().parse_args(argv)
    print(machine_line(machine()))
    kept = torch.empty(4096, 3072)
    fresh_ms, fresh_faults = per_call(lambda: torch.empty(4096, 3072).fill_(1.0))
    kept_ms, kept_faults = per_call(lambda: kept.fill_(1.0))
    print(f"50 MB output: empty + fill {fresh_ms:.1f} ms ({fresh_faults:.0f} faults), "
          f"fill of a kept one {kept_ms:.1f} ms ({kept_faults:.0f} faults)")
    torch.manual_seed(0)
    x = torch.randn(4096, 768)
    sparse = StructLearnedLinear(768, 3072, density=0.01, backend="cpu")
    dense = nn.Linear(768, 3072)
    with torch.no_grad():
        for name, layer in (("cpu, 1 %", sparse), ("nn.Linear", dense)):
            ms, n = per_call(lambda layer=layer: layer(x))
            print(f"forward {name}: {ms:.1f} ms, {n:.0f} minor faults per call")
    return 0

