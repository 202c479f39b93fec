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
    reporting:           # optional, collector-wide (collector/sla/definitions.py)
      clock_bound: 100ms
      retention: {raw: 90d, rollups: 400d}
    sites:
      <site name>:
        description: text
        sla:             # the whole site as one service, "(site)"; every SLA key (see
          availability: 99.9%           # collector/sla/definitions.py) is allowed here
          latency: {percentile: 95, threshold: 300ms}
        services:        # optional: named groups of the site's checks, each with its SLA
          <service name>:
            description: text
            checks: [<check name>, ...]
            sla: {...}
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from collector.sla.definitions import (
    SITE_SERVICE,
    LatencyPercentile,
    Reporting,
    SlaDefinition,
    check_slice,
    parse_reporting,
    parse_sla,
)
from slaprobe.configfile import ConfigError, Fields, Node, format_duration, load_yaml_file, load_yaml_text
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
class Service:
    """A named group of a site's checks with its SLA (``(site)``: all of them, from the site's sla)."""

    name: str
    description: str
    checks: tuple[str, ...]  # check names within the site
    sla: SlaDefinition


@dataclass(frozen=True)
class Site:
    name: str
    description: str
    sla: SlaTarget
    checks: tuple[CheckSpec, ...]
    services: tuple[Service, ...] = ()

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)


@dataclass(frozen=True)
class Catalogue:
    sites: dict[str, Site]
    source: str
    text: str
    reporting: Reporting = field(default_factory=Reporting)

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
    if (
        root.value == {}
        and root.line == 1
        and not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())
    ):
        raise ConfigError(root.source, 1, "", "the file is empty: a catalogue needs a 'sites' section")
    doc = Fields(root, "a catalogue (a mapping with 'sites')")
    defaults = _Defaults(30.0, 5.0)
    d = doc.mapping("defaults")
    if d is not None:
        defaults = _Defaults(
            d.duration("interval", 30.0, min=MIN_INTERVAL_S, max=MAX_INTERVAL_S),
            d.duration("timeout", 5.0, min=0.001),
        )
        d.finish()
    reporting = parse_reporting(doc.mapping("reporting"))
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
    return Catalogue(sites, root.source, text, reporting)


def _parse_site(name: str, node: Node, defaults: _Defaults) -> Site:
    _check_name(node, name, "site")
    f = Fields(node, "a site (a mapping with 'checks')")
    description = f.str("description", "", nonempty=False)
    sla_fields = f.mapping("sla")
    site_sla = parse_sla(sla_fields)
    checks_fields = f.mapping("checks", required=True)
    assert checks_fields is not None
    checks = []
    for check_name in checks_fields:
        check_node = checks_fields.raw(check_name)
        assert check_node is not None
        checks.append(_parse_check(name, check_name, check_node, defaults))
    if not checks:
        checks_fields.node.fail("define at least one check")
    services_fields = f.mapping("services")
    f.finish()
    by_name = {c.name: c for c in checks}
    services: list[tuple[Service, Node]] = []
    if sla_fields is not None or services_fields is None:
        where = sla_fields.node if sla_fields is not None else node
        services.append((Service(SITE_SERVICE, description, tuple(by_name), site_sla), where))
    if services_fields is not None:
        for service_name in services_fields:
            service_node = services_fields.raw(service_name)
            assert service_node is not None
            services.append((_parse_service(name, service_name, service_node, by_name), service_node))
    for service, where in services:
        sla_node = _child(where, "sla") if service.name != SITE_SERVICE else where
        check_slice(service.sla, [by_name[c].interval_ms for c in service.checks], _slice_node(sla_node))
    checks = _apply_degraded_after(services, checks)
    return Site(name, description, _legacy_target(site_sla), tuple(checks), tuple(s for s, _ in services))


def _legacy_target(sla: SlaDefinition) -> SlaTarget:
    """The site row's summary (stored in ``sites.sla``): availability and the first percentile."""
    first = next((o for o in sla.latency if isinstance(o, LatencyPercentile)), None)
    latency = None if first is None else LatencyObjective(first.percentile, first.threshold_ms)
    return SlaTarget(sla.availability, latency)


