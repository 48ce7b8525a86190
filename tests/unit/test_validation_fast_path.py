"""The generated fast path of ``normalize_event`` agrees with the general path: on every
simulated event (both give the same record), and on each field of each event type broken or
written in another form (the fast path either gives the general path's record or steps aside;
it never accepts what the general path refuses)."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from producers.simulator import simulate
from schemas.catalogue import default_catalogue
from schemas.validation import (EventValidationError, Pseudonymizer, _fast_path, _general_path,
                                _plan, fast_path_source, normalize_event)

NOW_MS = 1_767_225_600_000  # 2026-01-01
CATALOGUE = default_catalogue()


def general(event: dict, pseudonymize: Pseudonymizer | None = None) -> dict | Exception:
    try:
        return _general_path(dict(event), event["event_type"], CATALOGUE, NOW_MS, pseudonymize)
    except EventValidationError as exc:
        return exc


def fast(event: dict) -> dict | None:
    return _fast_path(event["event_type"], CATALOGUE)(event, NOW_MS)


@pytest.fixture(scope="module")
def samples() -> dict[str, dict]:
    """One simulated event of each type the simulator emits, in JSON form and in record form."""
    out: dict[str, dict] = {}
    for event in simulate(40_000, seed=11):
        out.setdefault(event["event_type"], event)
    return out


def test_simulated_events_take_the_fast_path_and_give_the_same_record():
    events = list(simulate(5_000, seed=3))
    for event in events:
        record = fast(event)
        assert record is not None, event
        assert record == general(event)
        again = fast(record)  # the record form (what a consumer re-checks) is fast too
        assert again == record


ODD_VALUES = [
    None, "", " ", "x", " x", "x ", "\u200bx", "a\nb", "a\tb", "x" * 129, "x" * 2001, 0, 1, -1,
    7, 100, 101, 10**20, 1.0, 2.5, 100.5, -0.5, math.nan, math.inf, True, False, [], ["x"],
    ["beijing"], {"a": 1}, "13800138000", "wx-13800138000", "+86 138 0013 8000",
    "a@example.com", "name: John Smith", "姓名：王小明", "2025-01-01T08:00:00+08:00",
    "2025-01-01T08:00:00", "1735689600000", 1_735_689_600_000, 4_102_444_800_000, "12",
    "12.50", Decimal("12.50"), "-1", "BEIJING", "beijing", "2025-13", "2025-01", "phone",
    "PHONE", "unknown", "00000000-0000-0000-0000-000000000000",
    "00000000-0000-0000-0000-00000000000A", "{00000000-0000-0000-0000-000000000000}",
    "ct-e9c668-00007981",
]


def test_a_changed_field_takes_the_general_path_or_gives_its_record(samples):
    compared = fast_taken = 0
    for event_type, sample in samples.items():
        for name, *_ in _plan(event_type, CATALOGUE):
            if name == "event_type":
                continue
            for value in ODD_VALUES:
                event = {**sample, name: value}
                expected = general(event)
                got = fast(event)
                compared += 1
                if got is None:
                    continue
                fast_taken += 1
                assert not isinstance(expected, Exception), (event_type, name, value, expected)
                if name == "event_id" and value in (None, ""):  # filled with a random one
                    assert got.pop("event_id") != expected.pop("event_id")
                assert got == expected, (event_type, name, value)
            missing = {k: v for k, v in sample.items() if k != name}
            got, expected = fast(missing), general(missing)
            if got is not None:
                assert not isinstance(expected, Exception), (event_type, name, expected)
                if name != "event_id":  # a missing event_id gets a new random one on each path
                    assert got == expected
    assert fast_taken > 500 and compared > 5_000  # both outcomes were exercised


def test_an_unknown_field_or_a_customer_on_an_operational_event_takes_the_general_path(samples):
    assert fast({**samples["contact.completed"], "colour": "red"}) is None
    with pytest.raises(EventValidationError, match="misspelt"):
        normalize_event({**samples["contact.completed"], "colour": "red"}, now_ms=NOW_MS)
    shift = samples["supervision.onsite_shift"]
    assert fast({**shift, "customer_id": "c-1"}) is None
    assert normalize_event({**shift, "customer_id": ""}, now_ms=NOW_MS) == general(shift)


def test_personal_data_is_pseudonymised_by_the_general_path(samples):
    event = {**samples["contact.completed"], "customer_id": "+86 138 0013 8000"}
    assert fast(event) is None
    record = normalize_event(event, now_ms=NOW_MS, pseudonymize=Pseudonymizer("k"))
    assert record["customer_id"].startswith("pii-phone-")
    with pytest.raises(EventValidationError, match="customer_id"):
        normalize_event(event, now_ms=NOW_MS)


def test_the_generated_source_is_readable():
    source = fast_path_source("survey.responded")
    assert source.startswith("def fast_path(event, now_ms):")
    assert "'nps'" in source and "0 <= v <= 10" in source
