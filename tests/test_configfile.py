"""The located-config layer: durations, nodes and paths, Fields, and how errors render."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from slaprobe.configfile import (
    ConfigError,
    Fields,
    Node,
    format_duration,
    load_yaml_file,
    load_yaml_text,
    parse_duration,
)

DURATION_HINT = "expected a duration with a unit such as 500ms, 30s, 5m or 1h30m, got "

# ---- parse_duration / format_duration ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2h0m5s", 7205.0),
        ("1.5s", 1.5),
        ("0.5h", 1800.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("1s500ms", 1.5),
        ("0s", 0.0),
        (" 30s ", 30.0),  # surrounding spaces are not part of the value
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "30",  # bare numbers are refused: seconds or milliseconds?
        "1.5",
        "0",
        "1h30",  # a trailing bare number too
        "30 s",
        "1h 30m",
        "5sec",
        "30S",
        "1H",
        "s",
        "ms",
        "-5s",
        "+5s",
        ".5s",
        "5.s",
        "1e3s",
        "1,5s",
        "thirty seconds",
        "PT30S",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration with a unit") as excinfo:
        parse_duration(text)
    assert str(excinfo.value) == DURATION_HINT + repr(text)


@pytest.mark.parametrize("text", ["", "   "])
def test_parse_duration_rejects_empty_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"^empty duration$"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.001, "1ms"),
        (0.25, "250ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (30.0, "30s"),
        (59.0, "59s"),
        (60.0, "1m"),
        (90.0, "90s"),  # not a whole minute: seconds rather than a mixed form
        (300.0, "5m"),
        (3600.0, "1h"),
        (5400.0, "1h30m"),
        (86400.0, "24h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert math.isclose(parse_duration(text), seconds)  # what we print, we accept


# ---- ConfigError -------------------------------------------------------------------------


def test_config_error_renders_file_line_field_message() -> None:
    assert str(ConfigError("cat.yaml", 7, "sites.lab", "boom")) == "cat.yaml:7: sites.lab: boom"


def test_config_error_without_a_line_renders_source_field_message() -> None:
    err = ConfigError("grpc:agent-7", None, "settings.method", "not an HTTP method: '1'")
    assert str(err) == "grpc:agent-7: settings.method: not an HTTP method: '1'"
    assert err.args == (str(err),)


def test_config_error_without_a_field_omits_it() -> None:
    assert str(ConfigError("cat.yaml", 3, "", "invalid YAML: x")) == "cat.yaml:3: invalid YAML: x"
    assert str(ConfigError("cat.yaml", None, "", "file not found")) == "cat.yaml: file not found"


def test_errors_from_python_values_name_source_and_field_without_a_line() -> None:
    # Settings that arrive as JSON (from the collector) have no lines to point at.
    root = Node.from_python({"interval": 30, "settings": {"method": 7}}, "grpc:paris-1")
    f = Fields(root)
    with pytest.raises(ConfigError) as excinfo:
        f.duration("interval")
    assert str(excinfo.value) == (
        "grpc:paris-1: interval: expected a duration with a unit such as 500ms, 30s or 5m, got a number (30)"
    )
    settings = f.mapping("settings")
    assert settings is not None
    with pytest.raises(ConfigError) as excinfo:
        settings.str("method")
    assert str(excinfo.value) == "grpc:paris-1: settings.method: expected text, got a number (7)"
    assert excinfo.value.line is None


# ---- Node.from_python / load_yaml_text: paths and lines -----------------------------------------


def test_from_python_builds_dotted_paths() -> None:
    root = Node.from_python({"sites": {"lab": {"checks": {"web": {"valid_status": [200, "6xx"]}}}}}, "mem")
    assert root.path == ""
    lab = root.value["sites"].value["lab"]
    assert lab.path == "sites.lab"
    status = lab.value["checks"].value["web"].value["valid_status"]
    assert status.path == "sites.lab.checks.web.valid_status"
    assert [n.path for n in status.value] == [
        "sites.lab.checks.web.valid_status[0]",
        "sites.lab.checks.web.valid_status[1]",
    ]
    assert all(n.source == "mem" and n.line is None for n in status.value)


def test_from_python_quotes_keys_that_would_make_a_path_ambiguous() -> None:
    root = Node.from_python({"sites": {"lyon.dc-2": {"a b": 1}, "x[0]": 2}}, "mem")
    sites = root.value["sites"].value
    assert sites["lyon.dc-2"].path == "sites['lyon.dc-2']"
    assert sites["lyon.dc-2"].value["a b"].path == "sites['lyon.dc-2']['a b']"
    assert sites["x[0]"].path == "sites['x[0]']"


def test_from_python_with_a_base_path_and_top_level_list() -> None:
    settings = Node.from_python({"headers": {"X-Id": "1"}}, "mem", "checks.web.settings")
    assert settings.value["headers"].value["X-Id"].path == "checks.web.settings.headers.X-Id"
    top = Node.from_python([{"a": 1}], "mem")
    assert top.value[0].path == "[0]"
    assert top.value[0].value["a"].path == "[0].a"


def test_from_python_and_to_python_round_trip() -> None:
    data = {"a": [1, 2.5, "x", None, True], "b": {"c": {"d": []}}, "e": {}}
    assert Node.from_python(data, "mem").to_python() == data


def test_yaml_nodes_carry_one_based_lines_and_the_same_paths() -> None:
    root = load_yaml_text("# header\nsites:\n  lab:\n    checks:\n      - x: 1\n", "f.yaml")
    assert root.line == 2
    item = root.value["sites"].value["lab"].value["checks"].value[0]
    assert (item.path, item.line) == ("sites.lab.checks[0]", 5)
    x = item.value["x"]
    assert (x.value, x.path, x.line, x.source) == (1, "sites.lab.checks[0].x", 5, "f.yaml")


def test_yaml_keys_are_kept_as_written() -> None:
    # YAML 1.1 reads `no`, `off` and `yes` as booleans and `1.50` as 1.5; as names they stay text.
    root = load_yaml_text("no: 1\noff: 2\nyes: 3\n1.50: 4\n'quoted': 5\n~: 6\n", "f.yaml")
    assert list(root.value) == ["no", "off", "yes", "1.50", "quoted", "~"]
    assert root.value["no"].path == "no"


def test_yaml_values_keep_their_types_and_dates_stay_text() -> None:
    root = load_yaml_text("a: 1\nb: 1.5\nc: true\nd: ~\ne: text\nf: 2026-10-01\n", "f.yaml")
    assert root.to_python() == {"a": 1, "b": 1.5, "c": True, "d": None, "e": "text", "f": "2026-10-01"}


def test_yaml_duplicate_key_names_both_lines() -> None:
    text = "sites:\n  lab:\n    x: 1\n  other: {}\n  lab:\n    x: 2\n"
    with pytest.raises(ConfigError) as excinfo:
        load_yaml_text(text, "f.yaml")
    # Line 2 is where `lab:` is first written, not line 3 where its value starts.
    assert str(excinfo.value) == "f.yaml:5: sites.lab: duplicate key (first defined on line 2)"


def test_yaml_merge_keys_and_complex_keys_are_refused() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_yaml_text("a: &x {k: 1}\nb:\n  <<: *x\n", "f.yaml")
    assert str(excinfo.value) == "f.yaml:3: b: YAML merge keys (<<) are not supported"
    with pytest.raises(ConfigError) as excinfo:
        load_yaml_text("top:\n  ? [a, b]\n  : 1\n", "f.yaml")
    assert str(excinfo.value) == "f.yaml:2: top: keys must be plain names"


def test_yaml_syntax_errors_and_empty_documents() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_yaml_text("a: 1\nb: [1, 2\n", "f.yaml")
    assert excinfo.value.source == "f.yaml"
    assert excinfo.value.field == ""
    assert excinfo.value.message.startswith("invalid YAML: ")
    assert excinfo.value.line is not None
    for text in ("", "# only a comment\n"):
        root = load_yaml_text(text, "f.yaml")
        assert (root.value, root.line, root.path) == ({}, 1, "")
    # An explicit empty document is a null value, which Fields then refuses by name.
    with pytest.raises(ConfigError) as excinfo:
        Fields(load_yaml_text("---\n", "f.yaml"), "a catalogue")
    assert str(excinfo.value) == "f.yaml:2: expected a catalogue, got nothing"


def test_load_yaml_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_yaml_file(missing)
    assert str(excinfo.value) == f"{missing}: file not found"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: Z\xfcrich\n")
    with pytest.raises(ConfigError) as excinfo:
        load_yaml_file(latin1)
    assert str(excinfo.value) == f"{latin1}: not UTF-8 text (invalid start byte)"
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\n", encoding="utf-8")
    assert load_yaml_file(good).value["a"].source == str(good)


# ---- Fields ------------------------------------------------------------------------------


def _fields(text: str) -> Fields:
    return Fields(load_yaml_text(text, "f.yaml"))


def test_finish_suggests_the_closest_known_field() -> None:
    f = _fields("interval: 30s\nintervall: 5m\n")
    f.duration("interval")
    f.duration("timeout", 5.0)
    with pytest.raises(ConfigError) as excinfo:
        f.finish()
    assert str(excinfo.value) == (
        "f.yaml:2: intervall: unknown field (did you mean 'interval'?); allowed here: interval, timeout"
    )


def test_finish_without_a_close_match_lists_the_allowed_fields() -> None:
    f = _fields("colour: blue\n")
    f.str("name", "")
    f.int("size", 1)
    with pytest.raises(ConfigError) as excinfo:
        f.finish()
    assert str(excinfo.value) == "f.yaml:1: colour: unknown field; allowed here: name, size"


def test_finish_names_the_full_path_of_a_nested_unknown_field() -> None:
    root = load_yaml_text("sites:\n  lab:\n    descripton: x\n", "f.yaml")
    lab = Fields(root.value["sites"].value["lab"])
    lab.str("description", "")
    with pytest.raises(ConfigError) as excinfo:
        lab.finish()
    assert str(excinfo.value) == (
        "f.yaml:3: sites.lab.descripton: unknown field (did you mean 'description'?); "
        "allowed here: description"
    )


def test_finish_accepts_fields_that_were_read_even_if_absent_or_null() -> None:
    f = _fields("a: 1\nb:\n")
    assert f.int("a") == 1
    assert f.int("b", 7) == 7  # null means "not set"
    assert f.str("c", None) is None
    assert f.raw("d") is None
    f.finish()


def test_fields_refuses_a_non_mapping() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Fields(load_yaml_text("- a\n- b\n", "f.yaml"), "a catalogue")
    assert str(excinfo.value) == "f.yaml:1: expected a catalogue, got a list"


def test_missing_required_field_points_at_the_mapping() -> None:
    f = _fields("# comment\nname: x\n")
    with pytest.raises(ConfigError) as excinfo:
        f.str("site")
    assert str(excinfo.value) == "f.yaml:2: site: required field is missing"


@pytest.mark.parametrize(
    ("text", "read", "message"),
    [
        ("v: 5\n", lambda f: f.str("v"), "v: expected text, got a number (5)"),
        ("v: ''\n", lambda f: f.str("v"), "v: must not be empty"),
        ("v: true\n", lambda f: f.int("v"), "v: expected a whole number, got a boolean (true)"),
        ("v: 1.5\n", lambda f: f.int("v"), "v: expected a whole number, got a number (1.5)"),
        ("v: 0\n", lambda f: f.int("v", min=1), "v: must be at least 1"),
        ("v: 11\n", lambda f: f.int("v", max=10), "v: must be at most 10"),
        ("v: .inf\n", lambda f: f.number("v"), "v: must be a finite number"),
        ("v: x\n", lambda f: f.number("v"), "v: expected a number, got text ('x')"),
        ("v: 'yes'\n", lambda f: f.bool("v"), "v: expected true or false, got text ('yes')"),
        ("v: 500ms\n", lambda f: f.duration("v", min=1.0), "v: must be at least 1s"),
        ("v: 2d\n", lambda f: f.duration("v", max=86400.0), "v: must be at most 24h"),
        (
            "v: [a]\n",
            lambda f: f.duration("v"),
            "v: expected a duration with a unit such as 500ms, 30s or 5m, got a list",
        ),
        ("v: 0%\n", lambda f: f.percent("v"), "v: must be a percentage above 0 and at most 100"),
        ("v: 101\n", lambda f: f.percent("v"), "v: must be a percentage above 0 and at most 100"),
        ("v: .nan\n", lambda f: f.percent("v"), "v: must be a percentage above 0 and at most 100"),
        ("v: x%\n", lambda f: f.percent("v"), "v: expected a percentage such as 99.9%, got 'x%'"),
        (
            "v: true\n",
            lambda f: f.percent("v"),
            "v: expected a percentage such as 99.9%, got a boolean (true)",
        ),
        ("v: c\n", lambda f: f.choice("v", ("a", "b")), "v: must be one of a, b; got 'c'"),
        ("v: {}\n", lambda f: f.list("v"), "v: expected a list, got a mapping"),
        ("v: [a, 1]\n", lambda f: f.str_list("v"), "v[1]: expected text, got a number (1)"),
        ("v: {a: [1]}\n", lambda f: f.str_map("v"), "v.a: expected text, got a list"),
        ("v: [1]\n", lambda f: f.mapping("v"), "v: expected a mapping, got a list"),
        ("w: 1\n", lambda f: f.mapping("v", required=True), "v: required section is missing"),
    ],
)
def test_field_readers_reject_with_located_messages(text, read, message) -> None:
    with pytest.raises(ConfigError) as excinfo:
        read(_fields(text))
    assert str(excinfo.value) == f"f.yaml:1: {message}"


@pytest.mark.parametrize(
    ("text", "read", "value"),
    [
        ("v: 99.9%\n", lambda f: f.percent("v"), 99.9),
        ("v: ' 99.95 % '\n", lambda f: f.percent("v"), 99.95),
        ("v: 100\n", lambda f: f.percent("v"), 100.0),
        ("v: 42\n", lambda f: f.number("v"), 42.0),
        ("v: 1h30m\n", lambda f: f.duration("v"), 5400.0),
        ("v: {a: 1, b: x}\n", lambda f: f.str_map("v"), {"a": "1", "b": "x"}),
        ("v: ''\n", lambda f: f.str("v", nonempty=False), ""),
    ],
)
def test_field_readers_accept(text, read, value) -> None:
    assert read(_fields(text)) == value


def test_a_date_like_scalar_that_is_no_date_stays_text() -> None:
    from slaprobe.configfile import load_yaml_text

    root = load_yaml_text("when: 2026-13-01\n", "x.yaml")
    assert root.value["when"].value == "2026-13-01"
