"""The ledger inlet: ClickHouse decodes sealed ledger messages and builds their rows.

Decoding every message in Python and writing its JSON payload again is most of what the ledger
sink costs (about 8 µs and 5 µs a message, against 2 µs for the rest of its loop). A sealed
message (``schemas.seal``: the SDK checked it, and its body is exactly one record of its
writer schema) need not be decoded at all: the sink joins the bodies of a batch into one Avro
object container and inserts it into the Null table ``ledger_inlet``, whose materialized view
writes the ``ledger_events`` rows, the JSON payload included, as
``sinks.ledger_sink.ledger_row`` writes them.

One container for all event types: each insert costs ClickHouse about 20 ms whatever its
size (the views over ``ledger_events`` run for each), so one insert per type and batch was
slower than decoding in Python. The container's records are ``LedgerInlet``: the row's
position (``kafka_partition``, ``kafka_offset``, ``schema_id``, which are not in the event)
and then ``event``, a union of the event records. An Avro record is its fields' encodings one
after the other, and a union value is its branch's index and then the value, so the sink
writes a message as those four small numbers in front of its body (``InletSchema.framed``):
nothing is decoded or encoded again.

ClickHouse reads the union into a ``Variant`` of one ``Tuple`` per branch, and needs as many
branches as the column has variants, each of a distinct type. Event types whose records have
the same fields (names and types: their encodings are the same bytes) therefore share a branch
(a *shape*); the event_type field tells them apart.

The view writes the payload with ``toJSONString`` of the record, with the JSON form's money
(a decimal of two places, as text) and time (occurred_at in ISO-8601 with milliseconds,
``+00:00``), and reads the row's columns back from it. The text is not always byte for byte
what ``schemas.jsonform.dumps`` writes (characters orjson escapes differently, a float in
another form), but it is the same JSON value: ``json.loads`` of both is equal, which is how
the ledger compares payloads (``schemas.jsonform.same_payload``) and how replay reads them.

``migration_sql`` writes the table and view for the latest schema of every interaction type
(migration 9 holds them: ``python -m sinks.ledger_inlets`` prints them). A type with a field
the view cannot write as the JSON form does (a nested record, a map, plain bytes, a float32, a
time other than occurred_at, money of other than two places) has no shape, and its messages
are decoded in Python, as are those of a schema version whose shape the table in the store does
not have (``InletSchema.for_table``): a new version needs a migration that adds its shape
(``ALTER TABLE ledger_inlet MODIFY COLUMN event Variant(...)``, the old shapes kept, for the
messages of the old version still to come).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.catalogue import Catalogue, default_catalogue
from schemas.container import _varint, zigzag_long

INLET_TABLE = "ledger_inlet"
#: the leading fields the sink writes in front of each body (and the union's branch index)
POSITION_FIELDS = ({"name": "kafka_partition", "type": "int"},
                   {"name": "kafka_offset", "type": "long"},
                   {"name": "schema_id", "type": "int"})
_PLAIN = {"string": "String", "int": "Int32", "long": "Int64", "boolean": "Bool",
          "double": "Float64"}
_COMMON = ("event_id", "event_type", "occurred_at", "channel", "city", "agent_id",
           "correlation_id")


class Unsupported(ValueError):
    """A field the inlet's view cannot write as the JSON form does."""


