"""Incident tagging (domain.md, "Service halls, feedback, incidents and quality control"; seed:
the service manual §3.2, §5.3, response levels 1 emergency, 2 general, 3 routine).

Rule: a ``contact.completed`` or ``complaint.filed`` in an affected city while an incident is
open, ``detected_at <= occurred_at < resolved_at`` (or not resolved yet), is tagged with the
incident's id. Ops see contact volume per city per hour with the open incidents overlaid.

Why this is a join on event time and not a fold of the partitions: an incident is an operational
event keyed by its incident_id, so it sits on one ledger partition, while the contacts and
complaints of its cities are customer events on every partition. A partition fold cannot see
another partition's incidents, and tagging by what happened to arrive first would make live and
replay disagree. The tag depends only on event times and cities, never on arrival order, so it is
computed where the whole ledger is, by this rule: the ClickHouse views ``incidents``,
``incident_tags`` and ``contact_volume_hourly`` (migration 2) run it over the ledger (a replay
has nothing to recompute: the views are the ledger's, and equal by construction), and
``cxledger customer`` tags a customer's timeline with :func:`tags`. An incident resolved later
closes its interval for every contact at once, however late its resolution arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

DETECTED = "incident.detected"
RESOLVED = "incident.resolved"
TAGGED_TYPES = frozenset({"contact.completed", "complaint.filed"})


@dataclass(frozen=True)
class Incident:
    incident_id: str
    level: int
    service: str
    cities: tuple[str, ...]
    detected_at: int
    resolved_at: int | None = None  # None while open

    def open_at(self, at: int) -> bool:
        return self.detected_at <= at and (self.resolved_at is None or at < self.resolved_at)


def incidents_from(events: Iterable[Mapping]) -> dict[str, Incident]:
    """The incidents of ``incident.detected`` / ``incident.resolved`` events (any order): the
    first detection (its level, service and cities), the first resolution after... any."""
    detected: dict[str, Mapping] = {}
    resolved: dict[str, int] = {}
    for e in events:
        iid = e["incident_id"]
        if e["event_type"] == DETECTED:
            if iid not in detected or e["occurred_at"] < detected[iid]["occurred_at"]:
                detected[iid] = e
        elif e["event_type"] == RESOLVED:
            resolved[iid] = min(resolved.get(iid, e["occurred_at"]), e["occurred_at"])
    return {iid: Incident(iid, int(d["level"]), d["service"], tuple(d["cities"]),
                          d["occurred_at"], resolved.get(iid))
            for iid, d in sorted(detected.items())}


def tags(event: Mapping, incidents: Iterable[Incident]) -> list[str]:
    """The ids of the incidents ``event`` is tagged with (sorted; [] for other event types)."""
    if event["event_type"] not in TAGGED_TYPES:
        return []
    at, city = event["occurred_at"], event["city"]
    return sorted(i.incident_id for i in incidents if city in i.cities and i.open_at(at))
