"""The compiled result decoder (``slaprobe_speedups._wire``, through ``wire.batch_results_c``) and
its Python twin (``wire.batch_results_py``, the fallback where no compiler built it) give what the
exact path gives record by record (``pb.Record.FromString`` then ``wire.result_row``): the same
columns (values and types, the ``phases`` and ``fields`` texts byte for byte), the same rejections
(index, seq, reason), the same records left to the caller, the same undecodable batches.

Both paths run in every test; the compiled one is skipped only where it is not installed. Inputs:
records built as the agent builds them, hypothesis results across every rule's boundary, and
thousands of mutated encodings (bit flips, cuts, unknown and repeated fields, overlong varints,
invalid UTF-8, NULs, huge lengths) that the compiled scanner must either read exactly or leave to
the exact path.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.wire import encode_record
from collector import service, wire
from collector.service import BatchContext, decode_batch, decode_batch_exact
from collector.wire import InvalidRecord, batch_results_py, result_row
from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import ClockSample, Gap, GapCheck, Measurement
from tests.speedups_build import require_built
from tests.test_decode_fast import batch, plain, shapes
from tests.test_ingest_rows import CHECKS, NOW, SKEW, good, tamper

compiled: Any
try:
    from slaprobe_speedups import _wire as compiled
except ImportError:  # pragma: no cover - where no compiler built it
    compiled = None

MAX_NS = wire.MAX_DURATION_NS
LIMIT = NOW + SKEW
Decode = Callable[..., wire.BatchResults]

PATHS: list[Any] = [
    pytest.param(batch_results_py, id="python"),
    pytest.param(
        wire.batch_results_c,
        id="compiled",
        marks=pytest.mark.skipif(
            compiled is None or wire._speedups is None, reason="slaprobe_speedups not built"
        ),
    ),
]


def implementations() -> list[Decode]:
    out: list[Decode] = [batch_results_py]
    if wire._speedups is not None:
        out.append(wire.batch_results_c)
    return out


# ---- the reference and the comparison ---------------------------------------------------------


def reference(raws: Sequence[bytes], checks: Mapping[str, int] = CHECKS, now: int = NOW) -> Any:
    """Record by record with the real type: rows (``ResultColumns`` order), rejections, seqs and
    the others' (index, kind); or "undecodable"."""
    rows, rejections, seqs, others = [], [], [], []
    for i, raw in enumerate(raws):
        try:
            rec = pb.Record.FromString(raw)
        except DecodeError:
            return "undecodable"
        seqs.append(rec.seq)
        kind = rec.WhichOneof("kind")
        if kind != "result":
            others.append((i, kind))
            continue
        try:
            row = result_row(rec, 1, 2, checks, now, now_ns=now, max_skew_ns=SKEW)
        except InvalidRecord as exc:
            rejections.append((i, rec.seq, str(exc)))
            continue
        rows.append(row[2:14] + row[15:])
    return repr(rows), rejections, seqs, others


def got(f: Decode, raws: Sequence[bytes], checks: Mapping[str, int] = CHECKS, now: int = NOW) -> Any:
    b = f(raws, 1, 2, checks, now, now_ns=now, max_skew_ns=SKEW)
    r = b.results
    if r.undecodable:
        return "undecodable"
    columns: list[list[Any]] = [
        r.seq, r.check, r.revision, r.scheduled, r.started, r.duration, r.ok, r.degraded, r.error_kind,
        r.detail, r.phases, r.fields, r.clock_offset, r.clock_synced,
    ]  # fmt: skip
    assert len({len(c) for c in columns}) == 1
    rows = list(zip(*columns, strict=True))
    return repr(rows), r.rejections, b.seqs, [(i, rec.WhichOneof("kind")) for i, rec in b.others]


def check_all(raws: Sequence[bytes], checks: Mapping[str, int] = CHECKS, now: int = NOW) -> Any:
    """Every path gives the reference's answer (twice: the Python path's caches warm)."""
    want = reference(raws, checks, now)
    for f in implementations():
        for _ in range(2):
            assert got(f, raws, checks, now) == want, f.__name__
    return want


def taken(raws: list[bytes]) -> int:
    """How many records the compiled scanner reads itself before leaving one to the exact path."""
    assert compiled is not None
    return int(compiled.scan_results(raws, 0, CHECKS, LIMIT, [[] for _ in range(14)], []))


