"""Parsing JSON Lines and CSV: good lines become events, bad ones are reported by line."""

import json

import pytest

from producers.ingest import IngestError, read_events
from schemas.validation import EventValidationError, normalize_event

from tests.unit.events import contact, survey


def test_jsonl_good_and_bad_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([
        json.dumps(contact()),
        "",
        '{"event_type": "contact.completed", broken',
        "[1, 2]",
        json.dumps(survey()),
    ]) + "\n")
    rows = list(read_events(path))
    assert [(n, e is not None, err) for n, e, err in rows] == [
        (1, True, None),
        (3, False, "not valid JSON: Expecting property name enclosed in double quotes (column 37)"),
        (4, False, "a line must hold one JSON object"),
        (5, True, None),
    ]


def test_csv_one_event_type_per_file(tmp_path):
    path = tmp_path / "survey.responded.csv"
    path.write_text(
        "event_id,occurred_at,customer_id,channel,city,survey_id,subject_id,response_speed,"
        "resolution_efficiency,attitude,follow_up,nps\n"
        "6c1b8a7e-49c5-4c7e-9d69-0a51bb2e4b11,2025-03-04T09:00:00+08:00,c-1,sms,beijing,s-1,k-1,"
        "90,88.5,95,,10\n"
        "7f0d3b9e-8a8b-4a3b-a7a0-2f7c3a1f5e22,2025-03-04T09:05:00+08:00,c-2,sms,beijing,s-2,,"
        "90,88.5,95,70,eleven\n")
    rows = list(read_events(path))
    assert [n for n, _, _ in rows] == [2, 3]
    first = normalize_event(rows[0][1])
    assert first["event_type"] == "survey.responded"
    assert first["follow_up"] is None and first["nps"] == 10 and first["subject_id"] == "k-1"
    with pytest.raises(EventValidationError) as info:
        normalize_event(rows[1][1])
    assert info.value.field == "nps"


def test_csv_without_event_type_needs_it_named(tmp_path):
    path = tmp_path / "surveys.csv"
    path.write_text("occurred_at,customer_id\n2025-03-04T09:00:00+08:00,c-1\n")
    with pytest.raises(IngestError, match="surveys.csv:1: the CSV has no event_type column"):
        list(read_events(path))


def test_csv_row_with_too_many_values(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_text("occurred_at,customer_id,channel,city,from_plan,to_plan,direction\n"
                    "2025-03-04T09:00:00+08:00,c-1,app,wuhan,a,b,upgrade,extra\n")
    [(number, event, error)] = list(read_events(path))
    assert number == 2 and event is None and "more values than header" in error


def test_unknown_file_type(tmp_path):
    path = tmp_path / "events.xml"
    path.write_text("<events/>")
    with pytest.raises(IngestError, match="unknown file type"):
        list(read_events(path))
