"""The ``structlearn`` command.

``structlearn inspect FILE`` prints a summary of a structure file; ``structlearn bench ...``
runs :mod:`torch_structlearn.bench`. Errors are one clear line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys


def _inspect(args) -> int:
    from . import load

    layer = load(args.file)
    fan = layer.fan_in.long()
    print(f"{args.file}")
    print(f"  {layer}")
    print(f"  nnz={layer.nnz}  density={layer.density:.4%}  "
          f"fan_in min/mean/max = {int(fan.min())}/{fan.float().mean():.1f}/{int(fan.max())}  "
          f"empty units = {int((fan == 0).sum())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="structlearn", description="torch_structlearn command line")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="summarise a structure file (.safetensors)")
    i.add_argument("file")
    b = sub.add_parser("bench", help="run the benchmarks (see python -m torch_structlearn.bench -h)",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    try:
        if args.command == "inspect":
            return _inspect(args)
        from .bench import main as bench_main

        return bench_main(args.rest)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"structlearn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
