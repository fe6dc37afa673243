"""Deprecated: this script is now `structlearn bench page-faults` (0.2; every benchmark's code lives in
torch_structlearn/bench/, their results here). It forwards there for one release."""

import sys
import warnings

from torch_structlearn.bench import main

if __name__ == "__main__":
    warnings.warn("python benchmarks/page_faults.py is deprecated: run structlearn bench page-faults",
                  DeprecationWarning, stacklevel=1)
    sys.exit(main(["page-faults", *sys.argv[1:]]))
