"""The compiled histogram merge (``slaprobe_speedups._rollups.merged_blob``) gives the Python one's bytes.

The writer's rollup flush rewrites every hour and day row a commit touches with the stored latency
and clock histograms plus the new counts. The compiled merge must write exactly the bytes
:func:`collector.rollups._merged_python` writes, for any stored blob our encoder made and any new
histogram, and hand everything else (counts past 32 bits, foreign blobs) back to the Python path
with NotImplemented, so that the answer or the error stays the Python one.
"""

from __future__ import annotations

from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import rollups
from collector.sla.histogram import decode, encode
from tests.speedups_build import NOT_BUILT, require_built

merged_blob = rollups._merged_blob
# Honest: the module is optional where it cannot be built (tests/speedups_build.py).
needs_compiled = pytest.mark.skipif(merged_blob is None, reason=NOT_BUILT)


def compiled_merge(stored: Any, new: Any) -> object:
    assert merged_blob is not None
    return merged_blob(stored, new)


U32 = 2**32 - 1
hists = st.dictionaries(st.integers(0, 300), st.integers(0, 2**20), max_size=40)
wide_hists = st.dictionaries(st.integers(0, U32), st.integers(0, U32), max_size=20)


def test_the_compiled_merge_is_built_where_a_compiler_is() -> None:
    require_built()
    assert merged_blob is not None


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(stored=st.one_of(st.none(), hists), new=hists)
def test_same_bytes_as_the_python_merge(stored: dict[int, int] | None, new: dict[int, int]) -> None:
    blob = None if stored is None else encode(stored)
    got = compiled_merge(blob, new)
    assert got is not NotImplemented or any((stored or {}).get(k, 0) + v > U32 for k, v in new.items())
    if got is not NotImplemented:
        assert got == rollups._merged_python(blob, new)
        if new:  # and it is the sum
            want = dict(stored or {})
            for k, v in new.items():
                want[k] = want.get(k, 0) + v
            assert decode(got) == want


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(stored=wide_hists, new=wide_hists)
def test_near_32_bits_the_sum_either_fits_alike_or_goes_back_to_python(
    stored: dict[int, int], new: dict[int, int]
) -> None:
    blob = encode(stored)
    got = compiled_merge(blob, new)
    try:
        want = rollups._merged_python(blob, new)
    except OverflowError:  # array("I") refuses a sum past 32 bits: so must the dispatcher
        assert got is NotImplemented
        with pytest.raises(OverflowError):
            rollups._merged(blob, new)
        return
    assert got == want


@needs_compiled
def test_empty_and_absent() -> None:
    stored = encode({5: 1})
    assert compiled_merge(stored, {}) is stored  # nothing new: the stored blob as it is
    assert compiled_merge(None, {}) is None
    assert compiled_merge(b"", {}) == b""
    assert compiled_merge(None, {2: 1, 1: 3}) == encode({1: 3, 2: 1})
    assert compiled_merge(stored, {5: 2, 1: 0}) == encode({1: 0, 5: 3})  # a zero count stays, as in Python


@needs_compiled
@pytest.mark.parametrize(
    ("stored", "new"),
    [
        (b"\x01\x00\x00\x00", {1: 1}),  # not whole pairs: the Python path raises ValueError
        (array("I", [5, 1, 2, 1]).tobytes(), {3: 1}),  # buckets out of order: dict semantics
        (array("I", [2, 1, 2, 4]).tobytes(), {3: 1}),  # a bucket twice: the last count wins in Python
        (encode({1: 1}), {-1: 1}),  # a negative bucket
        (encode({1: 1}), {1: 2**32}),  # a count past 32 bits
        (encode({1: 1}), {1: 1.5}),  # not an int
        (encode({1: 1}), {"1": 1}),
        (bytearray(encode({1: 1}) or b""), {1: 1}),  # not bytes
    ],
)
def test_anything_else_goes_back_to_python(stored: object, new: dict[object, object]) -> None:
    assert compiled_merge(stored, new) is NotImplemented
    try:
        want: object = rollups._merged_python(stored, new)  # type: ignore[arg-type]
    except (ValueError, OverflowError, TypeError) as exc:
        with pytest.raises(type(exc)):
            rollups._merged(stored, new)  # type: ignore[arg-type]
    else:
        assert rollups._merged(stored, new) == want  # type: ignore[arg-type]
