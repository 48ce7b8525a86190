"""Schema ids from a Confluent-compatible schema registry (confluent-kafka's client).

Subjects follow the RecordNameStrategy: one subject per record (e.g.
``cxledger.events.ContactCompleted``), so every topic carrying a type shares its history.
``register_all`` (the ``cxledger schemas register`` command) registers every kept version in
order and sets BACKWARD_TRANSITIVE on each subject, so the registry enforces what the repository
tests check.
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
    return SchemaRegistryClient.new_client(conf)  # also accepts mock:// for development


class RegistryIds:
    """Ids looked up in (and, with auto_register, registered to) a schema registry."""

    def __init__(self, client: SchemaRegistryClient, catalogue: Catalogue | None = None,
                 auto_register: bool = False):
        self.client = client
        self.catalogue = catalogue or default_catalogue()
        self.auto_register = auto_register
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, tuple[str, dict[str, Any]]] = {}

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
    """Register every version of every schema, oldest first; returns subject -> ids."""
    catalogue = catalogue or default_catalogue()
    registered: dict[str, list[int]] = {}
    for versions in catalogue.versions.values():
        subject = versions[-1].full_name
        client.set_compatibility(subject_name=subject, level=COMPATIBILITY)
        registered[subject] = [
            client.register_schema(subject, Schema(v.text, "AVRO")) for v in versions
        ]
    return registered
