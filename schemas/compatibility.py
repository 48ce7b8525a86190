"""BACKWARD_TRANSITIVE compatibility of the schema history, with the `avro` package's checker.

BACKWARD_TRANSITIVE (as a Confluent schema registry defines it): consumers using the newest
schema can read data written with every earlier version. So for each event type, the latest
version as reader must be compatible with each earlier version as writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.catalogue import Catalogue, SchemaVersion


@dataclass(frozen=True)
class Incompatibility:
    reader: SchemaVersion
    writer: SchemaVersion
    messages: tuple[str, ...]

    def __str__(self) -> str:
        why = "; ".join(self.messages) or "incompatible"
        return (
            f"{self.reader.path}: v{self.reader.version} cannot read data written with "
            f"v{self.writer.version} ({why})"
        )


def check_pair(reader: SchemaVersion, writer: SchemaVersion) -> Incompatibility | None:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(reader.text), avro.schema.parse(writer.text)
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    return Incompatibility(reader, writer, tuple(sorted(result.messages)))


def check_backward_transitive(catalogue: Catalogue) -> list[Incompatibility]:
    """Every incompatibility between a type's latest version and any earlier version."""
    problems = []
    for versions in catalogue.versions.values():
        latest = versions[-1]
        for earlier in versions[:-1]:
            problem = check_pair(latest, earlier)
            if problem:
                problems.append(problem)
    return problems
