"""The compiled fold (``slaprobe_speedups._rollups``) gives the Python fold's answers.

Every stored result is folded into the rollups, in the decode worker or the writer; the
compiled loop must leave ``slots`` and ``hours`` exactly as :func:`collector.rollups.fold_python`
does, for any rows, grids (one version or several) and dicts already holding folds, and hand
back rows it does not take before changing anything.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import rollups
from collector.rollups import HOUR, INTERNAL, Grid, Hours, Slots, fold, fold_python
from collector.sla.histogram import CLOCK_LADDER_NS, LATENCY_EDGES_NS
from tests.speedups_build import NOT_BUILT, require_built

compiled = rollups.compiled
PICK = tuple(range(9))  # agent, check, t, dur, ok, deg, kind, off, sync
T0 = 1_790_000_000 * 10**9 - 1_790_000_000 * 10**9 % HOUR
S = 10**9


def test_the_compiled_fold_is_built_where_a_compiler_is() -> None:
    """``make install`` builds speedups/ wherever it can: a missing build here is a broken install."""
    require_built()
    assert compiled is not None


needs_compiled = pytest.mark.skipif(compiled is None, reason=NOT_BUILT)  # honest: see tests/speedups_build.py

GRIDS: dict[int, list[Grid]] = {
    1: [(0, 60 * S, 17 * S)],
    2: [(0, 10 * S, 3 * S)],
    3: [(0, 300 * S, 299 * S)],
    4: [(0, 60 * S, 5 * S), (T0 + HOUR + 7 * S, 30 * S, 11 * S), (T0 + 3 * HOUR, 1 * S, 0)],  # changed twice
    5: [(0, 1 * S, 0)],
}

durations = st.one_of(
    st.sampled_from(LATENCY_EDGES_NS),
    st.integers(0, 10**15),
    st.sampled_from([0, LATENCY_EDGES_NS[-1] + 1, 10**16]),
)
offsets = st.one_of(
    st.integers(-CLOCK_LADDER_NS[0], CLOCK_LADDER_NS[0]),
    st.sampled_from([c * s for c in CLOCK_LADDER_NS for s in (1, -1)]),
    st.integers(-(10**12), 10**12),
)
rows_strategy = st.lists(
    st.tuples(
        st.integers(1, 3),  # agent
        st.sampled_from(sorted(GRIDS)),  # check
        st.integers(T0 - HOUR, T0 + 4 * HOUR),  # scheduled time
        durations,
        st.booleans(),  # ok
        st.booleans(),  # degraded
        st.sampled_from(["", "timeout", "refused", INTERNAL]),
        offsets,
        st.booleans(),  # clock synced
    ),
    max_size=120,
)


def both(rows: list[Any], grids: dict[int, list[Grid]], slots: Slots, hours: Hours) -> tuple[Any, Any]:
    """(compiled, python) results of folding ``rows`` into copies of ``slots`` and ``hours``."""
    assert compiled is not None
    s1, h1 = copy.deepcopy(slots), copy.deepcopy(hours)
    s2, h2 = copy.deepcopy(slots), copy.deepcopy(hours)
    out1: Any = None
    out2: Any = None
    try:
        assert compiled.fold(list(rows), PICK, grids, s1, h1, rollups._grid, rollups._grid_end) is None
    except Exception as exc:  # the same error as the Python fold, at the same point
        out1 = (type(exc), str(exc))
    try:
        fold_python(rows, PICK, grids, s2, h2)
    except Exception as exc:
        out2 = (type(exc), str(exc))
    return (out1, s1, h1), (out2, s2, h2)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(first=rows_strategy, then=rows_strategy)
def test_the_same_slots_and_hours_as_the_python_fold(first: list[Any], then: list[Any]) -> None:
    slots: Slots = {}
    hours: Hours = {}
    fold_python(first, PICK, GRIDS, slots, hours)  # dicts already holding a fold
    c, p = both(then, GRIDS, slots, hours)
    assert c == p
    assert c[0] is None


@needs_compiled
def test_a_check_without_grids_fails_alike() -> None:
    rows = [
        (1, 1, T0 + 60 * S, 5_000_000, True, False, "", 0, True),
        (1, 99, T0, 1, True, False, "", 0, True),
    ]
    c, p = both(rows, GRIDS, {}, {})
    assert c == p
    assert c[0] is not None and c[0][0] is KeyError


@needs_compiled
def test_a_hundred_thousand_rows_of_a_busy_hour() -> None:
    """The shape of ingest: many checks and agents, sorted by nothing, every result kind."""
    grids = {c: [(0, 60 * S, (c * 7919) % 60 * S)] for c in range(1, 1001)}
    rows = [
        (
            1 + i % 4,
            1 + (i * 31) % 1000,
            T0 + (i // 1000) * 60 * S + ((1 + (i * 31) % 1000) * 7919) % 60 * S + i % 3 * 1000,
            (i * 7_777) % 10**9,
            i % 13 != 0,
            i % 29 == 0,
            INTERNAL if i % 997 == 0 else ("" if i % 13 else "timeout"),
            (i % 5 - 2) * 10**6,
            i % 101 != 0,
        )
        for i in range(100_000)
    ]
    c, p = both(rows, grids, {}, {})
    assert c == p
    assert c[0] is None and len(c[2]) >= 1000


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param((1, 1, 2**63, 1, True, False, "", 0, True), id="a time past 64 bits"),
        pytest.param((1, 1, 2**62 + 1, 1, True, False, "", 0, True), id="a time past 2**62"),
        pytest.param((1, 1, T0, 1, True, False, "", 2**70, True), id="an offset past 64 bits"),
    ],
)
def test_rows_the_compiled_fold_does_not_take_are_folded_in_python(odd: tuple[Any, ...]) -> None:
    rows = [(2, 2, T0 + 13 * S, 1_000_000, True, False, "", 0, True), odd]
    if compiled is not None:
        untouched_slots: Slots = {}
        untouched_hours: Hours = {}
        assert (
            compiled.fold(
                rows, PICK, GRIDS, untouched_slots, untouched_hours, rollups._grid, rollups._grid_end
            )
            is NotImplemented
        )
        assert untouched_slots == {} and untouched_hours == {}  # handed back before any change
    slots: Slots = {}
    hours: Hours = {}
    fold(rows, PICK, GRIDS, slots, hours)
    ref_slots: Slots = {}
    ref_hours: Hours = {}
    fold_python(rows, PICK, GRIDS, ref_slots, ref_hours)
    assert (slots, hours) == (ref_slots, ref_hours)
    assert sum(v[0] + v[1] + v[2] for v in hours.values()) == 2


@needs_compiled
@settings(max_examples=200, deadline=None)
@given(first=rows_strategy, more=rows_strategy, again=rows_strategy)
def test_the_compiled_merge_is_the_python_merge(first: list[Any], more: list[Any], again: list[Any]) -> None:
    """The writer merges the worker's folds: into empty dicts, onto overlapping keys, twice."""
    assert compiled is not None
    slots: Slots = {}
    hours: Hours = {}
    fold_python(first, PICK, GRIDS, slots, hours)
    folds = []
    for rows in (more, again):
        s: Slots = {}
        h: Hours = {}
        fold_python(rows, PICK, GRIDS, s, h)
        folds.append((s, h))
    c_slots, c_hours = copy.deepcopy(slots), copy.deepcopy(hours)
    p_slots, p_hours = copy.deepcopy(slots), copy.deepcopy(hours)
    for s, h in folds:
        compiled.merge(c_slots, c_hours, s, h)
        rollups.merge_python(p_slots, p_hours, s, h)
    assert (c_slots, c_hours) == (p_slots, p_hours)
    # What was merged in is copied, not shared: a later merge must not change a source fold.
    before = copy.deepcopy(folds)
    compiled.merge(c_slots, c_hours, *folds[0])
    assert folds == before
    # And the merge is the fold of all the rows at once.
    all_slots: Slots = {}
    all_hours: Hours = {}
    fold_python(first + more + again, PICK, GRIDS, all_slots, all_hours)
    m_slots, m_hours = copy.deepcopy(slots), copy.deepcopy(hours)
    for s, h in folds:
        compiled.merge(m_slots, m_hours, s, h)
    assert (m_slots, m_hours) == (all_slots, all_hours)