needs_compiled = pytest.mark.skipif(wire._speedups is None, reason="slaprobe_speedups not built")


# ---- (a) records as the agent builds them ------------------------------------------------------


def measurement(i: int, rng: random.Random) -> Measurement:
    kind = rng.random()
    ok = kind < 0.8
    phases = [("resolve", rng.randrange(0, 30_000)), ("connect", rng.randrange(0, 9_000_000))]
    if rng.random() < 0.5:
        phases += [("tls", rng.randrange(1, 10**7)), ("processing", 5), ("transfer", 0)]
    fields: dict[str, float | str | bool] = {"status_code": rng.choice([0.0, 200.0, 404.0])}
    if rng.random() < 0.4:
        fields |= {
            "http_version": "1.1",
            "redirects": float(rng.randrange(3)),
            "tls_resumed": rng.random() < 0.5,
        }
    if rng.random() < 0.2:
        fields |= {"server": rng.choice(["nginx/1.2", 'we"ird\\', "é\u2603\U0001f600", "a\nb\x01\x7f"])}
    if rng.random() < 0.1:
        fields |= {
            "ratio": rng.choice([0.1, -0.0, 1e16, 1e-7, 123456789.123, 5e-324, 1.7976931348623157e308])
        }
    return Measurement(
        check_id=rng.choice(list(CHECKS)),
        check_revision=rng.choice(["r1", "r2", "", "é"]),
        scheduled_ns=NOW - rng.randrange(1, 10**12),
        started_ns=NOW - rng.randrange(1, 10**12),
        duration_ns=rng.randrange(0, 10**10),
        success=ok,
        degraded=ok and rng.random() < 0.1,
        error_kind="" if ok else rng.choice(["timeout", "refused", "tls", "dns"]),
        detail=rng.choice(["", "connected to 127.0.0.1:9", "no answer within 5000 ms", "détail \u2603"]),
        phases=tuple(phases),
        fields=fields,
        clock_offset_ns=rng.randrange(-(10**9), 10**9),
        clock_synced=rng.random() < 0.9,
    )


