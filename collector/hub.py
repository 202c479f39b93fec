"""The catalogue in force and its fan-out to watching agents.

Each agent follows its site's checks through a subscription. Its first
message is computed against what the agent says it already runs (a
reconnect is a diff, not a full resend); every later catalogue change is
pushed to each subscriber of the affected site as upserts and deletes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from collector.catalogue import Catalogue
from slaprobe.model import CheckSpec


@dataclass(frozen=True)
class CheckDiff:
    upserts: tuple[CheckSpec, ...] = ()
    deletes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def diff(old: Mapping[str, str], new: Mapping[str, CheckSpec]) -> CheckDiff:
    """What turns a set of (id → revision) into ``new``."""
    upserts = tuple(spec for cid, spec in sorted(new.items()) if old.get(cid) != spec.revision)
    deletes = tuple(sorted(cid for cid in old if cid not in new))
    return CheckDiff(upserts, deletes)


@dataclass(eq=False)
class Subscription:
    site: str
    queue: asyncio.Queue[CheckDiff] = field(default_factory=asyncio.Queue)


@dataclass(frozen=True)
class CheckRef:
    """A check as stored: its row id and site. Includes checks no longer in the catalogue."""

    row_id: int
    site: str


class CatalogueHub:
    def __init__(self, catalogue: Catalogue, refs: Mapping[str, CheckRef]) -> None:
        self._catalogue = catalogue
        self._refs = dict(refs)
        self._site_checks: dict[str, dict[str, int]] = {}
        self._subscribers: set[Subscription] = set()

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    def has_site(self, site: str) -> bool:
        return site in self._catalogue.sites

    def check_ref(self, check_key: str) -> CheckRef | None:
        return self._refs.get(check_key)

    def site_checks(self, site: str) -> dict[str, int]:
        """Check key → row id of every check stored for ``site`` (current or historical); do not modify."""
        found = self._site_checks.get(site)
        if found is None:
            found = self._site_checks[site] = {k: r.row_id for k, r in self._refs.items() if r.site == site}
        return found

    def subscribe(self, site: str) -> Subscription:
        sub = Subscription(site)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def first_diff(self, site: str, known: Mapping[str, str]) -> CheckDiff:
        return diff(known, self._catalogue.checks_for_site(site))

    def replace(self, catalogue: Catalogue, refs: Mapping[str, CheckRef]) -> int:
        """Swap in a new catalogue; push the changes; return how many subscribers were told."""
        old = self._catalogue
        self._catalogue = catalogue
        self._refs = dict(refs)
        self._site_checks = {}
        told = 0
        for sub in list(self._subscribers):
            before = {cid: spec.revision for cid, spec in old.checks_for_site(sub.site).items()}
            change = diff(before, catalogue.checks_for_site(sub.site))
            if change:
                sub.queue.put_nowait(change)
                told += 1
        return told
