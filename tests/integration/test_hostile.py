"""The hostile-input catalogue (``tests/data/hostile/``) through its paths, on the session's real
broker and embedded ClickHouse with a real ledger sink.

What is proved, case by case and over the whole catalogue:
- every case ends as the catalogue says: rejected with the field or ``FILE:LINE`` named,
  dead-lettered with the reason and the original bytes (table and topic), accepted exactly as
  sent, or accepted and flagged as an anomaly by the fold;
- nothing is lost: accepted + rejected + dead-lettered = sent;
- a partition never stops: after every case one valid event goes to every partition, and all
  of them reach the ledger.

All cases but the isolated ones run once, in a module fixture (one set of topics, one sink
drained batch by batch), so the whole catalogue costs one consumer-group join.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from cxledger.config import Settings, Topics, load_settings
from cxledger.topics import create_topics
from processors.ledger import PartitionFold
from processors.rules import load_rules
from producers.ingest import publish_file
from producers.sdk import LedgerProducer
from schemas.codec import WireCodec
from schemas.jsonform import dumps
from schemas.validation import EventValidationError, normalize_event
import sinks.ledger_sink as ledger_sink_module
from sinks.ledger_sink import ledger_sink
from sinks.replay import record_from_payload

from tests.integration.ledger_helpers import drain, read_topic
from tests.reliability.report import record

pytestmark = pytest.mark.integration

CATALOGUE_DIR = Path(__file__).parents[1] / "data" / "hostile"
OUTCOMES = ("accepted", "accepted_flagged", "rejected", "dead_lettered")
PATHS = ("sdk", "sdk_record", "sdk_separate", "jsonl", "csv", "raw")
RAW_MAX_BYTES = 6_000_000  # the misbehaving producer's message.max.bytes: room for 5 MB
# Every check under test happens before librdkafka sees the event; an idempotent producer's
# InitProducerId costs 0.5 s on the local broker, and each case has producers of its own.
SDK_CONF = {"enable.idempotence": False}
CANARY_TIME = "2025-03-05T08:00:00+08:00"

_REPEAT = re.compile(rb"@REPEAT:(.):(\d+)@")
_AHEAD = re.compile(rb"@AHEAD:(\d+)@")
_ID = re.compile(rb"@ID(\d+)@")


# -- the catalogue ----------------------------------------------------------------------------

def load_catalogue() -> tuple[dict[str, dict], list[dict]]:
    data = tomllib.loads((CATALOGUE_DIR / "cases.toml").read_text(encoding="utf-8"))
    return data["base"], data["case"]


BASES, CASES = load_catalogue()
SHARED = [c for c in CASES if not c.get("isolate")]
ISOLATED = [c for c in CASES if c.get("isolate")]


# Work in other changes that a pending case waits for (``pending_until`` in cases.toml): once it
# is in the tree, the case is an ordinary one.
LANDED = {
    "ledger-sink-keeps-first-version": lambda: hasattr(ledger_sink_module, "keep_first_version"),
}


def is_pending(case: dict) -> bool:
    until = case.get("pending_until")
    return "pending" in case and not (until and LANDED[until]())


def _param(case: dict) -> Any:
    marks = [pytest.mark.xfail(reason=case["pending"], strict=False)] if is_pending(case) else []
    return pytest.param(case, id=case["id"], marks=marks)


def test_the_catalogue_is_complete_and_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 40
    for case in CASES:
        assert case["path"] in PATHS and case["expect"] in OUTCOMES, case["id"]
        assert case.get("what") and case.get("group"), case["id"]
        if case["expect"] == "rejected":
            assert case.get("error"), case["id"]
        if case["expect"] == "dead_lettered":
            assert case.get("reason"), case["id"]
        if case["expect"] == "accepted_flagged":
            assert case.get("anomaly"), case["id"]
        if case["path"] in ("jsonl", "csv"):
            assert (CATALOGUE_DIR / "files" / case["file"]).is_file(), case["id"]
        if "pending_until" in case:
            assert case["pending_until"] in LANDED, case["id"]
    groups = {c["group"] for c in CASES}
    assert groups == {"avro", "meaning", "identity", "complaint", "text", "file"}


# -- placeholders -------------------------------------------------------------------------------

class Placeholders:
    """Fills ``@C@``, ``@IDn@``, ``@REPEAT:x:N@``, ``@AHEAD:H@``, ``@SURROGATE@`` (README.md)."""

    def __init__(self, customer: str):
        self.customer = customer
        self.ids: dict[bytes, bytes] = {}

    def fill_bytes(self, data: bytes) -> bytes:
        data = _REPEAT.sub(lambda m: m[1] * int(m[2]), data)
        data = _AHEAD.sub(lambda m: _ahead(int(m[1])).encode(), data)
        data = _ID.sub(lambda m: self.ids.setdefault(m[1], str(uuid.uuid4()).encode()), data)
        return data.replace(b"@C@", self.customer.encode())

    def fill_text(self, text: str) -> str:
        filled = self.fill_bytes(text.encode("utf-8", "surrogatepass"))
        return filled.decode("utf-8", "surrogatepass").replace("@SURROGATE@", "\ud800")

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.fill_text(value)
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        return value


def _ahead(hours: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).isoformat()


def build_event(spec: dict, index: int, fill: Placeholders) -> dict:
    """A JSON-form event: its base, then the case's fields; ``drop`` removes fields."""
    spec = dict(spec)
    base = BASES[spec.pop("base")] if "base" in spec else {}
    drop = spec.pop("drop", [])
    event = {"event_id": f"@ID{index}@", **base, **spec}
    for name in drop:
        event.pop(name, None)
    return fill.fill(event)


