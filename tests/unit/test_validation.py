"""Validation of the JSON form: every error names the field."""

import re
from decimal import Decimal
import uuid

import pytest

from schemas.catalogue import default_catalogue
from schemas.validation import (CODE_FIELDS, EARLIEST_OCCURRED_AT_MS, MAX_AHEAD_MS,
                                MAX_CODE_CHARS, MAX_ID_CHARS, MAX_TEXT_CHARS, TEXT_FIELDS,
                                EventValidationError, normalize_event, parse_occurred_at,
                                string_limit)

from tests.unit.events import (OPERATIONAL, billing, contact, envelope, exam, feedback,
                               hall_survey, hall_visit, incident, onsite_shift, spot_check,
                               survey)


def reject(event, field, match):
    with pytest.raises(EventValidationError, match=match) as info:
        normalize_event(event)
    assert info.value.field == field
    return info.value


def test_valid_contact_becomes_a_record():
    record = normalize_event(contact())
    assert record["occurred_at"] == 1741050930250
    assert record["transfers"] == 1 and record["resolved_first_contact"] is False
    assert record["correlation_id"] is None


def test_event_id_is_filled_when_absent_and_kept_when_given():
    given = contact()
    assert normalize_event(given)["event_id"] == given["event_id"]
    del given["event_id"]
    assert uuid.UUID(normalize_event(given)["event_id"])


@pytest.mark.parametrize("value,expected", [
    ("2025-03-04T01:15:30Z", 1741050930000),
    ("2025-03-04T09:15:30+08:00", 1741050930000),
    (1741050930000, 1741050930000),
    ("1741050930000", 1741050930000),
])
def test_occurred_at_forms(value, expected):
    assert parse_occurred_at(value) == expected


def test_occurred_at_without_offset_is_rejected():
    reject(contact(occurred_at="2025-03-04T09:15:30"), "occurred_at", "no UTC offset")


def test_occurred_at_in_seconds_is_rejected():
    reject(contact(occurred_at=1741050930), "occurred_at", "between 2000 and 2100")


def test_spend_as_string_or_number():
    assert normalize_event(billing(spend="1200.00"))["spend"] == Decimal("1200.00")
    assert normalize_event(billing(spend=350))["spend"] == Decimal("350.00")
    reject(billing(spend="12.345"), "spend", "more than 2 decimal places")
    reject(billing(spend="-5"), "spend", "non-negative")
    reject(billing(spend="lots"), "spend", "decimal amount")


def test_missing_required_field():
    event = contact()
    del event["handler"]
    err = reject(event, "handler", "missing")
    assert "contact.completed" in err.describe() and event["event_id"] in err.describe()


def test_unknown_event_type():
    reject(envelope("contact.finished"), "event_type", "unknown event_type 'contact.finished'")


def test_derived_types_cannot_be_published_by_channels():
    reject(envelope("churn.risk_changed"), "event_type", "derived by the processors")


def test_misspelt_field():
    reject(contact(transfer=2), "transfer", "not a field of contact.completed")


def test_enum_value():
    reject(contact(channel="fax"), "channel", "must be one of phone, ivr")
    reject(contact(channel="unknown"), "channel", "must be one of")
    reject(contact(handler="robot"), "handler", "must be one of ai, agent, part_time_agent")


def test_ranges():
    reject(contact(transfers=-1), "transfers", "between 0 and 1000")
    reject(survey(attitude=101), "attitude", "between 0 and 100")
    reject(survey(nps=11), "nps", "between 0 and 10")


def test_survey_dimension_may_be_null():
    record = normalize_event(survey(follow_up=None, nps=None))
    assert record["follow_up"] is None and record["nps"] is None


def test_wrong_types():
    reject(contact(wait_seconds="soon"), "wait_seconds", "must be an integer")
    reject(contact(resolved_first_contact="maybe"), "resolved_first_contact", "true or false")


def test_customer_id_must_be_pseudonymous():
    reject(contact(customer_id="13812345678"), "customer_id", "phone number")
    reject(contact(customer_id="li.wei@example.com"), "customer_id", "e-mail")
    reject(contact(customer_id=""), "customer_id", "empty")


def test_city_code_and_period():
    reject(contact(city="Beijing"), "city", "lower-case")
    reject(billing(period="2025-13"), "period", "YYYY-MM")


def test_intent_defaults_to_none():
    event = contact()
    del event["intent"]
    assert normalize_event(event)["intent"] == "none"


# -- text: length, control characters, SQL-looking text (schemas.validation docstring) ----------

