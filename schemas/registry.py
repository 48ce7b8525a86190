"""Schema ids from a Confluent-compatible schema registry (confluent-kafka's client).

Subjects follow the RecordNameStrategy: one subject per record (e.g.
``cxledger.events.ContactCompleted``), so every topic carrying a type shares its history.
``register_all`` (the ``cxledger schemas register`` command) registers every kept version in
order and sets BACKWARD_TRANSITIVE on each subject, so the registry enforces what the repository
tests check.

``mock://<name>`` (confluent-kafka's MockSchemaRegistryClient, for development and tests) is a
registry in the memory of the client itself: each ``registry_client("mock://...")`` starts empty
and no other process (or client) sees what it registers; it hands out ids 1, 2, 3, ... in
registration order and has no compatibility API, so ``register_all`` registers there without
setting the compatibility level (the repository's own check, ``cxledger schemas check``, still
applies).

A registry hands out its own ids, which generally differ from ``schemas/ids.json``'s (a fresh
registry's 1, 2, 3, ... even overlap them, for other schemas): every process must use the same
registry or none. cxledger.schema_ids checks that at start.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from schemas.catalogue import Catalogue, default_catalogue

COMPATIBILITY = "BACKWARD_TRANSITIVE"


def registry_client(url: str, basic_auth: str | None = None) -> SchemaRegistryClient:
    conf: dict[str, Any] = {"url": url}
    if basic_auth:
        conf["basic.auth.user.info"] = basic_auth
    return SchemaRegistryClient.new_client(conf)  # also accepts mock:// (see the docstring)


def is_mock(client: SchemaRegistryClient) -> bool:
    """confluent-kafka's in-memory registry (``mock://``)."""
    return type(client).__name__ == "MockSchemaRegistryClient"


class RegistryIds:
    """Ids looked up in (and, with auto_register, registered to) a schema registry."""

    def __init__(self, client: SchemaRegistryClient, catalogue: Catalogue | None = None,
                 auto_register: bool = False):
        self.client = client
        self.catalogue = catalogue or default_catalogue()
        self.auto_register = auto_register
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, tuple[str, dict[str, Any]]] = {}

    def describe(self) -> str:
        return "ids from the schema registry of CXLEDGER_SCHEMA_REGISTRY_URL"

    def writer_id(self, event_type: str) -> int:
        schema_id = self._ids.get(event_type)
        if schema_id is None:
            latest = self.catalogue.latest(event_type)
            schema = Schema(latest.text, "AVRO")
            if self.auto_register:
                schema_id = self.client.register_schema(latest.full_name, schema)
            else:
                schema_id = self.client.lookup_schema(latest.full_name, schema).schema_id
            self._ids[event_type] = schema_id
        return schema_id

    def schema_for_id(self, schema_id: int) -> tuple[str, dict[str, Any]]:
        found = self._schemas.get(schema_id)
        if found is None:
            try:
                schema = self.client.get_schema(schema_id)
            except Exception as exc:
                raise KeyError(schema_id) from exc
            definition = json.loads(schema.schema_str)
            event_type = next(
                (f.get("default") for f in definition.get("fields", []) if f["name"] == "event_type"),
                None,
            )
            if not event_type:
                raise KeyError(schema_id)
            found = (event_type, definition)
            self._schemas[schema_id] = found
        return found


def register_all(client: SchemaRegistryClient, catalogue: Catalogue | None = None) -> dict[str, list[int]]:
    """Register every version of every schema, oldest first, and set BACKWARD_TRANSITIVE on
    each subject (not on ``mock://``, which has no compatibility API); returns subject -> ids."""
    catalogue = catalogue or default_catalogue()
    registered: dict[str, list[int]] = {}
    mock = is_mock(client)
    for versions in catalogue.versions.values():
        subject = versions[-1].full_name
        if not mock:
            client.set_compatibility(subject_name=subject, level=COMPATIBILITY)
        registered[subject] = [
            client.register_schema(subject, Schema(v.text, "AVRO")) for v in versions
        ]
    return registered
