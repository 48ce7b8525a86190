"""A customer's remembered event ids: exact membership, the bounds, the stored forms."""

import uuid

import pytest

from processors import recent_ids
from processors.ledger import PartitionFold
from processors.rules import load_rules
from tests.unit.processors_factories import T0, contact

MIN = 60_000


def ids(n):
    return [str(uuid.UUID(int=0x1234_5678_9ABC_DEF0 * (i + 1))) for i in range(n)]


def test_an_id_is_held_only_where_a_record_starts():
    first, second = ids(2)
    recent = recent_ids.remember(recent_ids.NONE, recent_ids.id_key(first), T0, 0, 16)
    recent = recent_ids.remember(recent, recent_ids.id_key(second), T0 + 1, 0, 16)
    assert recent_ids.holds(recent, recent_ids.id_key(first))
    assert recent_ids.holds(recent, recent_ids.id_key(second))
    across = recent[8:24]  # the last 8 bytes of an id and its time: 16 bytes, not an id
    assert recent.find(across) == 8 and not recent_ids.holds(recent, across)
    assert not recent_ids.holds(recent, recent_ids.id_key(ids(3)[2]))


def test_ids_naming_the_same_uuid_are_the_same_and_other_strings_are_distinct():
    one = ids(1)[0]
    assert recent_ids.id_key(one) == recent_ids.id_key(one.upper()) == uuid.UUID(one).bytes
    assert recent_ids.id_key("evt-1") != recent_ids.id_key("evt-2")
    assert len(recent_ids.id_key("evt-1")) == 16
    assert recent_ids.id_key("x" * 36) != recent_ids.id_key("y" * 36)  # 36 chars, not hex


def test_remember_keeps_the_latest_within_the_horizon_and_the_memory():
    recent = recent_ids.NONE
    for i, event_id in enumerate(ids(20)):
        recent = recent_ids.remember(recent, recent_ids.id_key(event_id), T0 + i * MIN,
                                     T0 + i * MIN - 10 * MIN, 16)
    kept = recent_ids.event_ids(recent)
    assert list(kept) == ids(20)[-11:]  # older than 10 minutes before the last: gone
    assert recent_ids.since(recent, T0 + 15 * MIN) == recent[6 * recent_ids.RECORD_SIZE:]  # 15-19
    recent = recent_ids.NONE
    for i, event_id in enumerate(ids(20)):
        recent = recent_ids.remember(recent, recent_ids.id_key(event_id), T0 + i, 0, 16)
    assert list(recent_ids.event_ids(recent)) == ids(20)[-16:]


def test_the_stored_forms_round_trip_and_the_older_form_still_loads():
    recent = recent_ids.from_ids({event_id: T0 + i for i, event_id in enumerate(ids(3))})
    assert recent_ids.from_plain(recent_ids.to_plain(recent)) == recent
    assert recent_ids.event_ids(recent) == {event_id: T0 + i for i, event_id in enumerate(ids(3))}
    with pytest.raises(ValueError, match="not a whole number of 24-byte records"):
        recent_ids.from_plain("00" * 25)


def test_a_customer_stored_with_the_older_form_still_catches_a_retry():
    rules = load_rules()
    event = contact(T0, "c-1")
    fold = PartitionFold(rules)
    fold.apply(event)
    plain = fold.customer_state("c-1")
    del plain["recent_ids"]
    plain["recent"] = {event["event_id"]: T0}  # as workers stored it before "recent_ids"
    restored = PartitionFold(rules)
    restored.load_customer("c-1", plain)
    assert restored.apply(event) == [] and restored.duplicates == 1
    assert restored.customer_state("c-1") == fold.customer_state("c-1")