def _type(name: str, avro: Any) -> str:
    """The ClickHouse type ClickHouse reads field ``name`` of Avro type ``avro`` into (what it
    infers: a Variant's types must be exactly those); raises Unsupported."""
    if isinstance(avro, list):
        kinds = [t for t in avro if t != "null"]
        if len(avro) != 2 or len(kinds) != 1:
            raise Unsupported(f"{name}: a union other than [null, T]")
        return f"Nullable({_type(name, kinds[0])})"
    if isinstance(avro, str):
        if avro not in _PLAIN or avro == "float":  # JSON writes a float32 shorter than Python
            raise Unsupported(f"{name}: {avro}")
        return _PLAIN[avro]
    kind, logical = avro.get("type"), avro.get("logicalType")
    if kind == "enum":
        symbols = avro["symbols"]
        width = 8 if len(symbols) <= 128 else 16
        return f"Enum{width}(" + ", ".join(
            f"'{s}' = {i}" for i, s in enumerate(symbols)) + ")"
    if kind == "string":
        return "UUID" if logical == "uuid" else "String"
    if kind == "long" and logical == "timestamp-millis":
        if name != "occurred_at":  # the view rewrites this one time field only
            raise Unsupported(f"{name}: a time other than occurred_at")
        return "DateTime64(3)"
    if kind == "bytes" and logical == "decimal":
        if avro.get("scale") != 2:  # the JSON form writes money with two places
            raise Unsupported(f"{name}: a decimal of scale {avro.get('scale')}")
        return f"Decimal({avro['precision']}, 2)"
    if kind == "array" and isinstance(avro["items"], str) and avro["items"] in _PLAIN:
        return f"Array({_PLAIN[avro['items']]})"
    if kind in _PLAIN and not logical:
        return _PLAIN[kind]
    raise Unsupported(f"{name}: {kind}{'/' + logical if logical else ''}")


def shape(definition: dict[str, Any]) -> str:
    """The ClickHouse type of a record of ``definition`` in the union (raises Unsupported)."""
    names = {f["name"] for f in definition["fields"]}
    missing = [n for n in _COMMON if n not in names]
    if missing:
        raise Unsupported(f"no {', '.join(missing)}")
    return "Tuple(" + ", ".join(f"{f['name']} {_type(f['name'], f['type'])}"
                                for f in definition["fields"]) + ")"


def shapes(catalogue: Catalogue | None = None,
           latest_only: bool = True) -> dict[str, dict[str, Any]]:
    """shape -> the first definition of that shape, over the interaction types' schemas
    (their latest versions, or all of them)."""
    catalogue = catalogue or default_catalogue()
    out: dict[str, dict[str, Any]] = {}
    for event_type in catalogue.interaction_types:
        versions = catalogue.versions[event_type]
        for version in versions[-1:] if latest_only else versions:
            try:
                out.setdefault(shape(version.definition), version.definition)
            except Unsupported:
                continue
    return out


def migration_sql(catalogue: Catalogue | None = None) -> str:
    """The Null table and its view, for the shapes of the latest schemas.

    The view writes the record as JSON (``toJSONString`` of the Variant writes the Tuple of
    its row as an object, in field order) with the JSON form's money and times: decimals quoted
    with their two places, times in ISO-8601 (ClickHouse writes ``...250Z``, the JSON form
    ``...250+00:00``: the one time field, occurred_at, is rewritten). The columns are read back
    from that text."""
    variant = ",\n        ".join(shapes(catalogue))
    return f"""CREATE TABLE IF NOT EXISTS {INLET_TABLE}
(
    kafka_partition Int32,
    kafka_offset Int64,
    schema_id Int32,
    event Variant(
        {variant})
)
ENGINE = Null
SETTINGS allow_experimental_variant_type = 1, allow_suspicious_variant_types = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS {INLET_TABLE}_mv TO ledger_events AS
WITH toJSONString(event) AS record
SELECT
    toUUID(JSONExtractString(record, 'event_id')) AS event_id,
    JSONExtractString(record, 'event_type') AS event_type,
    parseDateTime64BestEffort(JSONExtractString(record, 'occurred_at'), 3, 'UTC') AS occurred_at,
    JSONExtractString(record, 'customer_id') AS customer_id,
    JSONExtractString(record, 'channel') AS channel,
    JSONExtractString(record, 'city') AS city,
    JSONExtract(record, 'agent_id', 'Nullable(String)') AS agent_id,
    JSONExtract(record, 'correlation_id', 'Nullable(String)') AS correlation_id,
    replaceRegexpOne(record, '"occurred_at":"([^"]*)Z"', '"occurred_at":"\\\\1+00:00"') AS payload,
    schema_id,
    kafka_partition,
    kafka_offset
FROM {INLET_TABLE}
SETTINGS output_format_json_quote_decimals = 1, output_format_decimal_trailing_zeros = 1,
    date_time_output_format = 'iso', output_format_json_quote_64bit_integers = 0,
    output_format_json_quote_denormals = 0, output_format_json_escape_forward_slashes = 0;
"""


