"""Customer PII never enters the ledger in clear (security): what is recognised (and
what is not), the refusal without a key, the keyed pseudonyms with one, field by field and by
path (the SDK, and files, which publish through it), and the consumers' second check."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import pytest

from cxledger.config import ConfigError, load_settings
from producers.ingest import publish_file
from producers.sdk import LedgerProducer
from producers.simulator import simulate
from schemas.catalogue import default_catalogue
from schemas.codec import WireCodec
from schemas.validation import (TEXT_FIELDS, EventValidationError, Pseudonymizer, find_pii,
                                ledger_refusal, national_id_valid, normalize_event)

from tests.unit.events import contact, envelope, survey

KEY = "k3y-for-tests-0123456789abcdefghijklmnop"
OTHER_KEY = "another-key-0123456789abcdefghijklmnopqr"
PSEUDONYM = re.compile(r"^pii-(phone|idno|email|name|id)-[a-z2-7]{26}$")


def id_number(region: str = "110105", born: str = "19491231", seq: str = "002") -> str:
    """A resident identity number with its ISO 7064 MOD 11-2 check character."""
    body = region + born + seq
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]


ID_NO = id_number()                                   # 11010519491231002X
ID_NO_2 = id_number("440305", "19880229", "123")      # a leap day


def wrong_check(number: str) -> str:
    return number[:17] + next(c for c in "0123456789X" if c != number[17])


# -- what is recognised ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,kind,canonical", [
    ("13800138000", "phone", "13800138000"),
    ("+86 138-0013-8000", "phone", "13800138000"),
    ("+8613800138000", "phone", "13800138000"),
    ("8613800138000", "phone", "13800138000"),
    ("008613800138000", "phone", "13800138000"),
    ("138 0013 8000", "phone", "13800138000"),
    ("1380-013-8000", "phone", "13800138000"),
    ("19912345678", "phone", "19912345678"),
    ("010-65529988", "phone", "01065529988"),
    ("(010) 6552 9988", "phone", "01065529988"),
    ("(0755)26888888", "phone", "075526888888"),
    ("0755-2688888", "phone", "07552688888"),
    ("+86 10 65529988", "phone", "01065529988"),
    ("0086-755-26888888", "phone", "075526888888"),
    (ID_NO, "idno", ID_NO),
    (ID_NO.lower(), "idno", ID_NO),
    (ID_NO_2, "idno", ID_NO_2),
    ("li.wei@example.com", "email", "li.wei@example.com"),
    ("Li.Wei+cx@Mail.Example.COM", "email", "li.wei+cx@mail.example.com"),
    ("13800138000@139.com", "email", "13800138000@139.com"),
])
def test_recognised_whole(text, kind, canonical):
    [match] = find_pii(text)
    assert (match.kind, match.start, match.end, match.canonical) == (kind, 0, len(text), canonical)


@pytest.mark.parametrize("text,found", [
    ("客户来电，手机13800138000，要求回电", ["13800138000"]),
    ("call me on 138 0013 8000 or at li@example.cn.", ["138 0013 8000", "li@example.cn"]),
    (f"身份证号{ID_NO}，住址不详", [ID_NO]),
    ("办公室电话(010)65529988转分机", ["(010)65529988"]),
    ("姓名：张三，电话13800138000", ["张三", "13800138000"]),
    ("联系人: 欧阳娜娜 明天到", ["欧阳娜娜"]),
    ("我的名字是李伟", ["李伟"]),
    ("Customer name: Li Wei called twice", ["Li Wei"]),
    ("my name is Wang Fang.", ["Wang Fang"]),
    ("CONTACT: Zhang San", ["Zhang San"]),
])
def test_recognised_in_free_text(text, found):
    assert [text[m.start:m.end] for m in find_pii(text, free_text=True)] == found


@pytest.mark.parametrize("text", [
    "c-000320", "ct-e9c668-00000001", "ag-lanzhou-028", "5g-199", "2025-03",
    "c13800138000",                        # glued to a letter: an id, not a number
    "3f2a13800138000eabc9d",               # a hex digest
    "c6ea5b63-69b4-46eb-8923-013800138000",  # a UUID
    "1741080000000",                       # epoch milliseconds
    "1234567890",                          # epoch seconds
    "138001380001",                        # 12 digits
    "1280013800",                          # 12x is no mobile prefix
    "02012345678",                         # a local number cannot start with 1
    wrong_check(ID_NO),                    # the check character decides
    id_number(born="19990231")[:17] + "0",  # no 31 February
    id_number(born=(date.today() + timedelta(days=400)).strftime("%Y%m%d")),  # born later
    "user@localhost", "@handle", "a@b",   # no domain with a dot
    "2025-03-04 13:45:00+08:00",
    "amount 1200.00 on 2025-03-04",
])
def test_not_taken_for_personal_data(text):
    assert find_pii(text, free_text=True) == []


@pytest.mark.parametrize("text", [
    "客户反映姓名错误", "姓名不对，已更正", "我叫了客服三次", "name change requested",
    "the contact centre called back", "Name: pii-name-abcdefghijklmnopqrstuvwxyz"])
def test_names_only_after_a_label(text):
    assert find_pii(text, free_text=True) == []


def test_names_are_looked_for_in_free_text_only():
    assert find_pii("姓名：张三") == []
    assert [m.kind for m in find_pii("姓名：张三", free_text=True)] == ["name"]


def test_national_id_checksum():
    assert national_id_valid(ID_NO) and national_id_valid(ID_NO_2)
    assert sum(national_id_valid(wrong_check(id_number(seq=f"{n:03d}"))) for n in range(200)) == 0
    assert not national_id_valid("11010519491231002")  # 17 characters


def test_simulated_traffic_has_no_false_positive():
    for event in simulate(20_000, seed=11):
        normalize_event(event)  # refuses anything it takes for personal data


# -- refused without a key ----------------------------------------------------------------------

def string_fields() -> list[tuple[str, str]]:
    """(event type, field) of every free string field of every interaction type, once each."""
    catalogue, seen, out = default_catalogue(), set(), []
    for event_type in catalogue.interaction_types:
        for f in catalogue.latest(event_type).definition["fields"]:
            t = f["type"]
            t = next((x for x in t if x != "null"), None) if isinstance(t, list) else t
            if t == "string" and f["name"] not in ("event_type", "city", "period") \
                    and f["name"] not in seen:
                seen.add(f["name"])
                out.append((event_type, f["name"]))
    return out


def example(event_type: str, **values) -> dict:
    """A valid event of ``event_type`` with ``values``."""
    from tests.unit.test_validation import valid_event

    return {**valid_event(event_type), **values}


def test_every_free_string_field_is_screened():
    names = {name for _, name in string_fields()}
    assert {"customer_id", "agent_id", "correlation_id", "contact_id", "complaint_id",
            "survey_id", "subject_id", "plan_code", "reason"} <= names


@pytest.mark.parametrize("event_type,name", string_fields())
@pytest.mark.parametrize("value,what", [
    ("+86 138 0013 8000", "a phone number (mainland mobile)"),
    ("010-65529988", "a phone number (landline)"),
    (ID_NO, "a national id number"),
    ("li.wei@example.com", "an e-mail address"),
])
def test_refused_in_every_string_field_without_a_key(event_type, name, value, what):
    with pytest.raises(EventValidationError) as info:
        normalize_event(example(event_type, **{name: value}))
    err = info.value
    assert err.field == name
    assert str(err).startswith(f"field '{name}': looks like {what} (personal data")
    assert "CXLEDGER_PII_HMAC_KEY" in str(err)
    assert_not_quoted(value, str(err), err.describe())


@pytest.mark.parametrize("event_type,name", string_fields())
def test_refused_inside_a_value_with_its_position(event_type, name):
    value = "x-13800138000"
    with pytest.raises(EventValidationError) as info:
        normalize_event(example(event_type, **{name: value}))
    assert str(info.value).startswith(
        f"field '{name}': contains what looks like a phone number (mainland mobile) at "
        "position 3 ")
    assert_not_quoted(value, str(info.value))


def test_a_name_in_free_text_is_refused_without_a_key():
    event = envelope("account.port_out_requested", reason="客户姓名：王小明，要求携号转网")
    with pytest.raises(EventValidationError) as info:
        normalize_event(event)
    assert str(info.value).startswith("field 'reason': contains what looks like a name (after "
                                      "'客户姓名：') at position 6 (personal data")
    assert "王小明" not in str(info.value)


def assert_not_quoted(value: str, *texts: str) -> None:
    digits = re.sub(r"\D", "", value)
    for text in texts:
        assert value not in text and (len(digits) < 7 or digits not in re.sub(r"\D", "", text))


# -- pseudonyms with a key ----------------------------------------------------------------------

@pytest.fixture
def pii():
    return Pseudonymizer(KEY)


def test_an_id_that_is_personal_data_becomes_its_pseudonym(pii):
    record = normalize_event(contact(customer_id="+86 138-0013-8000"), pseudonymize=pii)
    assert PSEUDONYM.match(record["customer_id"])
    assert record["customer_id"] == pii.pseudonym("phone", "13800138000")


def test_the_same_number_joins_across_formats_and_channels(pii):
    forms = ["13800138000", "+86 138 0013 8000", "8613800138000", "0086-138-0013-8000"]
    channels = ["phone", "app", "web", "wechat", "service_hall"]
    ids = {normalize_event(contact(customer_id=f, channel=c), pseudonymize=pii)["customer_id"]
           for f, c in zip(forms * 2, channels * 2)}
    ids.add(normalize_event(survey(customer_id="138-0013-8000"), pseudonymize=pii)["customer_id"])
    assert len(ids) == 1
    assert normalize_event(contact(customer_id="13800138001"),
                           pseudonymize=pii)["customer_id"] not in ids
    assert normalize_event(contact(customer_id="13800138000"),
                           pseudonymize=Pseudonymizer(OTHER_KEY))["customer_id"] not in ids


def test_landline_id_number_and_email_have_their_own_pseudonyms(pii):
    assert normalize_event(contact(customer_id="(010) 6552-9988"), pseudonymize=pii)[
        "customer_id"] == normalize_event(contact(customer_id="+86 10 65529988"),
                                          pseudonymize=pii)["customer_id"]
    assert normalize_event(contact(customer_id=ID_NO.lower()), pseudonymize=pii)[
        "customer_id"] == pii.pseudonym("idno", ID_NO)
    assert normalize_event(contact(customer_id="Li.Wei@Example.com"), pseudonymize=pii)[
        "customer_id"] == pii.pseudonym("email", "li.wei@example.com")


def test_an_id_that_contains_personal_data_is_replaced_wholly(pii):
    record = normalize_event(contact(customer_id="wx-13800138000", contact_id="k-13800138000-7"),
                             pseudonymize=pii)
    assert record["customer_id"] == pii.pseudonym("id", "wx-13800138000")
    assert record["contact_id"] == pii.pseudonym("id", "k-13800138000-7")
    assert "13800138000" not in json.dumps(record, default=str)


def test_free_text_keeps_its_words_and_loses_the_data(pii):
    text = f"姓名：张三，手机 138-0013-8000，身份证{ID_NO}，邮箱 zs@example.com。要求携号转网"
    record = normalize_event(envelope("account.port_out_requested", reason=text),
                             pseudonymize=pii)
    assert record["reason"] == (
        f"姓名：{pii.pseudonym('name', '张三')}，手机 {pii.pseudonym('phone', '13800138000')}，"
        f"身份证{pii.pseudonym('idno', ID_NO)}，邮箱 {pii.pseudonym('email', 'zs@example.com')}。"
        "要求携号转网")
    assert find_pii(record["reason"], free_text=True) == []


def test_free_text_too_long_once_pseudonymised_is_refused(pii):
    text = "a@b.cn " * 280  # 1,960 characters; 280 pseudonyms do not fit in 2,000
    with pytest.raises(EventValidationError, match="longer than 2000 characters once its "
                                                   "personal data is replaced"):
        normalize_event(envelope("account.port_out_requested", reason=text), pseudonymize=pii)


def test_pseudonyms_pass_the_consumers_check(pii):
    """The ledger sink and the processors check every record again without a key
    (``ledger_refusal``): a pseudonymised record passes, a record with data in clear does not."""
    record = normalize_event(contact(customer_id="13800138000", agent_id="li@example.com"),
                             pseudonymize=pii)
    assert ledger_refusal(record, record["customer_id"].encode()) is None
    clear = normalize_event(contact(customer_id="c-1"))
    clear["customer_id"] = "13800138000"
    assert "looks like a phone number" in ledger_refusal(clear, b"13800138000")


def test_the_pseudonymizer_does_not_show_its_key(pii):
    assert KEY not in repr(pii) and KEY not in str(pii)


# -- by path: the SDK and files -------------------------------------------------------------------

class Recorder:
    """librdkafka's Producer as LedgerProducer uses it, keeping (key, value) of each message."""

    def __init__(self):
        self.messages: list[tuple[bytes, bytes]] = []

    def produce(self, topic, value, key, headers, on_delivery):
        self.messages.append((key, value))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return 0


