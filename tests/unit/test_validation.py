"""Validation of the JSON form: every error names the field."""

from decimal import Decimal
import uuid

import pytest

from schemas.validation import EventValidationError, normalize_event, parse_occurred_at

from tests.unit.events import billing, contact, envelope, survey


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
