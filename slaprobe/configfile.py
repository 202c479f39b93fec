"""Configuration documents that remember where every value came from.

Every config error a user sees must name the file, the line and the field,
because the person reading it is an operator with a 300-line catalogue open
in an editor. PyYAML's composer keeps line marks on every node, so we parse
to nodes and convert them ourselves into a tree of :class:`Node` objects that
carry ``source``, ``line`` and a dotted ``path``. The same tree can be built
from plain Python values (settings arriving as JSON over gRPC), in which case
errors name the source and field without a line.

:class:`Fields` reads one mapping key by key and rejects, in :meth:`finish`,
every key nobody asked for: a typo (``intervall``) is an error with a
suggestion, never a silently ignored setting.
"""

from __future__ import annotations

import builtins
import difflib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "Fields",
    "Node",
    "load_yaml_file",
    "load_yaml_text",
    "parse_duration",
]

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, located as precisely as we know it."""

    def __init__(self, source: str, line: int | None, field: str, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Node:
    """One value of a config document with its location.

    ``value`` is ``dict[str, Node]`` for mappings, ``list[Node]`` for
    sequences, and a plain scalar (str, int, float, bool, None) otherwise.
    """

    value: Any
    source: str
    line: int | None
    path: str

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.source, self.line, self.path, message)

    def fail(self, message: str) -> NoReturn:
        raise self.error(message)

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_list(self) -> bool:
        return isinstance(self.value, list)

    def to_python(self) -> Any:
        """Drop locations; used to forward validated settings as JSON."""
        if isinstance(self.value, dict):
            return {k: v.to_python() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.to_python() for v in self.value]
        return self.value

    @classmethod
    def from_python(cls, value: Any, source: str, path: str = "") -> Node:
        if isinstance(value, dict):
            return cls(
                {str(k): cls.from_python(v, source, _join(path, str(k))) for k, v in value.items()},
                source,
                None,
                path,
            )
        if isinstance(value, list):
            return cls(
                [cls.from_python(v, source, f"{path}[{i}]") for i, v in enumerate(value)],
                source,
                None,
                path,
            )
        return cls(value, source, None, path)


def _join(path: str, key: str) -> str:
    if not path:
        return key
    # Keys that themselves contain dots or brackets are quoted so the path stays unambiguous.
    if re.fullmatch(r"[\w\-]+", key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


_SCALARS = yaml.constructor.SafeConstructor()


def _convert(node: yaml.Node, source: str, path: str) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(source, key_node.start_mark.line + 1, path, "keys must be plain names")
            # Keys are names: keep the text as written. Constructing them would turn a site
            # named `no` or `off` into "False" and a check named `1.50` into "1.5".
            key = str(key_node.value)
            _check_text(key, source, key_node.start_mark.line + 1, path)
            if key == "<<":
                raise ConfigError(
                    source, key_node.start_mark.line + 1, path, "YAML merge keys (<<) are not supported"
                )
            if key in out:
                raise ConfigError(
                    source,
                    key_node.start_mark.line + 1,
                    _join(path, key),
                    # The key's own line: a block value starts on the line after its key.
                    f"duplicate key (first defined on line {key_lines[key]})",
                )
            key_lines[key] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, source, _join(path, key))
        return Node(out, source, line, path)
    if isinstance(node, yaml.SequenceNode):
        return Node(
            [_convert(item, source, f"{path}[{i}]") for i, item in enumerate(node.value)],
            source,
            line,
            path,
        )
    try:
        value = _SCALARS.construct_object(node)
    except ValueError:  # a date-like scalar that is no date, e.g. 2026-13-01: keep the text as written
        value = str(node.value)
    except yaml.YAMLError as exc:  # e.g. an unknown tag such as !0
        raise ConfigError(
            source, line, path, f"unsupported YAML value: {getattr(exc, 'problem', None) or exc}"
        ) from None
    if not isinstance(value, str | int | float | bool | type(None)):
        # Dates and timestamps: keep the text as written; fields parse it themselves.
        value = str(node.value)
    if isinstance(value, str):
        _check_text(value, source, line, path)
    return Node(value, source, line, path)


def _check_text(text: str, source: str, line: int | None, path: str) -> None:
    """Refuse text that cannot be stored or shown faithfully (lone surrogates, NUL)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            source, line, path, "invalid Unicode (a lone surrogate, e.g. a \\ud83d escape without its pair)"
        ) from None
    if "\x00" in text:
        raise ConfigError(source, line, path, "text must not contain NUL")