# -- one run over a list of cases ---------------------------------------------------------------

@dataclass
class Item:
    """One thing a case sent: an event, a file line or a Kafka message."""

    hostile: bool
    error: str | None = None  # why it was rejected (None: it was sent)
    field: str | None = None  # EventValidationError.field (sdk paths)
    line: int | None = None  # file paths
    event_id: str | None = None
    expected: dict | None = None  # the record the ledger must hold when it is accepted
    key: bytes | None = None
    value: bytes | None = None  # the bytes on the topic
    outcome: str = "?"


@dataclass
class CaseResult:
    case: dict
    fill: Placeholders
    items: list[Item] = field(default_factory=list)
    file: Path | None = None
    anomalies: list[str] = field(default_factory=list)

    @property
    def hostile(self) -> Item | None:
        return next((i for i in self.items if i.hostile), None)

    def count(self, outcome: str) -> int:
        return sum(i.outcome == outcome for i in self.items)


class CatalogueRun:
    """Feeds cases to the broker, drains a ledger sink, then says what became of each item."""

    def __init__(self, settings: Settings, client, work: Path):
        self.settings = settings
        self.client = client
        self.work = work
        self.prefix = f"h{uuid.uuid4().hex[:6]}"
        self.codec = WireCodec()
        self.raw = Producer(settings.kafka_conf(**{"message.max.bytes": RAW_MAX_BYTES,
                                                   "linger.ms": 5}))
        self.partitions = settings.topics.partitions
        self.targets: dict[tuple[str, int], int] = {}
        self.results: dict[str, CaseResult] = {}
        self.canaries: list[str] = []
        self.sink_error: Exception | None = None
        self.dead: dict[tuple[str | None, str], str] = {}  # (key, value hex) -> reason
        self.dead_topic: list = []

    # -- sending ------------------------------------------------------------------------------
    def feed(self, case: dict) -> None:
        fill = Placeholders(f"{self.prefix}-{case['id']}")
        result = self.results[case["id"]] = CaseResult(case, fill)
        path = case["path"]
        if path in ("sdk", "sdk_separate"):
            self._sdk(case, fill, result, separate=path == "sdk_separate")
        elif path == "sdk_record":
            self._sdk_record(case, fill, result)
        elif path in ("jsonl", "csv"):
            self._file(case, fill, result)
        else:
            self._raw(case, fill, result)
        self._send_canaries()

    def _producer(self) -> LedgerProducer:
        return LedgerProducer(self.settings, codec=self.codec, producer_conf=SDK_CONF)

    def _done(self, producer: LedgerProducer) -> None:
        producer.close()
        self._reached(producer.positions)

    def _reached(self, positions: dict[tuple[str, int], int]) -> None:
        for tp, end in positions.items():
            self.targets[tp] = max(self.targets.get(tp, 0), end)

    def _sdk(self, case: dict, fill: Placeholders, result: CaseResult, separate: bool) -> None:
        events = [build_event(spec, n, fill) for n, spec in enumerate(case["events"], start=1)]
        producer = None
        for n, event in enumerate(events):
            if producer is None or separate:
                if producer is not None:
                    self._done(producer)
                producer = self._producer()
            item = Item(hostile=n == len(events) - 1)
            try:
                expected = normalize_event(event)
            except EventValidationError:
                expected = None
            try:
                event_id = producer.publish(event)
            except EventValidationError as exc:
                item.error, item.field = str(exc), exc.field
            else:
                self._sent(item, {**expected, "event_id": event_id})
            result.items.append(item)
        self._done(producer)

    def _sdk_record(self, case: dict, fill: Placeholders, result: CaseResult) -> None:
        spec = dict(case["record"])
        changes = fill.fill(spec.pop("set", {}))
        record = {**normalize_event(build_event(spec, 1, fill)), **changes}
        producer = self._producer()
        item = Item(hostile=True)
        try:
            producer.publish_record(record)
        except EventValidationError as exc:
            item.error, item.field = str(exc), exc.field
        else:
            self._sent(item, record)
        result.items.append(item)
        self._done(producer)

    def _sent(self, item: Item, record: dict) -> None:
        item.event_id = record["event_id"]
        item.expected = record
        item.key = record["customer_id"].encode()
        item.value = self.codec.encode(record)

    def _file(self, case: dict, fill: Placeholders, result: CaseResult) -> None:
        source = CATALOGUE_DIR / "files" / case["file"]
        path = self.work / case["id"] / source.name
        path.parent.mkdir(parents=True)
        path.write_bytes(fill.fill_bytes(source.read_bytes()))
        result.file = path
        producer = self._producer()
        try:
            summary = publish_file(path, producer, event_type=case.get("event_type"),
                                   show_progress=False)
        finally:
            self._done(producer)
        rejected = {r.line: str(r) for r in summary.rejected}
        published = iter(summary.published_ids)
        for number in data_lines(path):
            item = Item(hostile=number == case.get("line"), line=number)
            if number in rejected:
                item.error = rejected.pop(number)
            else:
                item.event_id = next(published, None)
            result.items.append(item)
        assert not rejected, f"rejects on lines that hold no data: {rejected}"
        assert next(published, None) is None, "more events published than data lines"

    def _raw(self, case: dict, fill: Placeholders, result: CaseResult) -> None:
        recipe = fill.fill(case["raw"])
        record = None
        if "base" in recipe:
            record = {**normalize_event(build_event({"base": recipe["base"]}, 1, fill)),
                      **recipe.get("set", {})}
        value = raw_value(recipe, record, self.codec)
        key = None if recipe.get("null_key") else fill.customer.encode()
        item = Item(hostile=True, key=key, value=value or b"")  # (a null value: b"" in the table)
        if record is not None:
            item.event_id = record["event_id"]
            intact = not set(recipe) & {"truncate", "magic", "schema_id", "append_hex",
                                        "replace_hex"}
            item.expected = record if intact else None
        self._produce_raw(key, value)
        result.items.append(item)

    def _produce_raw(self, key: bytes | None, value: bytes | None, partition: int = -1) -> None:
        def delivered(err, msg):
            assert err is None, f"the broker refused a raw message: {err}"
            self._reached({(msg.topic(), msg.partition()): msg.offset() + 1})

        self.raw.produce(self.settings.topics.ledger, key=key, value=value, partition=partition,
                         on_delivery=delivered)
        self.raw.poll(0)

    def _send_canaries(self) -> None:
        """One valid event to every partition: each must reach the ledger."""
        customer = f"{self.prefix}-canary"
        for partition in range(self.partitions):
            record = normalize_event({**BASES["contact"], "customer_id": customer,
                                      "contact_id": f"{customer}-k", "occurred_at": CANARY_TIME})
            self.canaries.append(record["event_id"])
            self._produce_raw(customer.encode(), self.codec.encode(record), partition)

    # -- what became of everything ------------------------------------------------------------
    def finish(self) -> None:
        assert self.raw.flush(30) == 0
        self.raw = None  # release its connections now, while the broker is up
        sink = ledger_sink(self.settings, self.client, batch_rows=2_000)
        try:
            drain(sink, self.targets, timeout=60)
        except Exception as exc:  # a sink that dies: the partition stops (asserted by the tests)
            self.sink_error = exc
        finally:
            sink.close()
        self.ledger = self._ledger_rows()
        self._read_dead_letters()
        for result in self.results.values():
            for item in result.items:
                item.outcome = self._outcome(item)
            if result.case["expect"] == "accepted_flagged":
                result.anomalies = self._anomalies(f"{self.prefix}-{result.case['id']}")

    def _ledger_rows(self) -> dict[str, dict]:
        rows = self.client.query(
            "SELECT toString(event_id), event_type, customer_id, city, agent_id, correlation_id,"
            " payload, kafka_partition FROM ledger WHERE startsWith(customer_id, {p:String})",
            parameters={"p": self.prefix}).result_rows
        names = ("event_type", "customer_id", "city", "agent_id", "correlation_id", "payload",
                 "partition")
        return {row[0]: dict(zip(names, row[1:])) for row in rows}

    def _read_dead_letters(self) -> None:
        rows = self.client.query(
            "SELECT key, value_hex, reason FROM deadletter_events FINAL"
            " WHERE source_topic = {t:String}",
            parameters={"t": self.settings.topics.ledger}).result_rows
        self.dead = {(key, value_hex): reason for key, value_hex, reason in rows}
        if rows:
            self.dead_topic = read_topic(self.settings, self.settings.topics.deadletter,
                                         expected=len(rows))

    def _outcome(self, item: Item) -> str:
        if item.error is not None:
            return "rejected"
        key = item.key.decode(errors="replace") if item.key else None
        if item.value is not None and (key, item.value.hex()) in self.dead:
            return "dead_lettered"
        row = self.ledger.get(item.event_id) if item.event_id else None
        if row is None:
            return "lost"
        if item.expected is not None and not holds(row, item.expected):
            return "replaced"  # the ledger holds another version under this event_id
        return "accepted"

    def _anomalies(self, customer: str) -> list[str]:
        """The fold of the customer's stored ledger (the processors' folds, in ledger order):
        the anomalies its complaint.state_changed carry, i.e. complaint_state.anomalies."""
        rows = self.client.query(
            "SELECT toUnixTimestamp64Milli(occurred_at), payload FROM ledger"
            " WHERE customer_id = {c:String} ORDER BY kafka_offset",
            parameters={"c": customer}).result_rows
        fold = PartitionFold(load_rules())
        for occurred_ms, payload in rows:
            fold.apply(record_from_payload(payload, occurred_ms))
        return [text for state in fold.drain_complaints() for text in state["anomalies"]]

    def dead_letter(self, item: Item) -> tuple[str | None, Any]:
        """(reason in deadletter_events, the message on the dead-letter topic) for an item."""
        key = item.key.decode(errors="replace") if item.key else None
        reason = self.dead.get((key, item.value.hex()))
        message = next((m for m in self.dead_topic if _carries(m, item.value)), None)
        return reason, message


