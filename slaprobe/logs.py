"""Logging setup for the long-running commands: one line per event, UTC timestamps, to stderr."""

from __future__ import annotations

import logging
import sys
import time


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # grpc and asyncio are chatty at DEBUG; keep them at WARNING unless asked twice.
    # asyncssh logs several INFO lines per connection: an SSH check would flood the agent's log.
    for name in ("grpc", "asyncio", "sqlite_utils", "asyncssh"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
