"""The catalogue: sites, their checks and SLA targets, loaded from one YAML file.

Everything is validated at load, before anything is pushed to an agent:
unknown keys, wrong types, impossible combinations (a timeout not shorter
than the interval) and every probe's own settings (each prober validates
its part). Errors name the file, the line and the field. A catalogue that
fails validation is never half-applied: the collector keeps running the
previous one.

Format (see ``examples/catalogue.yaml`` and the README's reference)::

    defaults:            # optional, applied to every check
      interval: 30s
      timeout: 5s
    sites:
      <site name>:
        description: text
        sla:
          availability: 99.9%
          latency: {percentile: 95, threshold: 300ms}
        checks:
          <check name>:
            type: http | tcp | ...
            target: ...
            interval: 30s
            timeout: 5s
            degraded_after: 1s
            settings: {...}      # the probe type's own settings
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from probes import build_prober
from slaprobe.configfile import Fields, Node, load_yaml_file, load_yaml_text
from slaprobe.model import CheckSpec, check_id

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 86400.0


@dataclass(frozen=True)
class LatencyObjective:
    """``percentile`` of successful probe latencies must be at most ``threshold_ms``."""

    percentile: float
    threshold_ms: float


@dataclass(frozen=True)
class SlaTarget:
    availability: float | None = None  # percent, e.g. 99.9
    latency: LatencyObjective | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "availability": self.availability,
            "latency": None
            if self.latency is None
            else {"percentile": self.latency.percentile, "threshold_ms": self.latency.threshold_ms},
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SlaTarget:
        lat = data.get("latency")
        availability = data.get("availability")
        return cls(
            availability=float(availability) if isinstance(availability, int | float) else None,
            latency=LatencyObjective(float(lat["percentile"]), float(lat["threshold_ms"]))
            if isinstance(lat, dict)
            else None,
        )


@dataclass(frozen=True)
class Site:
    name: str
    description: str
    sla: SlaTarget
    checks: tuple[CheckSpec, ...]


@dataclass(frozen=True)
class Catalogue:
    sites: dict[str, Site]
    source: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def checks_for_site(self, site: str) -> dict[str, CheckSpec]:
        s = self.sites.get(site)
        return {} if s is None else {c.id: c for c in s.checks}

    def all_checks(self) -> list[CheckSpec]:
        return [c for s in self.sites.values() for c in s.checks]


def load_catalogue(path: str | Path) -> Catalogue:
    p = Path(path)
    root = load_yaml_file(p)
    return _parse(root, p.read_text(encoding="utf-8"))


def parse_catalogue(text: str, source: str) -> Catalogue:
    return _parse(load_yaml_text(text, source), text)


@dataclass(frozen=True)
class _Defaults:
    interval: float
    timeout: float


def _parse(root: Node, text: str) -> Catalogue:
    doc = Fields(root, "a catalogue (a mapping with 'sites')")
    defaults = _Defaults(30.0, 5.0)
    d = doc.mapping("defaults")
    if d is not None:
        defaults = _Defaults(
            d.duration("interval", 30.0, min=MIN_INTERVAL_S, max=MAX_INTERVAL_S),
            d.duration("timeout", 5.0, min=0.001),
        )
        d.finish()
    sites_fields = doc.mapping("sites", required=True)
    assert sites_fields is not None
    sites: dict[str, Site] = {}
    for name in sites_fields:
        node = sites_fields.raw(name)
        assert node is not None
        sites[name] = _parse_site(name, node, defaults)
    if not sites:
        sites_fields.node.fail("define at least one site")
    doc.finish()
    return Catalogue(sites, root.source, text)


def _parse_site(name: str, node: Node, defaults: _Defaults) -> Site:
    _check_name(node, name, "site")
    f = Fields(node, "a site (a mapping with 'checks')")
    description = f.str("description", "", nonempty=False)
    sla = _parse_sla(f.mapping("sla"))
    checks_fields = f.mapping("checks", required=True)
    assert checks_fields is not None
    checks = []
    for check_name in checks_fields:
        check_node = checks_fields.raw(check_name)
        assert check_node is not None
        checks.append(_parse_check(name, check_name, check_node, defaults))
    if not checks:
        checks_fields.node.fail("define at least one check")
    f.finish()
    return Site(name, description, sla, tuple(checks))


def _parse_sla(f: Fields | None) -> SlaTarget:
    if f is None:
        return SlaTarget()
    availability = f.percent("availability", None)
    latency = None
    lat = f.mapping("latency")
    if lat is not None:
        percentile = lat.number("percentile", min=0.0, max=100.0)
        if percentile <= 0 or percentile >= 100:
            node = lat.raw("percentile")
            assert node is not None
            node.fail("must be above 0 and below 100, for example 95 or 99.9")
        threshold = lat.duration("threshold", min=0.0)
        if threshold <= 0:
            node = lat.raw("threshold")
            assert node is not None
            node.fail("must be longer than 0ms")
        lat.finish()
        latency = LatencyObjective(percentile, threshold * 1000.0)
    f.finish()
    return SlaTarget(availability, latency)


def _parse_check(site: str, name: str, node: Node, defaults: _Defaults) -> CheckSpec:
    _check_name(node, name, "check")
    f = Fields(node, "a check (a mapping with type and target)")
    type_node = f.raw("type")
    target_node = f.raw("target")
    if type_node is None or type_node.value is None:
        node.fail("required field 'type' is missing")
    if target_node is None or target_node.value is None:
        node.fail("required field 'target' is missing")
    interval = f.duration("interval", defaults.interval, min=MIN_INTERVAL_S, max=MAX_INTERVAL_S)
    timeout = f.duration("timeout", defaults.timeout, min=0.001)
    degraded_after = f.duration("degraded_after", 0.0, min=0.0)
    settings_node = f.raw("settings")
    f.finish()
    if timeout >= interval:
        where = f.raw("timeout") or f.raw("interval") or node
        where.fail(f"timeout ({timeout:g}s) must be shorter than the interval ({interval:g}s)")
    if degraded_after and degraded_after >= timeout:
        degraded_node = f.raw("degraded_after")
        assert degraded_node is not None
        degraded_node.fail(
            f"must be shorter than the timeout ({timeout:g}s): a probe that slow has already failed"
        )
    build_prober(type_node, target_node, settings_node)  # validates; raises ConfigError
    settings = settings_node.to_python() if settings_node is not None and settings_node.value else {}
    return CheckSpec(
        id=check_id(site, name),
        site=site,
        name=name,
        type=str(type_node.value),
        target=str(target_node.value),
        interval_ms=round(interval * 1000),
        timeout_ms=round(timeout * 1000),
        settings=settings,
        degraded_after_ms=round(degraded_after * 1000),
    ).with_revision()


def _check_name(node: Node, name: str, what: str) -> None:
    if not name.strip():
        node.fail(f"a {what} name must not be blank")
    if "\x00" in name:
        node.fail(f"a {what} name must not contain NUL")