def _carries(message: Any, value: bytes) -> bool:
    """The dead letter holds ``value``: whole, or cut with its full size in a header (a value
    larger than the dead-letter topic takes, schemas/deadletter.py)."""
    got = message.value() or b""
    if got == value:
        return True
    headers = dict(message.headers() or ())
    return (b"truncated_from" in [k.encode() for k in headers]
            and int(headers["truncated_from"]) == len(value) and value.startswith(got))


def holds(row: dict, record: dict) -> bool:
    """The ledger row is this record: the payload and the columns, byte for byte."""
    return (json.loads(row["payload"]) == json.loads(dumps(record))
            and all(row[name] == record[name] for name in
                    ("event_type", "customer_id", "city", "agent_id", "correlation_id")))


def raw_value(recipe: dict, record: dict | None, codec: WireCodec) -> bytes | None:
    """The bytes of a raw case (README.md, ``raw`` recipes)."""
    if recipe.get("null_value"):
        return None
    if "value_hex" in recipe:
        return bytes.fromhex(recipe["value_hex"])
    if "garbage_byte" in recipe:
        return bytes.fromhex(recipe["garbage_byte"]) * recipe["size"]
    value = codec.encode(record)
    if "replace_hex" in recipe:
        old, new = (bytes.fromhex(h) for h in recipe["replace_hex"])
        assert value.count(old) == 1, "replace_hex must match exactly once"
        value = value.replace(old, new)
    if "magic" in recipe:
        value = bytes([recipe["magic"]]) + value[1:]
    if "schema_id" in recipe:
        value = value[:1] + recipe["schema_id"].to_bytes(4, "big") + value[5:]
    if "truncate" in recipe:
        value = value[:recipe["truncate"]]
    return value + bytes.fromhex(recipe.get("append_hex", ""))