def _parse_service(site: str, name: str, node: Node, checks: dict[str, CheckSpec]) -> Service:
    _check_name(node, name, "service")
    if name == SITE_SERVICE:
        node.fail(f"{SITE_SERVICE!r} is the name of the site-wide service (the site's 'sla'); choose another")
    f = Fields(node, "a service (a mapping with 'checks')")
    description = f.str("description", "", nonempty=False)
    names_node = f.raw("checks")
    if names_node is None or names_node.value is None:
        node.fail("required field 'checks' is missing")
    names = f.str_list("checks")
    if not names:
        names_node.fail("list at least one of the site's checks")
    seen: set[str] = set()
    for item, check_name in zip(names_node.value, names, strict=True):
        if check_name not in checks:
            item.fail(f"no check named {check_name!r} in site {site!r} (its checks: {', '.join(checks)})")
        if check_name in seen:
            item.fail(f"{check_name!r} is listed twice")
        seen.add(check_name)
    sla = parse_sla(f.mapping("sla"))
    f.finish()
    return Service(name, description, tuple(names), sla)


def _child(node: Node, key: str) -> Node:
    value = node.value.get(key) if node.is_mapping else None
    return value if value is not None else node


def _slice_node(sla_node: Node) -> Node:
    counting = _child(sla_node, "counting")
    return _child(counting, "slice") if counting is not sla_node else sla_node


def _apply_degraded_after(services: list[tuple[Service, Node]], checks: list[CheckSpec]) -> list[CheckSpec]:
    """An SLA's ``degraded_after`` becomes its checks' (the agent flags each result)."""
    chosen: dict[str, tuple[int, str]] = {}
    for service, where in services:
        ms = service.sla.degraded_after_ms
        if ms is None:
            continue
        sla_node = _child(where, "sla") if service.name != SITE_SERVICE else where
        at = _child(sla_node, "degraded_after")
        for c in checks:
            if c.name not in service.checks:
                continue
            if c.degraded_after_ms and c.degraded_after_ms != ms:
                at.fail(
                    f"check {c.name!r} sets its own degraded_after"
                    f" ({format_duration(c.degraded_after_ms / 1000)}); "
                    "set it in one place"
                )
            if c.name in chosen and chosen[c.name][0] != ms:
                at.fail(
                    f"check {c.name!r} is also in service {chosen[c.name][1]!r} with degraded_after"
                    f" {format_duration(chosen[c.name][0] / 1000)}; a check has one degraded threshold"
                )
            if ms >= c.timeout_ms:
                at.fail(f"must be shorter than the timeout of check {c.name!r} ({c.timeout_ms / 1000:g}s)")
            chosen[c.name] = (ms, service.name)
    return [
        replace(c, degraded_after_ms=chosen[c.name][0]).with_revision() if c.name in chosen else c
        for c in checks
    ]


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
        own_timeout, own_interval = f.raw("timeout"), f.raw("interval")
        where = own_timeout or own_interval or node
        t_from = "" if own_timeout else ", from defaults"
        i_from = "" if own_interval else ", from defaults"
        where.fail(
            f"timeout ({timeout:g}s{t_from}) must be shorter than the interval ({interval:g}s{i_from})"
        )
    if degraded_after and degraded_after >= timeout:
        degraded_node = f.raw("degraded_after")
        assert degraded_node is not None
        degraded_node.fail(
            f"must be shorter than the timeout ({timeout:g}s): a probe that slow has already failed"
        )
    # Imported here: every probe module (asyncssh, dnspython, h2, ...) is ~0.6 s of imports that
    # only validating a catalogue needs, not the collector's decode worker, which imports this
    # module through the store and starts as a new interpreter.
    from probes import build_prober

    prober = build_prober(type_node, target_node, settings_node)  # validates; raises ConfigError
    if prober.min_timeout_s and timeout < prober.min_timeout_s:
        where = f.raw("timeout") or settings_node or node
        where.fail(
            f"timeout ({timeout:g}s) is shorter than a run of this {type_node.value} check takes"
            f" ({prober.min_timeout_s:g}s); raise the timeout or shorten the run"
        )
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
