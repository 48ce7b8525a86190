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


# -- hostile files: every line on its own ------------------------------------------------------

PLAN_HEADER = b"occurred_at,customer_id,channel,city,from_plan,to_plan,direction\n"


def plan_row(to: bytes = b"5g-299", tail: bytes = b"upgrade") -> bytes:
    return b"2025-03-04T09:00:00+08:00,c-1,app,wuhan,5g-199," + to + b"," + tail + b"\n"


def outcomes(path, **kw):
    return [(n, e is not None, err) for n, e, err in read_events(path, **kw)]


def test_a_line_that_is_not_utf8_is_rejected_alone(tmp_path):
    path = tmp_path / "events.jsonl"
    good = json.dumps(contact()).encode()
    path.write_bytes(good + b"\n" + b'{"reason": "caf\xe9"}\n' + good + b"\n")
    assert outcomes(path) == [
        (1, True, None),
        (2, False, "not valid UTF-8 (byte 0xe9 at column 16): save the file as UTF-8"),
        (3, True, None)]


def test_the_column_of_a_bad_byte_counts_characters(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes('{"reason": "网络'.encode() + b"\xff" + b'"}\n')
    [(_, _, error)] = outcomes(path)
    assert error.startswith("not valid UTF-8 (byte 0xff at column 15)")


def test_a_csv_row_that_is_not_utf8_is_rejected_alone(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER + plan_row() + plan_row(to="我的套餐".encode("gbk")) + plan_row())
    assert outcomes(path) == [
        (2, True, None),
        (3, False, "not valid UTF-8 (byte 0xce at column 48): save the file as UTF-8"),
        (4, True, None)]


def test_a_csv_header_that_is_not_utf8_refuses_the_file(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(b"occurred_at,cust\xffomer_id\n" + plan_row())
    with pytest.raises(IngestError, match="plan.changed.csv:1: the header cannot be read: not "
                                          "valid UTF-8"):
        list(read_events(path))


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(json.dumps(contact()).encode("utf-16"))
    [(number, ok, error)] = outcomes(path)
    assert (number, ok) == (1, False)
    assert error.endswith("the file looks UTF-16: save it as UTF-8")


def test_a_byte_order_mark_is_skipped(tmp_path):
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(contact()).encode() + b"\r\n")
    assert outcomes(jsonl) == [(1, True, None)]
    csv_file = tmp_path / "plan.changed.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + (PLAN_HEADER + plan_row()).replace(b"\n", b"\r\n"))
    [(number, event, error)] = list(read_events(csv_file))
    assert (number, error) == (2, None)
    assert normalize_event(event)["direction"] == "upgrade"


def test_json_objects_with_a_repeated_key_or_too_deep(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"city": "wuhan", "city": "beijing"}\n' + b"[" * 100_000 + b"]" * 100_000
                     + b"\n" + b'"just a string"\n')
    assert outcomes(path) == [
        (1, False, "key 'city' appears twice in the object; which one is meant?"),
        (2, False, "not valid JSON here: nested too deeply"),
        (3, False, "a line must hold one JSON object")]


def test_an_over_long_line_is_not_read(tmp_path, monkeypatch):
    import producers.ingest as ingest

    monkeypatch.setattr(ingest, "MAX_LINE_BYTES", 1_000)
    path = tmp_path / "events.jsonl"
    good = json.dumps(contact()).encode()
    path.write_bytes(good + b"\n" + b"x" * 5_000 + b"\n" + good + b"\n")
    assert outcomes(path) == [
        (1, True, None),
        (2, False, "line longer than 1,000 bytes, not read; an event is a few kilobytes at most"),
        (3, True, None)]


def test_a_csv_cell_beyond_csvs_own_field_limit_reaches_validation(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER + plan_row(to=b"y" * 200_000) + plan_row())
    rows = list(read_events(path))
    assert [n for n, _, _ in rows] == [2, 3]
    with pytest.raises(EventValidationError, match="at most 64 characters, got 200000"):
        normalize_event(rows[0][1])


def test_a_csv_row_with_too_few_values(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER + b"2025-03-04T09:00:00+08:00,c-1,app,wuhan,5g-199,5g-299\n")
    assert outcomes(path) == [
        (2, False, "1 fewer values than header columns (6 values, 7 columns)")]


def test_an_unclosed_quote_names_the_lines_of_its_row(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER + plan_row(to=b'"5g-299', tail=b"upgrade") + plan_row())
    [(number, ok, error)] = outcomes(path)
    assert (number, ok) == (2, False)
    assert error.endswith("; the row runs from line 2 to line 3: a quote left open?")


def test_a_csv_header_naming_a_column_twice(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER.replace(b"direction", b"to_plan") + plan_row())
    assert outcomes(path) == [
        (2, False, "the header (line 1) names column 'to_plan' twice; which one is meant?")]