def sdk(key: str | None = None) -> LedgerProducer:
    settings = load_settings(environ={"CXLEDGER_PII_HMAC_KEY": key} if key else {})
    producer = LedgerProducer(settings.with_(kafka_bootstrap="127.0.0.1:9"))
    producer._producer = Recorder()
    return producer


def sent(producer: LedgerProducer) -> list[tuple[bytes, dict]]:
    codec = WireCodec()
    return [(key, codec.decode(value)[0]) for key, value in producer._producer.messages]


def test_sdk_refuses_personal_data_without_a_key():
    producer = sdk()
    with pytest.raises(EventValidationError,
                       match="^field 'customer_id': looks like a phone number"):
        producer.publish(contact(customer_id="13800138000"))
    with pytest.raises(EventValidationError,
                       match="^field 'reason': contains what looks like an e-mail"):
        producer.publish(envelope("account.cancellation_requested", reason="mail me: a@b.cn"))
    assert producer._producer.messages == []


def test_sdk_with_a_key_sends_pseudonyms_keyed_by_them():
    producer = sdk(KEY)
    pii = Pseudonymizer(KEY)
    producer.publish(contact(customer_id="+86 138 0013 8000"))
    producer.publish(survey(customer_id="13800138000", channel="app"))
    producer.publish(envelope("account.port_out_requested", customer_id="8613800138000",
                              reason="call back on 010-65529988"))
    expected = pii.pseudonym("phone", "13800138000")
    messages = sent(producer)
    assert [key for key, _ in messages] == [expected.encode()] * 3
    assert {record["customer_id"] for _, record in messages} == {expected}
    assert messages[2][1]["reason"] == f"call back on {pii.pseudonym('phone', '01065529988')}"
    assert b"13800138000" not in b"".join(v for _, v in producer._producer.messages)