def agent_records(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    raws = []
    seq = 1
    for i in range(n):
        if i % 97 == 50:
            gap = Gap(seq + 2, "spool_full", NOW - 5, (GapCheck("lab/web", NOW - 100, NOW - 10, 3),))
            raws.append(encode_record(seq, gap))
            seq += 3
        elif i % 89 == 40:
            raws.append(encode_record(seq, ClockSample(10, 20, 30, 40)))
            seq += 1
        else:
            raws.append(encode_record(seq, measurement(i, rng)))
            seq += 1
    return raws


def test_records_as_the_agent_builds_them() -> None:
    raws = agent_records(600)
    _rows, rejections, _, others = check_all(raws)
    assert len(others) >= 10 and not rejections


@needs_compiled
def test_the_scanner_reads_the_usual_results_itself() -> None:
    raws = [encode_record(i + 1, measurement(i, random.Random(i))) for i in range(200)]
    assert taken(raws) == 200
    # a gap, and a repeated phase name (dict semantics), are left to the exact path
    assert taken([*raws[:3], agent_records(51)[50], *raws]) == 3
    assert taken([*raws[:2], good().SerializeToString()]) == 2


@pytest.mark.parametrize("f", PATHS)
def test_shapes_and_bad_records_of_the_fast_path_tests(f: Decode) -> None:
    names = [
        "unknown check", "no times", "future", "duration", "ok with kind", "failed without kind",
        "long detail", "many phases", "bad phase", "nan field", "empty field", "long text field", "NUL",
        "two problems",
    ]  # fmt: skip
    recs = shapes() + [tamper(n) for n in names]
    raws = [r.SerializeToString() for r in recs]
    want = reference(raws)
    assert got(f, raws) == want
    assert len(want[1]) >= len(names)


@pytest.mark.parametrize("f", PATHS)
def test_checks_as_a_mapping_not_a_dict(f: Decode) -> None:
    class Lazy(Mapping[str, int]):
        def __getitem__(self, key: str) -> int:
            return CHECKS[key]

        def __iter__(self) -> Iterator[str]:
            return iter(CHECKS)

        def __len__(self) -> int:
            return len(CHECKS)

    raws = [*agent_records(50), tamper("unknown check").SerializeToString()]
    assert got(f, raws, Lazy()) == reference(raws, Lazy())


@pytest.mark.parametrize("f", PATHS)
def test_decode_batch_on_either_path_is_the_exact_one(f: Decode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "batch_results", f)
    raws = agent_records(300, seed=3)
    c = BatchContext(1, "a1", 2, NOW, SKEW, CHECKS, None)
    header, split = wire.split_batch(batch(raws))
    assert plain(decode_batch(header, split, c)) == plain(decode_batch_exact(header, split, c))


@needs_compiled
def test_bad_arguments_raise_and_odd_items_are_left_to_python() -> None:
    assert compiled is not None
    cols: list[list[Any]] = [[] for _ in range(14)]
    raws = [good().SerializeToString()]
    args: tuple[Any, ...]
    for args in (
        (None, 0, CHECKS, LIMIT, cols, []),
        (raws, 0, CHECKS, LIMIT, cols[:13], []),
        (raws, 0, CHECKS, LIMIT, [*cols[:13], ()], []),
        (raws, -1, CHECKS, LIMIT, cols, []),
        (raws, 0, CHECKS, "x", cols, []),
        (raws, 0, CHECKS, LIMIT, cols, ()),
    ):
        with pytest.raises((TypeError, ValueError)):
            compiled.scan_results(*args)
    with pytest.raises(TypeError):
        compiled.scan_results(raws)  # too few arguments
    ok = encode_record(1, measurement(0, random.Random(0)))
    assert compiled.scan_results([ok, bytearray(ok), ok], 0, CHECKS, LIMIT, cols, []) == 1
    assert compiled.scan_results([ok], 5, CHECKS, LIMIT, cols, []) == 5
    assert compiled.scan_results([ok], 0, CHECKS, 2**80, cols, []) == 1  # a limit past int64
    assert compiled.scan_results([ok], 0, CHECKS, -(2**80), cols, []) == 0
    check_all([ok, cast(bytes, bytearray(ok)), ok])


# ---- (b) hypothesis: results across every rule's boundary --------------------------------------

TIMES = st.sampled_from([-(2**63), -1, 0, 1, NOW - 10**9, LIMIT - 1, LIMIT, LIMIT + 1, 2**63 - 1])
DURATIONS = st.sampled_from([-(2**63), -1, 0, 1, 3_000_000, MAX_NS - 1, MAX_NS, MAX_NS + 1, 2**63 - 1])
CHARS = st.characters(codec="utf-8")
NAMES = st.one_of(
    st.sampled_from(
        ["", "resolve", "connect", "tls", "x" * 64, "x" * 65, "é" * 64, "é" * 65, "\U0001f600" * 64]
    ),
    st.text(CHARS, max_size=70),
)
TEXTS = st.one_of(
    st.sampled_from(
        ["", "ok", "a\x00b", "x" * 4096, "x" * 4097, "é" * 4096, "é" * 4097, "\U0001f600" * 4097]
    ),
    st.text(CHARS, max_size=40),
)
NUMBERS = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e16, 1e-7, 5e-324, 1.7976931348623157e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES = st.one_of(
    st.builds(lambda v: ("number", v), NUMBERS),
    st.builds(lambda v: ("text", v), TEXTS),
    st.builds(lambda v: ("flag", v), st.booleans()),
    st.just(("none", None)),
)


@st.composite
def results(draw: Any) -> bytes:
    r = pb.Result(
        check_id=draw(st.sampled_from(["lab/web", "lab/db", "other/x", "", "lab/web\x00"])),
        check_revision=draw(st.sampled_from(["", "r1", "é\u2603"])),
        scheduled_ns=draw(TIMES),
        started_ns=draw(TIMES),
        duration_ns=draw(DURATIONS),
        success=draw(st.booleans()),
        degraded=draw(st.booleans()),
        error_kind=draw(st.sampled_from(["", "timeout", "time\x00out", "é"])),
        detail=draw(TEXTS),
        clock_offset_ns=draw(st.sampled_from([0, -1, 2**63 - 1, -(2**63), 12345])),
        clock_synced=draw(st.booleans()),
    )
    # The first few phases and fields drawn, the rest plain (their boundary is their count).
    n_phases = draw(st.sampled_from([0, 1, 2, 5, 32, 33]))
    for k in range(n_phases):
        if k < 3:
            r.phases.add(name=draw(NAMES) if draw(st.booleans()) else f"p{k}", duration_ns=draw(DURATIONS))
        else:
            r.phases.add(name=f"p{k}", duration_ns=k)
    n_fields = draw(st.sampled_from([0, 1, 3, 64, 65]))
    for k in range(n_fields):
        key = draw(NAMES) if k < 3 and draw(st.booleans()) else f"k{k}"
        kind, v = draw(VALUES) if k < 3 else ("flag", True)
        v = cast(Any, v)
        entry = r.fields[key]
        if kind == "number":
            entry.number = v
        elif kind == "text":
            entry.text = v
        elif kind == "flag":
            entry.flag = v
        else:
            entry.Clear()
    return pb.Record(seq=draw(st.sampled_from([0, 1, 2**64 - 1])), result=r).SerializeToString()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(results(), min_size=1, max_size=4))