def test_a_csv_with_an_unknown_column_is_rejected_row_by_row_naming_it(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER.replace(b"\n", b",colour\n") + plan_row(tail=b"upgrade,blue"))
    [(number, event, error)] = list(read_events(path))
    assert (number, error) == (2, None)
    with pytest.raises(EventValidationError) as info:
        normalize_event(event)
    assert info.value.field == "colour"


def test_empty_files(tmp_path):
    for name in ("events.jsonl", "plan.changed.csv"):
        path = tmp_path / name
        path.write_bytes(b"")
        assert list(read_events(path)) == []


def test_a_csv_row_spanning_lines_is_numbered_by_its_first_line(tmp_path):
    path = tmp_path / "plan.changed.csv"
    path.write_bytes(PLAN_HEADER + plan_row(to=b'"5g\n299"') + plan_row())
    assert [(n, ok) for n, ok, _ in outcomes(path)] == [(2, True), (4, True)]


# -- service halls, feedback, incidents and quality control ------------------------------------

def test_jsonl_of_the_hall_feedback_and_incident_types(tmp_path):
    from tests.unit.events import (exam, feedback, hall_survey, hall_visit, incident,
                                   onsite_shift, spot_check)

    lines = [hall_visit(), hall_survey(), onsite_shift(), spot_check(), exam(), feedback(),
             feedback("feedback.handled"), feedback("feedback.result_reported"), incident(),
             incident("incident.resolved"), {**onsite_shift(), "customer_id": "c-9"}]
    path = tmp_path / "halls.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in lines))
    records, errors = [], []
    for n, event, error in read_events(path):
        assert error is None
        try:
            records.append(normalize_event(event))
        except EventValidationError as exc:
            errors.append((n, exc.field, str(exc)))
    assert [r["event_type"] for r in records] == [e["event_type"] for e in lines[:-1]]
    assert "customer_id" not in records[2] and records[8]["cities"] == ["urumqi", "lanzhou"]
    assert errors == [(11, "customer_id", "field 'customer_id': supervision.onsite_shift is an "
                       "operational event and has no customer: omit customer_id (it is keyed "
                       "by hall_id)")]


def test_csv_of_an_operational_type_and_a_list_field(tmp_path):
    path = tmp_path / "incident.detected.csv"
    path.write_text(
        "occurred_at,channel,city,incident_id,level,service,cities\n"
        "2025-03-04T09:00:00+08:00,phone,urumqi,inc-1,1,network,urumqi;lanzhou\n"
        "2025-03-04T10:00:00+08:00,phone,urumqi,inc-2,2,app,\"[\"\"beijing\"\"]\"\n"
        "2025-03-04T11:00:00+08:00,phone,urumqi,inc-3,4,app,beijing\n"
        "2025-03-04T12:00:00+08:00,phone,urumqi,inc-4,3,app,Beijing;x\n")
    rows = list(read_events(path))
    assert normalize_event(rows[0][1])["cities"] == ["urumqi", "lanzhou"]
    assert normalize_event(rows[1][1])["cities"] == ["beijing"]
    for (_, event, _), (field, message) in zip(rows[2:], [
            ("level", "must be between 1 and 3, got '4'"),
            ("cities", "item 1 must be a lower-case city code")]):
        with pytest.raises(EventValidationError, match=message) as info:
            normalize_event(event)
        assert info.value.field == field


def test_csv_of_hall_survey_replies(tmp_path):
    path = tmp_path / "hall.survey_responded.csv"
    path.write_text(
        "occurred_at,customer_id,channel,city,survey_id,hall_id,visit_id,overall,environment,"
        "waiting,handling,staff_attitude,valid\n"
        "2025-03-04T09:00:00+08:00,c-1,sms,urumqi,hs-1,urumqi-nanhudong,v-1,10,9,,10,10,true\n"
        "2025-03-04T09:01:00+08:00,c-2,sms,urumqi,hs-2,urumqi-nanhudong,,,,,,,false\n"
        "2025-03-04T09:02:00+08:00,c-3,sms,urumqi,hs-3,urumqi-nanhudong,,,,,,,true\n"
        "2025-03-04T09:03:00+08:00,c-4,sms,urumqi,hs-4,urumqi-nanhudong,,11,,,,,true\n")
    rows = list(read_events(path))
    first, blank = (normalize_event(rows[i][1]) for i in (0, 1))
    assert (first["waiting"], first["overall"], first["valid"]) == (None, 10, True)
    assert blank["valid"] is False and blank["overall"] is None
    for (_, event, _), (field, message) in zip(rows[2:], [
            ("valid", "a valid reply answers at least one item"),
            ("overall", "must be between 1 and 10")]):
        with pytest.raises(EventValidationError, match=message) as info:
            normalize_event(event)
        assert info.value.field == field