VALID = {
    "contact.completed": contact, "survey.responded": survey, "billing.period_closed": billing,
    "hall.visit_completed": hall_visit, "hall.survey_responded": hall_survey,
    "supervision.onsite_shift": onsite_shift, "quality.spot_check_recorded": spot_check,
    "staff.exam_scored": exam,
    "feedback.received": feedback, "feedback.handled": lambda: feedback("feedback.handled"),
    "feedback.result_reported": lambda: feedback("feedback.result_reported"),
    "incident.detected": incident, "incident.resolved": lambda: incident("incident.resolved"),
}
EXTRA = {  # the other interaction types' own fields
    "complaint.filed": {"complaint_id": "cp-1", "category": "network", "severity": "normal"},
    "complaint.escalated": {"complaint_id": "cp-1", "level": 1, "reason": "manual"},
    "complaint.resolved": {"complaint_id": "cp-1", "resolution": "fixed"},
    "complaint.followed_up": {"complaint_id": "cp-1", "outcome": "satisfied"},
    "plan.changed": {"from_plan": "5g-199", "to_plan": "5g-299", "direction": "upgrade"},
    "account.port_out_requested": {"reason": "moving"},
    "account.cancellation_requested": {"reason": "too expensive"},
    "tier.change_decided": {"decision": "approved", "proposal_id": "p-1"},
}


def valid_event(event_type):
    if event_type in VALID:
        return VALID[event_type]()
    fields = EXTRA.get(event_type, {"complaint_id": "cp-1"})
    return envelope(event_type, correlation_id="case-1", **fields)


def string_fields():
    """(event_type, field) for every string field a channel sends (ids, codes, free text)."""
    catalogue = default_catalogue()
    out = []
    for event_type in catalogue.interaction_types:
        for f in catalogue.latest(event_type).definition["fields"]:
            types = f["type"] if isinstance(f["type"], list) else [f["type"]]
            if "string" in types and f["name"] != "event_type":
                out.append((event_type, f["name"]))
    return out


STRING_FIELDS = string_fields()


def with_value(event_type, name, value):
    event = valid_event(event_type)
    event[name] = value
    return event


def test_every_interaction_type_has_a_valid_example_here():
    for event_type, _ in STRING_FIELDS:
        normalize_event(valid_event(event_type))


@pytest.mark.parametrize("event_type,name", STRING_FIELDS)
def test_every_string_field_is_bounded(event_type, name):
    limit = string_limit(name)
    reject(with_value(event_type, name, "a" * (limit + 1)), name,
           f"^field '{name}': at most {limit} characters, got {limit + 1}$")
    if name != "period":  # (a YYYY-MM of its own)
        assert normalize_event(with_value(event_type, name, "a" * limit))[name] == "a" * limit


CONTROLS = [("\x00", "U+0000 (NUL)"), ("\x07", "U+0007 (BEL)"), ("\x1b", "U+001B (ESC)"),
            ("\x7f", "U+007F (DEL)"), ("\x85", "U+0085 (NEL)"), ("\r", "U+000D (CR)")]