def test_hypothesis_results_across_the_rules(raws: list[bytes]) -> None:
    check_all(raws)


# ---- (c) mutated encodings -----------------------------------------------------------------------


def varint(n: int, extra: int = 0) -> bytes:
    """n as a varint; ``extra`` more bytes of nothing (an overlong encoding the real type reads)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            break
        out.append(b | 0x80)
    if extra:
        out[-1] |= 0x80
        out += b"\x80" * (extra - 1) + b"\x00"
    return bytes(out)


def tag(field: int, wt: int, extra: int = 0) -> bytes:
    return varint(field << 3 | wt, extra)


def ld(field: int, data: bytes) -> bytes:
    return tag(field, 2) + varint(len(data)) + data


def vi(field: int, n: int) -> bytes:
    return tag(field, 0) + varint(n)


def entry(key: bytes, value: bytes) -> bytes:
    return ld(11, ld(1, key) + ld(2, value))


def result_parts() -> list[bytes]:
    """A good result's fields, one encoded field each (so they can be repeated, reordered, cut)."""
    return [
        ld(1, b"lab/web"),
        ld(2, b"r1"),
        vi(3, NOW - 10**9),
        vi(4, NOW - 10**9 + 5),
        vi(5, 3_000_000),
        vi(6, 1),
        vi(7, 0),
        ld(9, "détail".encode()),
        ld(10, ld(1, b"resolve") + vi(2, 10)),
        ld(10, ld(1, b"connect") + vi(2, 20)),
        entry(b"status_code", tag(1, 1) + struct.pack("<d", 200.0)),
        entry(b"server", ld(2, b'ng"inx')),
        entry(b"tls", vi(3, 1)),
        vi(12, (-12345) & (2**64 - 1)),
        vi(13, 1),
    ]


def record(parts: Sequence[bytes], seq: int = 7, head: bytes = b"", tail: bytes = b"") -> bytes:
    return head + vi(1, seq) + ld(2, b"".join(parts)) + tail


