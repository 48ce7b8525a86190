"""The SDK's seal (schemas.seal): what verifies, what does not, and where the key comes from."""

from __future__ import annotations

import hashlib

import pytest

from cxledger.config import ConfigError, load_settings
from cxledger.stack import StackRecord, attach
from producers.sdk import LedgerProducer
from schemas.seal import SEAL_HEADER, Sealer
from schemas.validation import normalize_event

from tests.unit.events import contact

KEY = "seal-key-" + "k" * 40


def test_a_seal_verifies_exactly_its_key_and_value():
    sealer = Sealer(KEY)
    seal = sealer.seal(b"c-1", b"value")
    good = [("event_id", b"e"), (SEAL_HEADER, seal)]
    assert sealer.verifies(b"c-1", b"value", good)
    assert not sealer.verifies(b"c-1", b"valuf", good)        # other bytes
    assert not sealer.verifies(b"c-2", b"value", good)        # other message key
    assert not sealer.verifies(b"c-1v", b"alue", good)        # the split moved
    assert not sealer.verifies(None, b"value", good)
    assert not Sealer("x" * 40).verifies(b"c-1", b"value", good)  # another key
    assert not sealer.verifies(b"c-1", b"value", [("event_id", b"e")])
    assert not sealer.verifies(b"c-1", b"value", None)
    assert not sealer.verifies(b"c-1", None, good)
    assert not sealer.verifies(b"c-1", b"value", [(SEAL_HEADER, None)])
    # the first seal header counts: a second, valid one does not rescue a bad first
    assert not sealer.verifies(b"c-1", b"value", [(SEAL_HEADER, b"\0" * 16), (SEAL_HEADER, seal)])
    assert Sealer("z" * 200).verifies(b"", b"v", [Sealer("z" * 200).header(None, b"v")])
    with pytest.raises(ValueError):
        Sealer("short")


def test_the_seal_is_the_documented_mac_and_the_same_for_every_message():
    """Keyed BLAKE2b-128, personalised, over len(key) (4 bytes), key, value: what another
    producer must compute to seal. Sealing many messages with one Sealer (it copies one keyed
    state) gives each the seal a fresh hash gives."""
    sealer = Sealer(KEY)
    for key, value in [(b"c-1", b"value"), (None, b""), (b"k" * 300, bytes(range(256)))] * 2:
        fresh = hashlib.blake2b(key=KEY.encode(), digest_size=16, person=b"cxledger-seal-1")
        fresh.update(len(key or b"").to_bytes(4, "big") + (key or b"") + value)
        assert sealer.seal(key, value) == fresh.digest()


def test_the_key_from_the_environment_a_file_or_the_config_and_never_shown(tmp_path):
    assert load_settings(environ={}).seal_key is None
    assert load_settings(environ={"CXLEDGER_SEAL_KEY": KEY}).seal_key == KEY
    key_file = tmp_path / "seal.key"
    key_file.write_text(KEY + "\n")
    assert load_settings(environ={"CXLEDGER_SEAL_KEY_FILE": str(key_file)}).seal_key == KEY
    config = tmp_path / "cx.toml"
    config.write_text(f'[seal]\nkey_file = "{key_file}"\n')
    settings = load_settings(config, environ={})
    assert settings.seal_key == KEY and KEY not in repr(settings)
    assert KEY in settings.secrets()
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"CXLEDGER_SEAL_KEY": "short-secret"})
    assert "CXLEDGER_SEAL_KEY: the seal key is 12 characters" in str(info.value)
    assert "short-secret" not in str(info.value)


def test_a_command_attached_to_a_stack_seals_with_its_key_unless_it_has_its_own():
    record = StackRecord(pid=1, store="/s", started_at="", state="ready", bootstrap="b:9",
                         local_broker=True, seal_key=KEY)
    assert attach(load_settings(environ={}), record).seal_key == KEY
    own = load_settings(environ={"CXLEDGER_SEAL_KEY": "o" * 40})
    assert attach(own, record).seal_key == "o" * 40


class RecordingProducer:
    def __init__(self):
        self.sent: list[tuple[bytes, bytes, list]] = []

    def produce(self, topic, value, key, headers, on_delivery):
        self.sent.append((key, value, headers))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return 0


def test_the_sdk_seals_what_it_validated_and_only_that():
    settings = load_settings(environ={}).with_(kafka_bootstrap="127.0.0.1:9", seal_key=KEY)
    producer = LedgerProducer(settings)
    producer._producer = RecordingProducer()
    producer.publish(contact(customer_id="c-1"))
    producer.publish_record(normalize_event(contact(customer_id="c-2")))  # not validated here
    (key1, value1, headers1), (key2, value2, headers2) = producer._producer.sent
    assert Sealer(KEY).verifies(key1, value1, headers1)
    assert SEAL_HEADER not in dict(headers2)
    unsealed = LedgerProducer(settings.with_(seal_key=None))
    unsealed._producer = RecordingProducer()
    unsealed.publish(contact(customer_id="c-3"))
    assert SEAL_HEADER not in dict(unsealed._producer.sent[0][2])
