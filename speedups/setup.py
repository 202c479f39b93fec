"""The C extensions of slaprobe-speedups (metadata lives in pyproject.toml).

Why a separate distribution: slaprobe's own wheel stays pure Python, so the installer can ship it
to any agent host; only the collector's machine needs a compiler, and without one slaprobe runs
the same code paths in Python.
"""

from setuptools import Extension, setup

CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension("slaprobe_speedups._wire", ["src/_wire.c"], extra_compile_args=CFLAGS),
        Extension("slaprobe_speedups._evidence", ["src/_evidence.c"], extra_compile_args=CFLAGS),
        Extension("slaprobe_speedups._rollups", ["src/_rollups.c"], extra_compile_args=CFLAGS),
        # SQLite's functions are looked up at run time in the library Python's sqlite3 uses (dlsym).
        Extension("slaprobe_speedups._store", ["src/_store.c"], extra_compile_args=CFLAGS, libraries=["dl"]),
    ]
)
