"""Deprecated: this script is now `structlearn bench markdown` (0.2; every benchmark's code lives in
torch_structlearn/bench/, their results here). It forwards there for one release."""

import sys
import warnings

from torch_structlearn.bench import main

if __name__ == "__main__":
    warnings.warn("python benchmarks/update_markdown.py is deprecated: run structlearn bench markdown",
                  DeprecationWarning, stacklevel=1)
    sys.exit(main(["markdown", *sys.argv[1:]]))
