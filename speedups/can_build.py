"""Exit 0 when this Python can build slaprobe-speedups: a C compiler and Python's headers.

``make install`` builds the compiled hot paths only then (and a failed build is then an error);
tests/test_fold_compiled.py asks the same question to insist the build happened.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig


def can_build() -> bool:
    compiler = os.environ.get("CC") or "cc"
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(compiler.split()[0]) is not None and os.path.exists(headers)


if __name__ == "__main__":
    sys.exit(0 if can_build() else 1)
