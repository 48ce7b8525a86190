"""The JSON texts the pipeline writes: the ledger payload and the processors' state records.

Both are written with orjson and read back as values; they must hold exactly what the json
module would have written, so that a payload stored by an earlier release still matches a
retry of the same event, and a state record restores to the same state."""

from __future__ import annotations

import json
from decimal import Decimal

from processors.batch import decode_state, encode_state
from producers.simulator import simulate
from schemas.jsonform import dumps, same_payload, to_json_form
from schemas.validation import normalize_event


def json_module_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_payloads_hold_the_values_the_json_module_writes():
    for event in simulate(3000, seed=5):
        record = normalize_event(event)
        text = dumps(record)
        assert json.loads(text) == json.loads(json_module_text(to_json_form(record)))
        assert same_payload(text, json_module_text(to_json_form(record)))


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
