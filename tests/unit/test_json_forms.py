"""The JSON texts the pipeline writes: the ledger payload and the processors' state records.

Both are written with orjson and read back as values; they must hold exactly what the json
module would have written, so that a payload stored by an earlier release still matches a
retry of the same event, and a state record restores to the same state."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from decimal import Decimal

from processors.batch import decode_state, encode_state
from producers.simulator import simulate
from schemas.jsonform import dumps, iso_millis, same_payload, to_json_form
from schemas.validation import normalize_event


def json_module_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_payloads_hold_the_values_the_json_module_writes():
    for event in simulate(3000, seed=5):
        record = normalize_event(event)
        text = dumps(record)
        assert json.loads(text) == json.loads(json_module_text(to_json_form(record)))
        assert same_payload(text, json_module_text(to_json_form(record)))


def test_times_are_written_as_datetime_writes_them():
    rng = random.Random(3)
    day = 86_400_000
    values = [0, -1, 1, day - 1, day, -day, 951_782_400_000, 4_102_444_799_999,
              -62_135_596_800_000]  # 1970, around midnights, 2000-02-29, 2099, year 1
    values += [rng.randrange(-2_000_000_000_000, 4_102_444_800_000) for _ in range(20_000)]
    for ms in values:
        expected = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
            timespec="milliseconds")
        assert iso_millis(ms) == expected, ms


def test_a_payload_is_the_json_form_with_money_and_times_written_out():
    record = {"event_type": "billing.period_closed", "occurred_at": 1_772_352_900_250,
              "amount": Decimal("12.5"), "deadline": None, "window_start": 0}
    assert json.loads(dumps(record)) == {
        "event_type": "billing.period_closed", "occurred_at": "2026-03-01T08:15:00.250+00:00",
        "amount": "12.50", "deadline": None, "window_start": "1970-01-01T00:00:00.000+00:00"}
    assert json.loads(dumps({**record, "big": 2 ** 70}))["amount"] == "12.50"  # json module


def test_a_payload_compares_by_value_not_by_float_formatting():
    record = {"event_type": "survey.responded", "score": 0.00001, "amount": Decimal("12.50"),
              "note": "quote \" tab \t newline \n é \u2028", "tags": ["a", "b"], "n": None}
    ours = dumps(record)
    theirs = json_module_text(to_json_form(record))  # writes 1e-05
    assert ours != theirs and same_payload(ours, theirs)
    assert not same_payload(ours, theirs.replace("12.50", "12.51"))
    assert dumps({"big": 2 ** 70}) == json_module_text({"big": 2 ** 70})  # beyond orjson


def test_state_records_are_the_json_modules_text_and_restore_to_the_same_state():
    states = [{"customer_id": "c-1", "recent": ["e1", "e2"], "spend": 123.45, "counts": {"1": 2},
               "flags": [True, False, None], "city": "乌鲁木齐"},
              {1: "int keys become strings", "nested": {"x": [1.5, -2, 0.1 + 0.2]}},
              {"huge": 2 ** 70}]
    for plain in states:
        assert encode_state(plain) == json_module_text(plain).encode()
        assert decode_state(encode_state(plain)) == json.loads(json_module_text(plain))
