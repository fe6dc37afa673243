"""Deprecated: this script is now `structlearn bench convert-time` (0.2; every benchmark's code lives in
torch_structlearn/bench/, their results here). It forwards there for one release."""

import sys
import warnings

from torch_structlearn.bench import main

if __name__ == "__main__":
    warnings.warn("python benchmarks/convert_time.py is deprecated: run structlearn bench convert-time",
                  DeprecationWarning, stacklevel=1)
    sys.exit(main(["convert-time", *sys.argv[1:]]))
