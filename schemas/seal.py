"""The seal: a ledger message's proof that the SDK checked it, so that consumers check it once.

Every consumer of the ledger (the ledger sink, the processors) applies the SDK's checks to each
record again (``schemas.validation.ledger_refusal``): a record can reach the topic without the
SDK. That second check is a third of the ledger sink's time and an eighth of a worker's, spent
on records the SDK already checked. With a seal key configured (``CXLEDGER_SEAL_KEY``, the same
on the producers and the consumers; ``cxledger up`` makes one for its stack), the SDK adds a
header to each event it validated: a keyed BLAKE2b MAC of the message key and value. A consumer
that holds the key and finds a valid seal knows the SDK checked exactly these bytes, and skips
the check; any other message (no seal, another key, a changed key or value) is checked as
before. Without a key nothing is sealed and everything is checked: the seal makes consumers
faster, never more permissive than a producer holding the key.

The workers seal the derived events they encode with the same key: the derived sink then
hands the window partials to ClickHouse undecoded (sinks.derived_sink), and reads the others
without looking past the record.

The seal covers the bytes, not a version of the rules: a record sealed by an older SDK is not
checked again by a newer consumer. Like the PII key, the seal key is a secret: a producer that
holds it can put into the ledger what the consumers would otherwise refuse.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Sequence

SEAL_HEADER = "cxledger-seal"
SEAL_BYTES = 16
SEAL_KEY_MIN_CHARS = 32
_PERSON = b"cxledger-seal-1"  # BLAKE2b personalisation: this use of the key and no other


class Sealer:
    """Seals (producer) and verifies (consumers) ledger messages with one key."""

    def __init__(self, key: str):
        if len(key) < SEAL_KEY_MIN_CHARS:
            raise ValueError(f"a seal key has at least {SEAL_KEY_MIN_CHARS} characters")
        # BLAKE2b takes a key of at most 64 bytes: longer ones are hashed to 64 first
        raw = key.encode()
        self._key = raw if len(raw) <= 64 else hashlib.blake2b(raw).digest()
        # the hash state after the key block: each seal starts from a copy of it (a third less
        # time per message than keying a new hash)
        self._keyed = hashlib.blake2b(key=self._key, digest_size=SEAL_BYTES, person=_PERSON)

    def seal(self, key: bytes | None, value: bytes) -> bytes:
        """The seal of a message with this key and value."""
        mac = self._keyed.copy()
        key = key or b""
        mac.update(len(key).to_bytes(4, "big"))  # no key/value split gives another's bytes
        mac.update(key)
        mac.update(value)
        return mac.digest()

    def header(self, key: bytes | None, value: bytes) -> tuple[str, bytes]:
        return SEAL_HEADER, self.seal(key, value)

    def verifies(self, key: bytes | None, value: bytes | None,
                 headers: Sequence[tuple[str, bytes | None]] | None) -> bool:
        """Whether the message carries a valid seal of this key (its first seal header)."""
        if value is None or not headers:
            return False
        for name, seal in headers:
            if name == SEAL_HEADER:
                return seal is not None and hmac.compare_digest(seal, self.seal(key, value))
        return False


def sealer_of(key: str | None) -> Sealer | None:
    return Sealer(key) if key else None


def is_sealed(sealer: Sealer | None, message: Any) -> bool:
    """Whether a consumed message (confluent-kafka's ``Message``) carries a valid seal of
    ``sealer``'s key: what the consumers ask before they skip the SDK's checks."""
    return sealer is not None and sealer.verifies(message.key(), message.value(),
                                                  message.headers())
