"""Whether this machine can build slaprobe-speedups, and the skips that follow from it.

The compiled modules (``speedups/``) are optional by design: slaprobe's wheel stays pure Python
and a machine without a C compiler or Python's headers runs the Python paths. So a test of a
compiled path can only run where the module is built, and that skip is honest; what keeps it from
hiding a broken build is :func:`require_built`, which fails (never skips) wherever
``speedups/can_build.py`` says the build was possible, as it is in CI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NOT_BUILT = "slaprobe-speedups is not built here (no C compiler or Python.h): only the Python path can run"


def can_build() -> bool:
    """``speedups/can_build.py``'s answer: the question ``make install`` asks before building."""
    spec = importlib.util.spec_from_file_location("can_build", Path(__file__).parents[1] / "speedups" / "can_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return bool(module.can_build())


def require_built() -> None:
    """Skip where the module cannot be built; elsewhere the caller then asserts that it was."""
    if not can_build():
        pytest.skip(NOT_BUILT)
