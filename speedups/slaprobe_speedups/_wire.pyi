from collections.abc import Mapping

def abi() -> int: ...
def scan_results(
    raws: list[bytes],
    start: int,
    checks: Mapping[str, int],
    limit: int,
    columns: list[list[object]],
    seqs: list[int],
    /,
) -> int: ...
def split_batch(raw: bytes, records: bool, /) -> tuple[bytes, list[bytes] | None] | str: ...
