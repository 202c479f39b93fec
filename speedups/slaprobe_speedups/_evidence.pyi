"""An evidence bundle's result lines rendered in C (``collector.evidence.records.TableWriter``'s twin)."""

from collections.abc import Container, Sequence
from typing import IO, Any

def abi() -> int: ...
def utc(ns: int, /) -> str: ...
def add_summaries(out: Any, summaries: Sequence[Any], /) -> None: ...
def summarize(
    rows: list[tuple[int, int, int]], edges: Sequence[int], latency_edges: Sequence[int], last_edge: int, /
) -> tuple[list[int], list[list[tuple[int, int]]]] | None: ...

class Renderer:
    rendered: int
    def __init__(
        self,
        jsonl: IO[bytes],
        csv: IO[bytes],
        start_ns: int,
        end_ns: int,
        checks: Container[str],
        entries: dict[tuple[bytes, ...], tuple[str, str | None]],
    ) -> None: ...
    def result(self, raw: bytes, agent: str, epoch: int, sink: Any, /) -> int | None: ...
    def run(
        self,
        buf: Any,
        pos: int,
        last: int,
        agent: str,
        epoch: int,
        sink: Any,
        next_seq: int,
        listed: Any,
        max_rows: int,
        chain: list[Any] | None,
        sha256: Any,
        /,
    ) -> tuple[int, int, int, int, int]: ...
    def jsonl(self, line: str, /) -> None: ...
    def csv(self, line: str, /) -> None: ...
    def flush(self) -> None: ...