def structural_mutants() -> Iterator[bytes]:
    parts = result_parts()
    base = record(parts)
    yield base
    yield record(parts[::-1])  # any order
    yield ld(2, b"".join(parts)) + vi(1, 7)  # seq after the result
    yield ld(2, b"".join(parts))  # no seq
    unknown = [
        vi(14, 1),
        ld(15, b"x"),
        tag(16, 1) + b"\0" * 8,
        tag(17, 5) + b"\0" * 4,
        vi(1000, 3),
        tag(3, 3) + tag(3, 4),
    ]
    for u in unknown:
        yield base + u  # unknown at the record's level
        yield record([*parts, u])  # ... at the result's
        yield record([*parts[:8], ld(10, ld(1, b"dns") + vi(2, 1) + u), *parts[8:]])  # ... a phase's
        yield record([*parts, ld(11, ld(1, b"q") + ld(2, vi(3, 1)) + u)])  # ... a map entry's
        yield record([*parts, entry(b"q", vi(3, 1) + u)])  # ... a value's
    for k, p in enumerate(parts):  # every field twice (a scalar's last wins; a message merges)
        yield record([*parts, p])
        yield record([p, *parts])
        yield record([*parts[:k], *parts[k + 1 :]])  # and each one left out
    yield record(parts, head=vi(1, 3))  # seq twice
    yield base + ld(2, b"".join(parts[:2]))  # the result twice: merged
    yield base + ld(3, b"")  # then a gap: the last member of the oneof wins
    yield ld(3, b"") + base
    yield record(parts, tail=ld(5, b""))
    yield record([*parts, entry(b"status_code", vi(3, 1))])  # a repeated key
    yield record([*parts, entry(b"k", vi(3, 1) + ld(2, b"x"))])  # two members of the value's oneof
    yield record([*parts, entry(b"k", vi(3, 2))])  # a bool of 2
    yield record([*parts, entry(b"k", b"")])  # a value with no member: rejected
    yield record([*parts, ld(11, ld(1, b"k"))])  # an entry with no value
    yield record([*parts, ld(11, ld(2, vi(3, 1)))])  # an entry with no key
    yield record([*parts, ld(11, b"")])
    yield record([*parts, ld(10, b"")])  # a phase with no name
    yield record([*parts[:6], vi(6, 2), *parts[7:]])  # success = 2 (true)
    yield record([*parts[:5], vi(6, 0), *parts[6:]])  # failed without a kind
    yield record([*parts[:5], vi(6, 0), ld(8, b"timeout"), *parts[6:]])  # failed with one
    yield record([*parts[:5], vi(6, 0), ld(8, b"time\x00out"), *parts[6:]])
    yield record([*parts[:5], vi(6, 0), ld(8, b"\xff"), *parts[6:]])
    for i in (0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14):  # overlong varints in tags, lengths and values
        p = parts[i]
        key_len = len(tag(1, 0))
        for extra in (1, 2, 4):
            yield record([*parts[:i], tag(p[0] >> 3, p[0] & 7, extra) + p[key_len:], *parts[i + 1 :]])
        if p[0] & 7 == 0:
            value = pb.Record.FromString(record([p])).result
            field = value.DESCRIPTOR.fields_by_number[p[0] >> 3]
            v = getattr(value, field.name)
            yield record([*parts[:i], p[:1] + varint(int(v), 1), *parts[i + 1 :]])
            yield record([*parts[:i], p[:1] + varint(int(v), 10), *parts[i + 1 :]])  # past 10 bytes
            yield record([*parts[:i], p[:1] + b"\xff" * 9 + b"\x7f", *parts[i + 1 :]])  # > 64 bits
            yield record([*parts[:i], p[:1] + b"\xff" * 9 + b"\x01", *parts[i + 1 :]])  # 2**64 - 1
        else:
            inner = p[2:] if p[1] < 0x80 else p[3:]
            yield record([*parts[:i], p[:1] + varint(len(inner), 1) + inner, *parts[i + 1 :]])
    huge = [1 << 31, (1 << 63) - 1, (1 << 64) - 1, 10**6]
    for h in huge:  # lengths past the end, at every level
        yield vi(1, 7) + tag(2, 2) + varint(h) + b"".join(parts)
        yield record([tag(1, 2) + varint(h) + b"lab/web", *parts[1:]])
        yield record([*parts[:8], tag(10, 2) + varint(h) + ld(1, b"x"), *parts[8:]])
        yield record([*parts, tag(11, 2) + varint(h) + ld(1, b"k")])
        yield record([*parts, ld(11, tag(1, 2) + varint(h) + b"k")])
        yield record([*parts, entry(b"k", tag(2, 2) + varint(h) + b"x")])
    bad_utf8 = [
        b"\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
        b"a\xc3",
        b"\xf0\x9f\x98",
    ]
    good_utf8 = ["é", "\u2603", "\U0001f600", "\x7f", "\x00", "\ud7ff", "\ue000", "\U0010ffff"]
    for s in bad_utf8 + [c.encode() for c in good_utf8]:
        yield record([ld(1, b"lab/web" + s), *parts[1:]])
        yield record([parts[0], ld(2, s), *parts[2:]])
        yield record([*parts[:7], ld(9, b"x" + s), *parts[8:]])
        yield record([*parts[:8], ld(10, ld(1, b"re" + s) + vi(2, 1)), *parts[8:]])
        yield record([*parts, entry(b"k" + s, vi(3, 1))])
        yield record([*parts, entry(b"k", ld(2, s + b"y"))])
        yield record([*parts[:5], vi(6, 0), ld(8, b"t" + s), *parts[6:]])
    for n in (4095, 4096, 4097):  # detail and text lengths in characters, not bytes
        for ch in ("x", "é", "\U0001f600"):
            yield record([*parts[:7], ld(9, (ch * n).encode()), *parts[8:]])
            yield record([*parts, entry(b"t", ld(2, (ch * n).encode()))])
    for n in (63, 64, 65):
        for ch in ("x", "é"):
            yield record([*parts[:8], ld(10, ld(1, (ch * n).encode()) + vi(2, 1)), *parts[8:]])
            yield record([*parts, entry((ch * n).encode(), vi(3, 1))])
    many = [ld(10, ld(1, f"p{k}".encode()) + vi(2, k)) for k in range(33)]
    yield record([*parts[:8], *many[:32], *parts[10:]])
    yield record([*parts[:8], *many, *parts[10:]])
    entries = [entry(f"k{k}".encode(), vi(3, 1)) for k in range(65)]
    yield record([*parts[:10], *entries[:64], *parts[13:]])
    yield record([*parts[:10], *entries, *parts[13:]])
    yield record([*parts[:10], *entries[:63], parts[10], *parts[13:]])  # 64 with a number among them
    # entries not next to each other (the scanner's memo of the last entries' bytes must not matter)
    yield record([*parts[:10], parts[10], parts[1], parts[11], parts[12], *parts[13:]])
    for d in (-1, 0, MAX_NS, MAX_NS + 1, 2**63 - 1):
        yield record([*parts[:8], ld(10, ld(1, b"x") + vi(2, d & (2**64 - 1))), *parts[10:]])
        yield record([*parts[:4], vi(5, d & (2**64 - 1)), *parts[5:]])
    for t in (0, 1, LIMIT, LIMIT + 1, -1):
        yield record([*parts[:2], vi(3, t & (2**64 - 1)), *parts[3:]])
        yield record([*parts[:3], vi(4, t & (2**64 - 1)), *parts[4:]])
    for x in (math.nan, math.inf, -math.inf, -0.0, 1e300, 2.5e-308):
        yield record([*parts, entry(b"n", tag(1, 1) + struct.pack("<d", x))])
    yield record([*parts, entry(b"n", tag(1, 1) + b"\0" * 7)])  # a double cut short
    yield record([*parts, entry(b"n", tag(1, 5) + b"\0" * 4)])  # a fixed32 where a double goes
    yield record([*parts, entry(b"n", vi(1, 5))])  # a varint where a double goes
    yield record([*parts, ld(3, b"x")])  # a length-delimited int64: unknown to the real type
    yield record([*parts, tag(3, 1) + b"\0" * 8])


