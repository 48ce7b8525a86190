"""The gateway's OpenAPI document, generated from the Avro contract (``GET /openapi.json``).

Every interaction event type of ``schemas/avro`` becomes a schema, named by its Avro record
name, with each field's type, enum symbols, description (the Avro ``doc``) and the value rules
the Avro types cannot carry, taken from ``schemas.validation`` itself (ranges, the time window,
the city and period formats), so the document cannot drift from what the gateway enforces.
Derived event types (``schemas.catalogue.DERIVED_TYPES``) are published only by the processors
and appear nowhere in it.

The document is OpenAPI 3.0.3 (``nullable``), which every generator and fuzzer reads.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from schemas import validation
from schemas.catalogue import OPERATIONAL_KEYS, Catalogue, default_catalogue

API_VERSION = "1"

_RESPONSES_DOC = """
Every publish answers, per event of the request and in its order, `accepted` with the
`event_id` or `rejected` with the `field` and the `reason`. A 2xx comes only once Kafka (and,
on the single-machine stack, the store) acknowledged every accepted event: they are in the
ledger. Sending the same request again is safe when the events carry their `event_id` (a
missing one is generated and returned: reuse it): the ledger keeps one event per id.

| status | meaning |
|---|---|
| 202 | every event accepted and acknowledged |
| 207 | some accepted (and acknowledged), some rejected: fix and resend the rejected ones |
| 422 | every event rejected; nothing was published |
| 400 | the body is not JSON / NDJSON, or holds no event |
| 401 | no API key, or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`) |
| 403 | an event is outside the key's channels or event types; nothing was published |
| 413 | the body is over the size limit, or holds more events than a request may |
| 415 | a content type other than JSON (or NDJSON on `/v1/events:batch`) |
| 429 | the key is over its rate; retry after `Retry-After` seconds |
| 503 | Kafka (or the store) did not acknowledge in time; retry after `Retry-After` seconds with the same event ids |
"""


def openapi_document(catalogue: Catalogue | None = None) -> dict[str, Any]:
    """The OpenAPI document (a new dict each call; the work is cached)."""
    import copy

    return copy.deepcopy(_document(catalogue or default_catalogue()))


@cache
def _document(catalogue: Catalogue) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for event_type in catalogue.interaction_types:
        version = catalogue.latest(event_type)
        name = version.definition["name"]
        schemas[name] = event_schema(event_type, version.definition, version.version)
        mapping[event_type] = f"#/components/schemas/{name}"
    schemas["Event"] = {
        "description": "One interaction event; `event_type` says which schema applies.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "event_type", "mapping": mapping},
    }
    schemas.update(_result_schemas())
    publish_json = {
        "application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "minItems": 1}]}},
    }
    publish_ndjson = {
        "application/x-ndjson": {"schema": {
            "type": "string",
            "description": "One event (an `Event` object) per line, UTF-8; blank lines are "
                           "skipped."}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "cxledger ingest gateway",
            "version": API_VERSION,
            "description": "Publish customer-interaction events to the ledger.\n" + _RESPONSES_DOC,
        },
        "paths": {
            "/v1/events": {"post": _publish_operation(
                "publishEvents", "Publish one event or a JSON array of events", publish_json)},
            "/v1/events:batch": {"post": _publish_operation(
                "publishEventBatch", "Publish events as NDJSON, one per line", publish_ndjson)},
            "/events": {"post": {**_publish_operation(
                "publishEventsLegacy", "Same as POST /v1/events (kept for existing clients)",
                {**publish_json, **publish_ndjson}), "deprecated": True}},
            "/healthz": {"get": _probe("health", "The process is alive (200)", False)},
            "/readyz": {"get": _probe("readiness", "200 when Kafka answers (and, on the "
                                      "single-machine stack, the ledger sink runs); 503 when not",
                                      True)},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0 document", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key of the gateway (`cxledger gateway key`)"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "headers": {
                "Retry-After": {"description": "Seconds to wait before sending again",
                                "schema": {"type": "integer", "minimum": 1}},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


# -- event schemas ------------------------------------------------------------------------------
def event_schema(event_type: str, definition: dict[str, Any], version: int) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.0 dialect) of one event type's JSON form."""
    named: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in definition["fields"]:
        avro_type = f["type"]
        if isinstance(avro_type, dict) and "name" in avro_type:
            named[avro_type["name"]] = avro_type
        prop, nullable = _field_schema(f["name"], avro_type, named)
        if f["name"] == "event_type":
            prop = {"type": "string", "enum": [event_type]}
        if f.get("doc") and "description" not in prop:
            prop = {**prop, "description": f["doc"]}
        elif f.get("doc") and not _is_time(avro_type):  # the Avro doc, then the JSON form
            prop = {**prop, "description": f"{f['doc']} {prop['description']}"}
        if nullable:
            prop = {**prop, "nullable": True}
        properties[f["name"]] = prop
        if f["name"] == "event_type" or (f["name"] != "event_id" and not nullable
                                         and "default" not in f):
            required.append(f["name"])
    if "customer_id" in properties:
        properties["customer_id"] = {
            **properties["customer_id"],
            "description": properties["customer_id"].get("description", "") + " Never a phone "
            "number or an e-mail address: those are refused."}
    description = f"{definition.get('doc', '')} (Avro {definition['namespace']}." \
                  f"{definition['name']} v{version})"
    if event_type in OPERATIONAL_KEYS:
        description += (f" Operational: no customer_id; keyed by {OPERATIONAL_KEYS[event_type]}.")
    return {
        "type": "object",
        "title": event_type,
        "description": description,
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _field_schema(name: str, avro_type: Any, named: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(schema, nullable) of one Avro field type."""
    if isinstance(avro_type, list):
        inner = [t for t in avro_type if t != "null"]
        return _field_schema(name, inner[0], named)[0], "null" in avro_type
    if isinstance(avro_type, str) and avro_type in named:
        avro_type = named[avro_type]
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "timestamp-millis":
            return _time_schema(), False
        if logical == "uuid":
            return {"type": "string", "format": "uuid"}, False
        if logical == "decimal":
            return _decimal_schema(avro_type), False
        if avro_type["type"] == "enum":
            return {"type": "string",
                    "enum": [s for s in avro_type["symbols"] if s != "unknown"]}, False
        if avro_type["type"] == "array":
            array = {"type": "array", "items": _string_schema(name)}
            if name == "cities":  # validation: at least one affected city
                array["minItems"] = 1
            return array, False
        return _field_schema(name, avro_type["type"], named)
    schema = {
        "string": {"type": "string"}, "int": {"type": "integer", "format": "int32"},
        "long": {"type": "integer", "format": "int64"}, "double": {"type": "number"},
        "float": {"type": "number"}, "boolean": {"type": "boolean"},
    }[avro_type]
    if schema["type"] == "string":
        schema = _string_schema(name)
    bounds = validation._RANGES.get(name)
    if bounds and schema["type"] in ("integer", "number"):
        schema = {**schema, "minimum": bounds[0], "maximum": bounds[1]}
    return schema, False


def _is_time(avro_type: Any) -> bool:
    """A timestamp field, whose Avro doc speaks of the wire form (epoch ms), not the JSON one."""
    return isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-millis"


def _rule(*names: str) -> Any:
    """The first of ``names`` that schemas.validation defines (its rules are being hardened;
    the document follows whichever names it has), else None."""
    for name in names:
        if hasattr(validation, name):
            return getattr(validation, name)
    return None


def _string_schema(name: str) -> dict[str, Any]:
    """A string field: never blank (validation refuses "" and "   "), at most the length
    validation allows, and the city and period formats."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": r"\S"}
    limit = _rule("string_limit")
    if callable(limit):
        schema["maxLength"] = int(limit(name))
    formats = {"city": _rule("_CITY"), "cities": _rule("_CITY"), "period": _rule("_PERIOD")}
    if formats.get(name) is not None:
        schema["pattern"] = f"^(?:{formats[name].pattern})$"
    return schema


def _time_schema() -> dict[str, Any]:
    low = _rule("EARLIEST_OCCURRED_AT_MS", "_MIN_MS")
    high = _rule("LATEST_PARSEABLE_MS", "_MAX_MS")
    ahead = _rule("MAX_AHEAD_MS")
    limit = (f"at most {ahead / 3_600_000:g} hours ahead of the gateway's clock" if ahead
             else "before 2100")
    return {"oneOf": [
        {"type": "string", "format": "date-time",
         "description": "ISO-8601 with a UTC offset, e.g. 2025-03-04T09:02:00+08:00"},
        {"type": "integer", "format": "int64", "minimum": low, "maximum": high - 1,
         "description": "epoch milliseconds"},
    ], "description": f"When it happened: ISO-8601 with an offset, or epoch milliseconds; "
                      f"not before 2000, {limit}."}


def _decimal_schema(avro_type: dict[str, Any]) -> dict[str, Any]:
    scale = int(avro_type.get("scale", 0))
    digits = int(avro_type["precision"]) - scale
    largest = Decimal(10) ** digits - Decimal(1).scaleb(-scale)
    return {"oneOf": [
        {"type": "string", "pattern": rf"^\d{{1,{digits}}}(\.\d{{1,{scale}}})?$",
         "example": "1200.00"},
        {"type": "number", "minimum": 0, "maximum": float(largest)},
    ], "description": f"A non-negative amount with at most {scale} decimal places and "
                      f"{digits} digits before the point; a string such as \"1200.00\" keeps "
                      f"it exact."}


# -- requests and responses ---------------------------------------------------------------------
def _publish_operation(operation_id: str, summary: str, content: dict[str, Any]) -> dict[str, Any]:
    def result(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/PublishResult"}}}}

    def error(description: str, schema: str = "Error", retry: bool = False) -> dict[str, Any]:
        response: dict[str, Any] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
        if retry:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
        return response

    return {
        "operationId": operation_id,
        "summary": summary,
        "requestBody": {"required": True, "content": content},
        "responses": {
            "202": result("Every event accepted and acknowledged"),
            "207": result("Some events accepted (and acknowledged), some rejected"),
            "422": result("Every event rejected; nothing published"),
            "400": error("The body is not JSON / NDJSON, or holds no event"),
            "401": {**error("No API key, or an unknown one"), "headers": {
                "WWW-Authenticate": {"schema": {"type": "string"}}}},
            "403": error("An event is outside the key's scope; nothing published", "Forbidden"),
            "413": error("Body or batch too large"),
            "415": error("Unsupported content type"),
            "429": error("Over the key's rate", retry=True),
            "503": error("Not acknowledged in time; send again with the same event ids",
                         "Unavailable", retry=True),
        },
    }


def _probe(operation_id: str, summary: str, can_fail: bool) -> dict[str, Any]:
    body = {"application/json": {"schema": {"type": "object", "required": ["status"],
                                            "properties": {"status": {"type": "string"}}}}}
    responses = {"200": {"description": "OK", "content": body}}
    if can_fail:
        responses["503"] = {"description": "Not ready; the body says why", "content": body}
    return {"operationId": operation_id, "summary": summary, "security": [],
            "responses": responses}


def _result_schemas() -> dict[str, Any]:
    index = {"type": "integer", "minimum": 0, "description": "Position of the event in the request"}
    event_id = {"type": "string", "format": "uuid"}
    field = {"type": "string", "nullable": True,
             "description": "The field at fault; null when the event as a whole is"}
    reason = {"type": "string"}

    def item(status: str, props: dict[str, Any], description: str) -> dict[str, Any]:
        return {"type": "object", "description": description,
                "required": ["index", "status", *props],
                "properties": {"index": index, "status": {"type": "string", "enum": [status]},
                               **props}}

    accepted = item("accepted", {"event_id": event_id}, "In the ledger")
    rejected = item("rejected", {"field": field, "reason": reason},
                    "Breaks the contract; not published")
    forbidden = item("forbidden", {"field": field, "reason": reason},
                     "Outside the API key's channels or event types")
    unacknowledged = item("unacknowledged", {"event_id": event_id, "reason": reason},
                          "Sent, but not acknowledged in time: send it again with this event_id")
    counts = {"accepted": {"type": "integer", "minimum": 0},
              "rejected": {"type": "integer", "minimum": 0}}
    return {
        "Accepted": accepted, "Rejected": rejected, "Unacknowledged": unacknowledged,
        "PublishResult": {
            "type": "object", "required": ["accepted", "rejected", "results"],
            "properties": {**counts, "results": {"type": "array", "items": {"oneOf": [
                {"$ref": "#/components/schemas/Accepted"},
                {"$ref": "#/components/schemas/Rejected"}]}}}},
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "description": "What is wrong "
                                                                            "and what to do"}}},
        "Forbidden": {"type": "object", "required": ["error", "results"], "properties": {
            "error": {"type": "string"},
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/ForbiddenEvent"}}}},
        "ForbiddenEvent": forbidden,
        "Unavailable": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"},
            **counts, "unacknowledged": {"type": "integer", "minimum": 0},
            "results": {"type": "array", "items": {"oneOf": [
                {"$ref": "#/components/schemas/Accepted"},
                {"$ref": "#/components/schemas/Unacknowledged"},
                {"$ref": "#/components/schemas/Rejected"}]}}}},
    }