def split_variant(type_: str) -> list[str]:
    """The types of a ``Variant(...)`` type as ``system.columns`` writes it."""
    inner = type_.strip()
    if not inner.startswith("Variant(") or not inner.endswith(")"):
        return []
    inner = inner[len("Variant("):-1]
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(inner):
        if ch == "'" and (i == 0 or inner[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            out.append(inner[start:i])
            start = i + 1
    out.append(inner[start:])
    return [_squash(t) for t in out if t.strip()]


def _squash(type_: str) -> str:
    return " ".join(type_.split()).replace("( ", "(").replace(" )", ")")


def _without_redefinitions(node: Any, seen: set[str], namespace: str) -> Any:
    """``node`` with each named type after its first definition written as its full name
    (one Avro schema may define a name only once: every event record defines Channel)."""
    if isinstance(node, list):
        return [_without_redefinitions(n, seen, namespace) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") in ("record", "enum", "fixed"):
        namespace = node.get("namespace", namespace)
        full = node["name"] if "." in node["name"] else f"{namespace}.{node['name']}"
        if full in seen:
            return full
        seen.add(full)
    out = dict(node)
    if "fields" in out:
        out["fields"] = [{**f, "type": _without_redefinitions(f["type"], seen, namespace)}
                         for f in out["fields"]]
    for key in ("items", "values"):
        if key in out:
            out[key] = _without_redefinitions(out[key], seen, namespace)
    if isinstance(out.get("type"), (dict, list)):
        out["type"] = _without_redefinitions(out["type"], seen, namespace)
    return out


@dataclass(frozen=True, eq=False)
class InletSchema:
    """The container schema for the table in the store, and the branch of each shape."""
    container: dict[str, Any]
    branches: dict[str, int]  # shape -> index in the union

    @classmethod
    def for_table(cls, variant_type: str, catalogue: Catalogue | None = None
                  ) -> InletSchema | None:
        """For a ``ledger_inlet.event`` column of type ``variant_type``: None when the
        catalogue has no schema for one of its shapes (a store newer than this build)."""
        known = {_squash(s): d for s, d in shapes(catalogue, latest_only=False).items()}
        table_shapes = split_variant(variant_type)
        if not table_shapes or any(s not in known for s in table_shapes):
            return None
        seen: set[str] = set()
        union = [_without_redefinitions(known[s], seen, known[s].get("namespace", ""))
                 for s in table_shapes]
        container = {"type": "record", "name": "LedgerInlet", "namespace": "cxledger.inlet",
                     "fields": [*POSITION_FIELDS, {"name": "event", "type": union}]}
        return cls(container, {s: i for i, s in enumerate(table_shapes)})

    def branch(self, definition: dict[str, Any]) -> int | None:
        """The union branch of records of ``definition``; None when the table has none."""
        try:
            return self.branches.get(_squash(shape(definition)))
        except Unsupported:
            return None

    def framed(self, partition: int, position: int, schema_id: int, branch: int,
               body: bytes) -> bytes:
        """A message body as a record of the container schema."""
        return (zigzag_long(partition) + zigzag_long(position) + zigzag_long(schema_id)
                + zigzag_long(branch) + body)


def first_string(body: bytes) -> str:
    """The first field of a record whose first field is a string (event_id), read without
    decoding the rest (raises ValueError on a body too short for it)."""
    size, start = _varint(body, 0)
    if size < 0 or start + size > len(body):
        raise ValueError("a body shorter than its first field")
    return body[start:start + size].decode()


if __name__ == "__main__":
    print(migration_sql())