def test_sdk_publish_record_screens_too():
    record = normalize_event(contact())
    record["customer_id"] = "13800138000"
    with pytest.raises(EventValidationError, match="looks like a phone number"):
        sdk().publish_record(record)
    producer = sdk(KEY)
    producer.publish_record(record)
    assert record["customer_id"] == "13800138000"  # the caller's record is left as it was
    assert sent(producer)[0][1]["customer_id"] == Pseudonymizer(KEY).pseudonym("phone",
                                                                               "13800138000")


def test_files_refuse_the_lines_with_personal_data_without_a_key(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [contact(customer_id="c-1"), contact(customer_id="139 1234 5678"),
             envelope("account.port_out_requested", reason=f"id {ID_NO}"), contact()]
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in lines))
    producer = sdk()
    summary = publish_file(path, producer, show_progress=False)
    assert summary.published == 2
    refusal = ("(personal data, which never enters the ledger in clear): publish a pseudonymous "
               "value, or set CXLEDGER_PII_HMAC_KEY so that the producer replaces it with a keyed "
               "hash")
    assert [(r.line, r.reason.split(": ", 1)[1]) for r in summary.rejected] == [
        (2, f"field 'customer_id': looks like a phone number (mainland mobile) {refusal}"),
        (3, f"field 'reason': contains what looks like a national id number at position 4 "
            f"{refusal}")]
    rejects = summary.rejects_file.read_text()
    assert "1391234" not in rejects.replace(" ", "") and ID_NO not in rejects