def random_mutants(base: Sequence[bytes], seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        raw = bytearray(rng.choice(base))
        how = rng.random()
        if how < 0.5:  # bit flips
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                pos = rng.randrange(len(raw))
                raw[pos] ^= 1 << rng.randrange(8)
        elif how < 0.65:  # a byte set to something notable
            raw[rng.randrange(len(raw))] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0xC0, 0xED, 0xF4, 0x01])
        elif how < 0.8:  # cut
            del raw[rng.randrange(len(raw)) :]
        elif how < 0.9:  # bytes inserted
            pos = rng.randrange(len(raw) + 1)
            raw[pos:pos] = rng.randbytes(rng.randrange(1, 4))
        else:  # a slice repeated
            a = rng.randrange(len(raw))
            b = rng.randrange(a, len(raw) + 1)
            pos = rng.randrange(len(raw) + 1)
            raw[pos:pos] = raw[a:b]
        yield bytes(raw)


def mutant_bases() -> list[bytes]:
    rng = random.Random(7)
    return [
        record(result_parts()),
        *[encode_record(1, measurement(i, rng)) for i in range(6)],
        good().SerializeToString(),
    ]


def test_structural_mutants() -> None:
    good_one = encode_record(6, measurement(1, random.Random(1)))
    cases = list(structural_mutants())
    assert len(cases) > 300
    undecodable = rejected = 0
    for raw in cases:
        want = check_all([good_one, raw, good_one])
        undecodable += want == "undecodable"
        rejected += want != "undecodable" and bool(want[1])
    assert undecodable > 20 and rejected > 20  # both kinds of outcome are exercised


