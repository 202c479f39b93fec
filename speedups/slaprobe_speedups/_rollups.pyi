from collections.abc import Callable, Sequence
from typing import Any

def configure(edges: Sequence[int], ladder: Sequence[int], internal: str, /) -> None: ...
def fold(
    rows: list[Sequence[Any]],
    pick: Sequence[int],
    grids: dict[int, list[tuple[int, int, int]]],
    slots: dict[tuple[int, int, int, int], list[int]],
    hours: dict[tuple[int, int, int, int], list[Any]],
    grid: Callable[..., tuple[int, int]],
    grid_end: Callable[..., int],
    /,
) -> Any: ...
def merge(
    slots: dict[tuple[int, int, int, int], list[int]],
    hours: dict[tuple[int, int, int, int], list[Any]],
    more_slots: dict[tuple[int, int, int, int], list[int]],
    more_hours: dict[tuple[int, int, int, int], list[Any]],
    /,
) -> None: ...
def merged_blob(stored: bytes | None, hist: dict[int, int], /) -> Any: ...
def fold_columns(
    columns: list[Any],
    grids: dict[int, list[tuple[int, int, int]]],
    slots: dict[tuple[int, int, int, int], list[int]],
    hours: dict[tuple[int, int, int, int], list[Any]],
    grid: Callable[..., tuple[int, int]],
    grid_end: Callable[..., int],
    /,
) -> Any: ...