def test_files_publish_pseudonyms_with_a_key(tmp_path):
    path = tmp_path / "contact.completed.csv"
    base = contact()
    columns = [k for k in base if k != "event_type"]
    rows = [",".join(columns)]
    for customer, n in (("13800138000", 1), ("+86 138-0013-8000", 2), ("c-7", 3)):
        event = {**base, "event_id": "", "customer_id": customer, "contact_id": f"k-{n}"}
        rows.append(",".join(f'"{event[c]}"' for c in columns))
    path.write_text("\n".join(rows) + "\n")
    producer = sdk(KEY)
    summary = publish_file(path, producer, show_progress=False)
    assert (summary.published, summary.rejected) == (3, [])
    customers = [record["customer_id"] for _, record in sent(producer)]
    pseudonym = Pseudonymizer(KEY).pseudonym("phone", "13800138000")
    assert customers == [pseudonym, pseudonym, "c-7"]


# -- settings -------------------------------------------------------------------------------------

def test_the_key_from_the_environment_a_file_or_the_config(tmp_path):
    assert load_settings(environ={}).pii_hmac_key is None
    assert load_settings(environ={"CXLEDGER_PII_HMAC_KEY": KEY}).pii_hmac_key == KEY
    key_file = tmp_path / "pii.key"
    key_file.write_text(KEY + "\n")
    assert load_settings(environ={"CXLEDGER_PII_HMAC_KEY_FILE": str(key_file)}
                         ).pii_hmac_key == KEY
    config = tmp_path / "cx.toml"
    config.write_text(f'[pii]\nhmac_key_file = "{key_file}"\n')
    settings = load_settings(config, environ={})
    assert settings.pii_hmac_key == KEY
    assert KEY not in repr(settings)
    again = tmp_path / "child.toml"  # what a child process is given
    again.write_text(settings.to_toml())
    assert load_settings(again, environ={}).pii_hmac_key == KEY


def test_a_short_key_is_refused_without_showing_it():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"CXLEDGER_PII_HMAC_KEY": "short-secret"})
    assert "at least 32" in str(info.value) and "short-secret" not in str(info.value)


def test_text_fields_are_the_free_text_ones():
    assert TEXT_FIELDS == {"reason"}