def test_every_cut_of_a_record() -> None:
    for base in mutant_bases()[:3]:
        for cut in range(len(base)):
            check_all([base[:cut]])


def test_random_mutants() -> None:
    bases = mutant_bases()
    cases = list(random_mutants(bases, seed=11, count=3000))
    # in batches of a few, so a record taken after one left to the exact path is covered too
    for k in range(0, len(cases), 3):
        raws = cases[k : k + 3]
        want = reference(raws)
        if want == "undecodable":
            # one at a time too, so the decodable ones are compared column by column
            for raw in raws:
                check_all([raw])
        for f in implementations():
            assert got(f, raws) == want, raws


@needs_compiled
def test_the_scanner_takes_what_it_can_be_sure_of() -> None:
    """The subset is not empty of the unusual: escapes, non-ASCII names and texts, extreme doubles."""
    parts = result_parts()
    odd = [
        record(parts),
        record(
            [*parts[:8], ld(10, ld(1, 'é\u2603\U0001f600"\\\n\x01\x7f'.encode()) + vi(2, 1)), *parts[10:]]
        ),
        record([*parts, entry("ключ\t".encode(), ld(2, "\U0010ffff\x00\x1f".encode()))]),
        record([*parts, entry(b"n", tag(1, 1) + struct.pack("<d", 5e-324))]),
        record([*parts, entry(b"n", tag(1, 1) + struct.pack("<d", -0.0))]),
        record([*parts, entry(b"n", tag(1, 1) + struct.pack("<d", 1e22))]),
    ]
    assert taken(odd) == len(odd)
    check_all(odd)


def test_the_scanner_is_built_where_a_compiler_is() -> None:
    """``make install`` builds speedups/ wherever it can: a missing (or stale) build here is a broken
    install, and the collector would quietly run the slower Python path."""
    require_built()
    assert wire._speedups is not None
    assert wire.batch_results is not None and wire._speedups.abi() == 3


# ---- the batch split (``wire.split_batch`` / ``batch_header``) -----------------------------------


def split_outcome(raw: bytes, compiled_split: bool, records: bool = True) -> Any:
    found: list[bytes] | None = [] if records else None
    try:
        header = wire._scan_batch(raw, found) if compiled_split else wire._scan_batch_py(raw, found)
    except DecodeError as exc:
        return "DecodeError", str(exc)
    return header.SerializeToString(), found


@needs_compiled
def test_the_compiled_split_is_the_python_split() -> None:
    raws = agent_records(40)
    big = [b"x" * n for n in (0, 1, 127, 128, 16_383, 16_384, 70_000)]
    whole = batch([*raws[:5], *big, *raws[5:]], first=1, last=len(raws) + len(big))
    cases = [whole, whole + vi(3, 9) + ld(1, b"a1") + tag(6, 1) + b"\0" * 8 + tag(7, 5) + b"\0" * 4]
    cases += [whole[:cut] for cut in range(0, len(whole), 97)] + [
        whole[: len(whole) - k] for k in range(1, 12)
    ]
    cases += [
        tag(5, 2, 1) + varint(2) + b"\x08\x01",  # the records' key overlong: a header field, parsed as one
        b"\x2a" + b"\xff" * 9 + b"\x01",  # a length of 2**63 and more
        b"\x2a" + b"\xff" * 9 + b"\x7f",  # past 64 bits
        b"\x2a" + b"\xff" * 10 + b"\x01",  # past 10 bytes
        b"\x2a\x80",
        b"\x0a" + b"\xff" * 9 + b"\x7f",
        b"\x08" + b"\xff" * 10,
        b"\x0b",  # a group
        b"\x0c\x0e\x0f",
        tag(2**29 - 1, 0) + varint(5),
        tag(1, 1) + b"\0" * 7,
        tag(1, 5) + b"\0" * 3,
        b"",
    ]
    cases += list(random_mutants([whole[:600], batch(raws[:3])], seed=5, count=1500))
    for raw in cases:
        for records in (True, False):
            assert split_outcome(raw, True, records) == split_outcome(raw, False, records), raw[:80]