def data_lines(path: Path) -> list[int]:
    """The numbers of the lines that hold data: not blank, and for a CSV not the header."""
    raw = path.read_bytes()
    numbers = [n for n, line in enumerate(raw.split(b"\n"), start=1)
               if line.strip() and line.strip() != b"\xef\xbb\xbf"]
    return numbers[1:] if path.suffix == ".csv" else numbers


# -- fixtures -----------------------------------------------------------------------------------

def own_settings(broker: str, store_dir: Path) -> Settings:
    """Topics of their own, as conftest's ``settings`` gives each test (that one is per test)."""
    suffix = uuid.uuid4().hex[:8]
    base = load_settings(environ={})
    topics = Topics(ledger=f"t{suffix}.ledger", deadletter=f"t{suffix}.deadletter", partitions=3,
                    derived={k: f"t{suffix}.{k}" for k in base.topics.derived})
    settings = base.with_(kafka_bootstrap=broker, topics=topics, store=store_dir,
                          sink_batch_seconds=0.3)
    create_topics(settings)
    return settings


@pytest.fixture(scope="module")
def catalogue_run(broker, store_dir, clickhouse, tmp_path_factory) -> CatalogueRun:
    run = CatalogueRun(own_settings(broker, store_dir), clickhouse,
                       tmp_path_factory.mktemp("hostile"))
    for case in SHARED:
        run.feed(case)
    run.finish()
    return run