INVISIBLE = [("\t", "U+0009 (TAB)"), ("\n", "U+000A (LF)"), ("\u2028", "U+2028 (LINE SEPARATOR)"),
             ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
             ("\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
             ("\ufeff", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)"), ("\ud800", "U+D800 (lone surrogate)")]


@pytest.mark.parametrize("event_type,name", STRING_FIELDS)
def test_control_characters_are_rejected_in_every_string_field(event_type, name):
    for char, shown in CONTROLS:
        reject(with_value(event_type, name, f"ab{char}c"), name,
               re.escape(f"contains {shown} at position 3"))


@pytest.mark.parametrize("event_type,name",
                         [(t, n) for t, n in STRING_FIELDS if n not in TEXT_FIELDS])
def test_ids_and_codes_take_printable_characters_only(event_type, name):
    for char, shown in INVISIBLE:
        reject(with_value(event_type, name, f"ab{char}c"), name,
               re.escape(f"contains {shown} at position 3; ids and codes take printable"))


def test_the_limits_by_kind():
    assert string_limit("customer_id") == string_limit("complaint_id") == MAX_ID_CHARS == 128
    assert {string_limit(n) for n in CODE_FIELDS} == {MAX_CODE_CHARS} and MAX_CODE_CHARS == 64
    assert string_limit("reason") == MAX_TEXT_CHARS == 2_000
    reject(envelope("account.port_out_requested", reason="x" * 2_000_000), "reason",
           "^field 'reason': at most 2000 characters, got 2000000$")


def test_free_text_takes_tab_and_newline_and_any_printable_text():
    text = "moving abroad\tticket 7\nline two: 网络太差 👨\u200d👩\u200d👧 \u200fمرحبا"
    event = envelope("account.port_out_requested", reason=text)
    assert normalize_event(event)["reason"] == text


def test_free_text_rejects_a_lone_surrogate():
    reject(envelope("account.port_out_requested", reason="bad \ud800 text"), "reason",
           re.escape("contains U+D800 (lone surrogate) at position 5; free text takes tab and "
                     "newline"))


@pytest.mark.parametrize("value", [" c-1", "c-1 ", "c-1\u3000"])
def test_ids_do_not_start_or_end_with_whitespace(value):
    reject(contact(customer_id=value), "customer_id",
           "must not start or end with whitespace|contains U\\+3000")


def test_an_id_may_hold_spaces_inside_and_non_latin_letters():
    assert normalize_event(contact(agent_id="张 伟 07"))["agent_id"] == "张 伟 07"


@pytest.mark.parametrize("name,value", [
    ("customer_id", "c'; DROP TABLE ledger_events; --"),
    ("agent_id", "a' OR '1'='1"),
    ("correlation_id", 'x"); DELETE FROM ledger_events WHERE ("1"="1'),
    ("contact_id", "k-1; SELECT * FROM system.users {p:String} ?"),
])
def test_sql_looking_text_is_ordinary_data(name, value):
    assert normalize_event(contact(**{name: value}))[name] == value


def test_sql_looking_free_text_is_ordinary_data():
    text = "Robert'); DROP TABLE ledger_events;-- \\' \\\\"
    assert normalize_event(envelope("account.port_out_requested", reason=text))["reason"] == text


def test_a_newline_after_a_code_is_not_hidden_by_a_regex_end_anchor():
    reject(billing(period="2025-02\n"), "period", "U\\+000A")
    reject(contact(city="beijing\n"), "city", "U\\+000A")


# -- time bounds --------------------------------------------------------------------------------

NOW = 1_741_050_930_000  # 2025-03-04T01:15:30Z


def test_occurred_at_at_most_a_day_ahead_of_now():
    at_limit = contact(occurred_at=NOW + MAX_AHEAD_MS)
    assert normalize_event(at_limit, now_ms=NOW)["occurred_at"] == NOW + MAX_AHEAD_MS
    with pytest.raises(EventValidationError, match="24.0 hours ahead of this machine's clock; "
                       "at most 24 hours ahead is accepted") as info:
        normalize_event(contact(occurred_at=NOW + MAX_AHEAD_MS + 1), now_ms=NOW)
    assert info.value.field == "occurred_at"


def test_occurred_at_years_ahead_is_rejected_by_the_real_clock():
    reject(contact(occurred_at="2099-01-01T00:00:00Z"), "occurred_at", "hours ahead")


def test_occurred_at_not_before_2000():
    assert EARLIEST_OCCURRED_AT_MS == 946_684_800_000
    assert normalize_event(contact(occurred_at="2000-01-01T00:00:00Z"))["occurred_at"] == (
        EARLIEST_OCCURRED_AT_MS)
    reject(contact(occurred_at="1999-12-31T23:59:59.999Z"), "occurred_at", "between 2000 and 2100")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_occurred_at_not_finite(value):
    reject(contact(occurred_at=value), "occurred_at", "must be a time")


# -- numbers the schema takes but the meaning does not ----------------------------------------

def test_range_bounds_are_written_out():
    reject(contact(wait_seconds=-5), "wait_seconds", "^field 'wait_seconds': must be between 0 "
           "and 2592000, got -5$")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10 ** 400, "1e400", "nan"])
def test_scores_must_be_finite_numbers(value):
    reject(survey(attitude=value), "attitude", "must be a number")


def test_huge_integers_are_out_of_range_not_a_crash():
    reject(contact(transfers=10 ** 30), "transfers", "between 0 and 1000")
    reject(contact(transfers="9" * 5000), "transfers", "must be an integer")


def test_spend_fits_decimal_14_2():
    assert normalize_event(billing(spend="999999999999.99"))["spend"] == Decimal("999999999999.99")
    reject(billing(spend="1000000000000"), "spend", "below 10\\^12")
    reject(billing(spend="1e400"), "spend", "below 10\\^12")


def test_escalation_level_and_reserved_enum_symbol():
    reject(envelope("complaint.escalated", complaint_id="cp-1", level=4, reason="manual"),
           "level", "between 1 and 3")
    reject(contact(direction=["inbound"]), "direction", "must be one of")


