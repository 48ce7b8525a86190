"""The schema catalogue: every version of every event schema kept in the repository.

Layout: ``schemas/avro/<event_type>/v<N>.avsc``. The highest version of a type is the
contract producers write today; the earlier versions are kept so that data written with
them stays readable and so that every change can be checked for BACKWARD_TRANSITIVE
compatibility (see ``schemas.compatibility``). ``schemas/ids.json`` assigns each
(event type, version) the schema id used on the wire when no schema registry is configured,
so separate processes agree on ids without a server.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(__file__).parent / "avro"
IDS_FILE = Path(__file__).parent / "ids.json"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")

# Interaction events are published by channels; derived events only by the processors.
DERIVED_TYPES = frozenset(
    {
        "satisfaction.scored",
        "satisfaction.window_updated",
        "satisfaction.windows_updated",
        "complaint.sla_breached",
        "complaint.state_changed",
        "churn.risk_changed",
        "tier.change_proposed",
        "tier.changed",
        "hall.survey_month_updated",
        "hall.survey_month_closed",
        "hall.key_improvement_flagged",
        "hall.key_improvement_cleared",
        "feedback.sla_breached",
    }
)

# Operational events have no customer (domain.md, "Service halls, feedback, incidents and quality
# control"): their schemas have no customer_id, and they are keyed on Kafka by this field instead.
# Every other event is keyed by customer_id.
OPERATIONAL_KEYS: dict[str, str] = {
    "supervision.onsite_shift": "hall_id",
    "quality.spot_check_recorded": "unit_id",
    "staff.exam_scored": "agent_id",
    "incident.detected": "incident_id",
    "incident.resolved": "incident_id",
}


def key_field(event_type: str) -> str:
    """The field an event of this type is keyed by on Kafka: customer_id, or for the
    operational types their own key (hall_id, unit_id, agent_id, incident_id)."""
    return OPERATIONAL_KEYS.get(event_type, "customer_id")


class CatalogueError(ValueError):
    """The schema files or the id file are inconsistent."""


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event schema."""

    event_type: str
    version: int
    schema_id: int
    path: Path
    definition: dict[str, Any] = field(repr=False, compare=False)

    @property
    def full_name(self) -> str:
        return f"{self.definition['namespace']}.{self.definition['name']}"

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.definition["fields"])

    @property
    def text(self) -> str:
        """Canonical JSON text of the schema, as registered with a schema registry."""
        return json.dumps(self.definition, separators=(",", ":"), ensure_ascii=False)

    @property
    def parsed(self) -> dict[str, Any]:
        return _parse(self.path)


@cache
def _parse(path: Path) -> dict[str, Any]:
    return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True, eq=False)
class Catalogue:
    """All schema versions, by event type and by wire id."""

    versions: dict[str, tuple[SchemaVersion, ...]]

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(sorted(self.versions))

    @property
    def interaction_types(self) -> tuple[str, ...]:
        return tuple(t for t in self.event_types if t not in DERIVED_TYPES)

    @property
    def derived_types(self) -> tuple[str, ...]:
        return tuple(t for t in self.event_types if t in DERIVED_TYPES)

    def latest(self, event_type: str) -> SchemaVersion:
        try:
            return self.versions[event_type][-1]
        except KeyError:
            known = ", ".join(self.event_types)
            raise KeyError(f"unknown event_type {event_type!r}; known types: {known}") from None

    def by_id(self) -> dict[int, SchemaVersion]:
        return {v.schema_id: v for vs in self.versions.values() for v in vs}


def load_catalogue(schema_dir: Path = SCHEMA_DIR, ids_file: Path = IDS_FILE) -> Catalogue:
    """Load and validate every schema version; raise CatalogueError naming the file."""
    ids: dict[str, dict[str, int]] = json.loads(ids_file.read_text(encoding="utf-8"))["ids"]
    versions: dict[str, tuple[SchemaVersion, ...]] = {}
    seen_ids: dict[int, str] = {}
    for type_dir in sorted(p for p in schema_dir.iterdir() if p.is_dir()):
        event_type = type_dir.name
        found = []
        for path in sorted(type_dir.glob("*.avsc")):
            match = _VERSION_FILE.match(path.name)
            if not match:
                raise CatalogueError(f"{path}: schema files must be named v<N>.avsc")
            version = int(match.group(1))
            try:
                definition = json.loads(path.read_text(encoding="utf-8"))
                fastavro.parse_schema(definition)
            except (ValueError, fastavro.schema.SchemaParseException) as exc:
                raise CatalogueError(f"{path}: not a valid Avro schema: {exc}") from exc
            try:
                schema_id = int(ids[event_type][str(version)])
            except KeyError:
                raise CatalogueError(
                    f"{path}: no schema id in {ids_file.name}; add "
                    f'"{event_type}": {{"{version}": <next free id>}}'
                ) from None
            if schema_id in seen_ids:
                raise CatalogueError(
                    f"{ids_file.name}: id {schema_id} used by both {seen_ids[schema_id]} "
                    f"and {event_type} v{version}"
                )
            seen_ids[schema_id] = f"{event_type} v{version}"
            _check_event_type_default(path, definition, event_type)
            found.append(SchemaVersion(event_type, version, schema_id, path, definition))
        found.sort(key=lambda v: v.version)
        if [v.version for v in found] != list(range(1, len(found) + 1)):
            raise CatalogueError(f"{type_dir}: versions must be v1..vN without gaps")
        versions[event_type] = tuple(found)
    return Catalogue(versions)


def _check_event_type_default(path: Path, definition: dict[str, Any], event_type: str) -> None:
    for f in definition.get("fields", []):
        if f["name"] == "event_type":
            if f.get("default") != event_type:
                raise CatalogueError(f"{path}: field event_type must default to {event_type!r}")
            return
    raise CatalogueError(f"{path}: missing the envelope field event_type")


@cache
def default_catalogue() -> Catalogue:
    return load_catalogue()