# -- the checks ---------------------------------------------------------------------------------

def check_case(run: CatalogueRun, case: dict) -> None:
    result = run.results[case["id"]]
    fill = result.fill
    others = [i for i in result.items if not i.hostile]
    assert [i.outcome for i in others] == ["accepted"] * len(others), \
        f"the case's other items: {[(i.line, i.outcome, i.error) for i in others]}"
    item = result.hostile
    if item is None:  # an empty file: nothing sent, nothing to say
        assert result.items == [] and case["expect"] == "accepted"
        return
    expect = case["expect"]
    want = "accepted" if expect == "accepted_flagged" else expect
    assert item.outcome == want, f"{case['id']}: {item.outcome} ({item.error})"
    if expect == "rejected":
        check_rejection(case, item, result.file, fill)
    elif expect == "dead_lettered":
        reason, message = run.dead_letter(item)
        assert case["reason"] in reason
        assert message is not None, "not on the dead-letter topic"
        headers = dict(message.headers())
        assert case["reason"] in headers["reason"].decode()
        assert headers["source_topic"].decode() == run.settings.topics.ledger
    else:
        for name, value in case.get("stored", {}).items():
            assert json.loads(run.ledger[item.event_id]["payload"])[name] == value
    if expect == "accepted_flagged":
        anomaly = fill.fill_text(case["anomaly"])
        assert any(anomaly in text for text in result.anomalies), result.anomalies


def check_rejection(case: dict, item: Item, file: Path | None, fill: Placeholders) -> None:
    error = fill.fill_text(case["error"])
    if file is not None:
        error = error.replace("@FILE@", str(file))
        assert item.error.startswith(f"{file}:{case['line']}: "), item.error
    assert error in item.error, item.error
    if "field" in case:
        assert item.field == case["field"]
        assert f"field '{case['field']}'" in item.error
    assert len(item.error) < 1_000, "an error quotes a bounded part of the value"


@pytest.mark.parametrize("case", [_param(c) for c in SHARED])
def test_each_case_ends_as_catalogued(catalogue_run, case):
    check_case(catalogue_run, case)


def test_nothing_is_lost_accepted_rejected_dead_lettered_equal_sent(catalogue_run):
    totals = dict.fromkeys(("sent", "accepted", "rejected", "dead_lettered"), 0)
    unaccounted = {}
    for result in catalogue_run.results.values():
        if is_pending(result.case):
            continue  # (reported by its own xfail)
        counts = {o: result.count(o) for o in ("accepted", "rejected", "dead_lettered")}
        sent = len(result.items)
        if sum(counts.values()) != sent:
            unaccounted[result.case["id"]] = [i.outcome for i in result.items]
        totals["sent"] += sent
        for outcome, n in counts.items():
            totals[outcome] += n
    print(f"\nhostile catalogue: {len(catalogue_run.results)} cases, {totals}")
    record("hostile", cases=len(CASES), **totals)
    assert unaccounted == {}
    assert totals["accepted"] + totals["rejected"] + totals["dead_lettered"] == totals["sent"]
    assert min(totals.values()) > 0


def test_no_partition_stops(catalogue_run):
    assert catalogue_run.sink_error is None
    assert len(catalogue_run.canaries) == len(SHARED) * catalogue_run.partitions
    missing = [e for e in catalogue_run.canaries if e not in catalogue_run.ledger]
    assert missing == []


@pytest.mark.parametrize("case", [_param(c) for c in ISOLATED])
def test_isolated_case_ends_as_catalogued_and_its_partition_goes_on(settings, clickhouse,
                                                                    tmp_path, case):
    run = CatalogueRun(settings, clickhouse, tmp_path)
    run.feed(case)
    run.finish()
    assert run.sink_error is None, f"the ledger sink stopped: {run.sink_error!r}"
    assert all(e in run.ledger for e in run.canaries)
    check_case(run, case)
