"""Rendering rows as an aligned table, CSV or JSON: one option bundle for every report command."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

FORMATS = ("table", "json", "csv")


def format_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people, json for programs, csv for spreadsheets.",
    )(fn)


def db_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--db``: the collector's database, for every command that reads or administers it."""
    return click.option(
        "--db",
        "db_path",
        default="slaprobe.db",
        show_default=True,
        envvar="SLAPROBE_DB",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The collector's database.",
    )(fn)


def safe_output_path(path: Path, *, force: bool, inside: Path | None = None) -> Path:
    """Refuse to overwrite an existing file without ``force`` or to write outside ``inside``.

    Names in generated paths come from users (site and agent names are any Unicode), so a
    path is resolved and checked before anything is written.
    """
    resolved = path.resolve()
    if inside is not None and not resolved.is_relative_to(inside.resolve()):
        raise click.ClickException(f"{path}: refusing to write outside {inside}")
    if resolved.exists() and not force:
        raise click.ClickException(f"{path} exists; pass --force to overwrite it")
    if resolved.is_dir():
        raise click.ClickException(f"{path} is a directory")
    return resolved


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str = "") -> str:
    """Columns padded to their widest cell; ``aligns`` is one of l/r per column (default l)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(values):
            a = aligns[i] if i < len(aligns) else "l"
            out.append(v.rjust(widths[i]) if a == "r" else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


def render_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def render_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False)