# -- identity and the shape of the event -------------------------------------------------------

def test_event_type_that_is_not_a_string():
    for value in (["contact.completed"], {"a": 1}):
        event = contact()
        event["event_type"] = value
        reject(event, "event_type", re.escape(f"unknown event_type {value!r}"))


def test_missing_and_empty_ids():
    event = contact()
    del event["customer_id"]
    reject(event, "customer_id", "missing")
    reject(contact(customer_id="   "), "customer_id", "must not be empty")
    reject(contact(contact_id=None), "contact_id", "missing")
    reject(contact(event_id="evt-1"), "event_id", "must be a UUID, got 'evt-1'")
    assert uuid.UUID(normalize_event(contact(event_id=""))["event_id"])


def test_a_field_name_with_control_characters_is_named_escaped():
    event = contact()
    event["agent\x00id"] = "a-1"
    err = reject(event, "agent\\x00id", "not a field of contact.completed")
    assert "\x00" not in str(err)


# -- errors quote a bounded part of a hostile value --------------------------------------------

def test_errors_quote_at_most_a_bounded_part_of_the_value():
    err = reject(contact(event_id="e" * 2_000_000), "event_id", "2,000,000 characters")
    assert len(str(err)) < 200 and len(err.describe()) < 400
    err = reject(contact(channel="f" * 1_000_000), "channel", "must be one of")
    assert len(str(err)) < 400
    err = reject(contact(**{"x" * 100_000: 1}), "x" * 60 + "...", "not a field")
    assert len(err.describe()) < 400


def test_describe_escapes_an_odd_event_id():
    err = reject(contact(event_id="\x1b[2Jevil"), "event_id", "must be a UUID")
    assert "\x1b" not in err.describe() and "\\x1b[2Jevil" in err.describe()


# -- service halls, feedback, incidents and quality control ------------------------------------

def test_operational_events_have_no_customer_and_are_keyed_by_their_own_id():
    from schemas.validation import ledger_refusal, partition_key

    keys = {"supervision.onsite_shift": "urumqi-nanhudong", "quality.spot_check_recorded":
            "urumqi-beijinglu", "staff.exam_scored": "AL002010", "incident.detected": "inc-1",
            "incident.resolved": "inc-1"}
    for event_type in OPERATIONAL:
        record = normalize_event(valid_event(event_type))
        assert "customer_id" not in record, event_type
        assert partition_key(record) == keys[event_type]
        assert ledger_refusal(record, keys[event_type].encode()) is None
        assert "is not the event's" in ledger_refusal(record, b"c-000042")
        reject(valid_event(event_type) | {"customer_id": "c-1"}, "customer_id",
               "operational event and has no customer")
        assert "customer_id" not in normalize_event(valid_event(event_type) | {"customer_id": None})
    record = normalize_event(hall_visit())
    assert partition_key(record) == "c-000042"  # the hall's customer events stay by customer


def test_hall_and_quality_rules_name_the_field():
    reject(hall_survey(waiting=0), "waiting", "between 1 and 10")
    reject(hall_survey(overall=None, environment=None, waiting=None, handling=None,
                       staff_attitude=None), "valid", "at least one item")
    assert normalize_event(hall_survey(overall=None, environment=None, waiting=None,
                                       handling=None, staff_attitude=None, valid=False))
    reject(hall_visit(served_at="window"), "served_at", "counter, handheld, self_service")
    reject(hall_visit(wait_seconds=-3), "wait_seconds", "between 0 and")
    reject(onsite_shift(unresolved=13, customers_received=12), "unresolved",
           "at most customers_received")
    reject(spot_check(passed=21, sampled=20), "passed", "at most sampled")
    reject(spot_check(score=100.5), "score", "between 0 and 100")
    reject(spot_check(unit_type="shop"), "unit_type", "district, hall, agent")
    event = exam()
    del event["agent_id"]
    reject(event, "agent_id", "missing")
    reject(incident(cities=[]), "cities", "at least one")
    reject(incident(cities="urumqi"), "cities", "list of strings")
    reject(incident(level=0), "level", "between 1 and 3")
    reject(feedback(feedback_id=""), "feedback_id", "missing")


def test_operational_and_hall_events_round_trip_through_the_wire_codec():
    from schemas.codec import WireCodec

    codec = WireCodec()
    for event_type in list(OPERATIONAL) + ["hall.visit_completed", "hall.survey_responded",
                                           "feedback.received"]:
        record = normalize_event(valid_event(event_type))
        assert codec.decode(codec.encode(record))[0] == record