def load_yaml_text(text: str, source: str) -> Node:
    """Parse a YAML document into located nodes; syntax errors become ConfigError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, line, "", f"invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, "", f"invalid YAML: {exc}") from exc
    if root is None:
        return Node({}, source, 1, "")
    return _convert(root, source, "")


def load_yaml_file(path: str | Path) -> Node:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(str(p), None, "", "file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), None, "", f"not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(str(p), None, "", f"cannot read: {exc.strerror}") from exc
    return load_yaml_text(text, str(p))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|s|m|h|d)")
_UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse ``250ms``, ``30s``, ``1h30m`` into seconds; raise ValueError otherwise.

    Bare numbers are refused on purpose: ``timeout: 5`` has cost people
    a night of pages when one tool read it as milliseconds and another as seconds.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"expected a duration with a unit such as 500ms, 30s, 5m or 1h30m, got {text!r}")
    return total


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)")
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_size(text: str) -> int:
    """Parse ``512MiB``, ``2GB``, ``100KiB`` into bytes; bare numbers are refused like durations."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"expected a size with a unit such as 512MiB or 2GB, got {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


class Fields:
    """Reads a mapping node key by key; :meth:`finish` rejects unread keys."""

    _MISSING: Any = object()

    def __init__(self, node: Node, what: builtins.str = "a mapping") -> None:
        if not node.is_mapping:
            node.fail(f"expected {what}, got {_describe(node.value)}")
        self.node = node
        self._items: dict[builtins.str, Node] = node.value
        self._read: set[builtins.str] = set()

    def __contains__(self, key: builtins.str) -> builtins.bool:
        return key in self._items

    def __iter__(self) -> Iterator[builtins.str]:
        return iter(self._items)

    def keys(self) -> Iterator[builtins.str]:
        return iter(self._items)

    def raw(self, key: builtins.str) -> Node | None:
        self._read.add(key)
        return self._items.get(key)

    def _take(self, key: builtins.str, default: Any, convert: Callable[[Node], T]) -> T:
        self._read.add(key)
        node = self._items.get(key)
        if node is None or node.value is None:
            if default is Fields._MISSING:
                raise ConfigError(
                    self.node.source,
                    node.line if node is not None else self.node.line,
                    _join(self.node.path, key),
                    "required field is missing",
                )
            return default  # type: ignore[no-any-return]
        return convert(node)

    def str(self, key: builtins.str, default: Any = _MISSING, *, nonempty: builtins.bool = True) -> Any:
        def conv(n: Node) -> builtins.str:
            if not isinstance(n.value, str):
                n.fail(f"expected text, got {_describe(n.value)}")
            if nonempty and not n.value.strip():
                n.fail("must not be empty")
            return n.value

        return self._take(key, default, conv)

    def int(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> Any:
        def conv(n: Node) -> builtins.int:
            if isinstance(n.value, bool) or not isinstance(n.value, int):
                n.fail(f"expected a whole number, got {_describe(n.value)}")
            _check_range(n, n.value, min, max)
            return n.value

        return self._take(key, default, conv)

    def number(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> Any:
        def conv(n: Node) -> builtins.float:
            if isinstance(n.value, bool) or not isinstance(n.value, int | float):
                n.fail(f"expected a number, got {_describe(n.value)}")
            v = float(n.value)
            if not math.isfinite(v):
                n.fail("must be a finite number")
            _check_range(n, v, min, max)
            return v

        return self._take(key, default, conv)

    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        def conv(n: Node) -> builtins.bool:
            if not isinstance(n.value, bool):
                n.fail(f"expected true or false, got {_describe(n.value)}")
            return n.value

        return self._take(key, default, conv)

    def duration(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> Any:
        def conv(n: Node) -> builtins.float:
            if not isinstance(n.value, str):
                n.fail(f"expected a duration with a unit such as 500ms, 30s or 5m, got {_describe(n.value)}")
            try:
                v = parse_duration(n.value)
            except ValueError as exc:
                n.fail(str(exc))
            if min is not None and v < min:
                n.fail(f"must be at least {format_duration(min)}")
            if max is not None and v > max:
                n.fail(f"must be at most {format_duration(max)}")
            return v

        return self._take(key, default, conv)

    def size(self, key: builtins.str, default: Any = _MISSING, *, min: builtins.int = 0) -> Any:
        def conv(n: Node) -> builtins.int:
            if not isinstance(n.value, str):
                n.fail(f"expected a size with a unit such as 512MiB or 2GB, got {_describe(n.value)}")
            try:
                v = parse_size(n.value)
            except ValueError as exc:
                n.fail(str(exc))
            if v < min:
                n.fail(f"must be at least {min} bytes")
            return v

        return self._take(key, default, conv)

    def percent(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """``99.9%`` or ``99.9``: a percentage strictly between 0 and 100 inclusive."""

        def conv(n: Node) -> builtins.float:
            raw = n.value
            if isinstance(raw, str) and raw.strip().endswith("%"):
                try:
                    raw = float(raw.strip()[:-1])
                except ValueError:
                    n.fail(f"expected a percentage such as 99.9%, got {n.value!r}")
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                n.fail(f"expected a percentage such as 99.9%, got {_describe(n.value)}")
            v = float(raw)
            if not (0.0 < v <= 100.0):
                n.fail("must be a percentage above 0 and at most 100")
            return v

        return self._take(key, default, conv)

    def choice(
        self,
        key: builtins.str,
        choices: tuple[builtins.str, ...] | builtins.list[builtins.str],
        default: Any = _MISSING,
    ) -> Any:
        def conv(n: Node) -> builtins.str:
            if n.value not in choices:
                n.fail(f"must be one of {', '.join(choices)}; got {n.value!r}")
            return str(n.value)

        return self._take(key, default, conv)

    def mapping(self, key: builtins.str, *, required: builtins.bool = False) -> Fields | None:
        self._read.add(key)
        node = self._items.get(key)
        if node is None or node.value is None:
            if required:
                raise ConfigError(
                    self.node.source,
                    self.node.line,
                    _join(self.node.path, key),
                    "required section is missing",
                )
            return None
        return Fields(node, "a mapping")

    def list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        def conv(n: Node) -> builtins.list[Node]:
            if not n.is_list:
                n.fail(f"expected a list, got {_describe(n.value)}")
            return list(n.value)

        return self._take(key, default, conv)

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        def conv(n: Node) -> builtins.list[builtins.str]:
            if not n.is_list:
                n.fail(f"expected a list, got {_describe(n.value)}")
            out = []
            for item in n.value:
                if not isinstance(item.value, str):
                    item.fail(f"expected text, got {_describe(item.value)}")
                out.append(item.value)
            return out

        return self._take(key, default, conv)

    def str_map(self, key: builtins.str, default: Any = _MISSING) -> Any:
        def conv(n: Node) -> dict[builtins.str, builtins.str]:
            if not n.is_mapping:
                n.fail(f"expected a mapping of names to text, got {_describe(n.value)}")
            out = {}
            for k, item in n.value.items():
                if not isinstance(item.value, str | int | float) or isinstance(item.value, bool):
                    item.fail(f"expected text, got {_describe(item.value)}")
                out[k] = str(item.value)
            return out

        return self._take(key, default, conv)

    def finish(self) -> None:
        """Reject every key that no reader asked for, suggesting the likely intended one."""
        for key, node in self._items.items():
            if key in self._read:
                continue
            hint = difflib.get_close_matches(key, sorted(self._read), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            allowed = ", ".join(sorted(self._read))
            raise ConfigError(
                node.source,
                node.line,
                _join(self.node.path, key),
                f"unknown field{suggestion}; allowed here: {allowed}",
            )


def _check_range(n: Node, v: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and v < lo:
        n.fail(f"must be at least {lo:g}")
    if hi is not None and v > hi:
        n.fail(f"must be at most {hi:g}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def format_duration(seconds: float) -> str:
    """Render seconds the way a person writes them in config: 250ms, 30s, 5m, 1h30m."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    h, m = divmod(minutes, 60)
    return f"{h}h{m}m" if m else f"{h}h"