def as_columns(rows: list[Any], arrays: bool) -> list[Any]:
    """The nine picked columns of ``rows``; the integer ones as array('q') when ``arrays``, as the
    decode worker sends them."""
    from array import array

    columns: list[Any] = [[r[j] for r in rows] for j in range(9)]
    if arrays:
        for j in (0, 1, 2, 3, 4, 5, 7, 8):
            with contextlib.suppress(OverflowError):  # past 64 bits: the list stays, handed back
                columns[j] = array("q", [int(v) for v in columns[j]])
    return columns


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(first=rows_strategy, then=rows_strategy, arrays=st.booleans())
def test_the_fold_by_column_is_the_fold_of_the_rows(first: list[Any], then: list[Any], arrays: bool) -> None:
    assert compiled is not None
    slots: Slots = {}
    hours: Hours = {}
    fold_python(first, PICK, GRIDS, slots, hours)
    (_, want_slots, want_hours), _ = both(then, GRIDS, slots, hours)
    got_slots, got_hours = copy.deepcopy(slots), copy.deepcopy(hours)
    cols = as_columns(then, arrays)
    assert compiled.fold_columns(cols, GRIDS, got_slots, got_hours, rollups._grid, rollups._grid_end) is None
    assert (got_slots, got_hours) == (want_slots, want_hours)


@needs_compiled
def test_columns_the_fold_does_not_take_come_back_untouched() -> None:
    assert compiled is not None
    rows = [
        (2, 2, T0 + 13 * S, 1_000_000, True, False, "", 0, True),
        (1, 1, 2**63, 1, True, False, "", 0, True),
    ]
    slots: Slots = {}
    hours: Hours = {}
    for cols in (as_columns(rows, False), as_columns(rows[:1], True)[:8], [[1], [2]]):
        assert (
            compiled.fold_columns(cols, GRIDS, slots, hours, rollups._grid, rollups._grid_end)
            is NotImplemented
        )
    ragged = as_columns(rows, False)
    ragged[3] = ragged[3][:1]
    assert (
        compiled.fold_columns(ragged, GRIDS, slots, hours, rollups._grid, rollups._grid_end) is NotImplemented
    )
    assert slots == {} and hours == {}
    # Through Rollups: staged by column, folded as rows when the columns are not taken.
    names = ["agent_id", "check_id", "scheduled_ns", "duration_ns", "ok", "degraded", "error_kind"]
    r = rollups.Rollups([*names, "clock_offset_ns", "clock_synced", "epoch", "seq"])
    assert r.pick == PICK
    assert not rollups.fold_columns(rollups.Columns(as_columns(rows, False)), r.pick, GRIDS, slots, hours)
    assert rollups.fold_columns(rollups.Columns(as_columns(rows[:1], True)), r.pick, GRIDS, slots, hours)
    assert sum(v[0] for v in hours.values()) == 1
