"""API keys of the ingest gateway: making them, recognising them, and what each may publish.

A key is ``cxl_`` and 43 url-safe characters (256 random bits). The settings hold only its
SHA-256 and its scope (``cxledger.config.GatewayKey``, ``[gateway.keys.<name>]`` in TOML), so a
leaked config file leaks no key. A plain SHA-256 is the right hash here: the key is random,
not a password, so a slow hash (scrypt, PBKDF2) would protect nothing more and would cost
every request tens of milliseconds.

Clients send the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    plaintext, entry = new_api_key("callcentre", channels=("phone", "ivr"))
    print(entry.toml())   # [gateway.keys.callcentre] sha256 = ..., channels = [...], ...
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping

from cxledger.config import GatewayKey, Settings, parse_gateway_keys
from schemas.catalogue import Catalogue, default_catalogue

KEY_PREFIX = "cxl_"


def hash_key(key: str) -> str:
    """The SHA-256 (hex) of a key, as the settings keep it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key(name: str, channels: Iterable[str] = ("*",), event_types: Iterable[str] = ("*",),
                rate: float | None = None, burst: int | None = None) -> tuple[str, GatewayKey]:
    """A fresh key and its settings entry: ``(plaintext_key, GatewayKey)``.

    Show the plaintext once and keep only the entry (``entry.toml()`` for a config file,
    ``{name: entry.as_json()}`` for CXLEDGER_GATEWAY_KEYS)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {"sha256": hash_key(key), "channels": list(channels),
             "event_types": list(event_types), "rate": rate, "burst": burst}
    return key, parse_gateway_keys({name: entry}, "new key")[0]  # the settings' own checks


@dataclass(frozen=True)
class ApiKey:
    """A configured key the gateway recognised: its name, scope and rate."""

    name: str
    channels: tuple[str, ...]
    event_types: tuple[str, ...]
    rate: float
    burst: int

    def refusal(self, event: Any) -> tuple[str, str] | None:
        """(field, reason) when this key may not publish ``event``, else None.

        Only what the event says it is counts: a missing or malformed channel or type is
        left to validation, which rejects it."""
        if not isinstance(event, Mapping):
            return None
        event_type, channel = event.get("event_type"), event.get("channel")
        if isinstance(event_type, str) and not _matches(event_type, self.event_types):
            return "event_type", (f"key {self.name!r} may not publish {event_type!r} events "
                                  f"(it may publish: {', '.join(self.event_types)})")
        if isinstance(channel, str) and not _matches(channel, self.channels):
            return "channel", (f"key {self.name!r} may not publish for channel {channel!r} "
                               f"(its channels: {', '.join(self.channels)})")
        return None


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


class KeyRing:
    """The configured keys, by hash. Raises ValueError at start for a scope that names no
    channel or event type of the contract (a typo would otherwise lock a channel out)."""

    def __init__(self, settings: Settings, catalogue: Catalogue | None = None):
        catalogue = catalogue or default_catalogue()
        types = catalogue.interaction_types
        channels = _channels(catalogue)
        self._by_hash: dict[str, ApiKey] = {}
        for entry in settings.gateway_keys:
            for what, patterns, known in (("channels", entry.channels, channels),
                                          ("event_types", entry.event_types, types)):
                for pattern in patterns:
                    if not any(fnmatchcase(k, pattern) for k in known):
                        raise ValueError(
                            f"gateway key {entry.name!r}: {what} entry {pattern!r} matches "
                            f"nothing; known {what}: {', '.join(known)}")
            self._by_hash[entry.sha256] = ApiKey(
                entry.name, entry.channels, entry.event_types,
                entry.rate if entry.rate is not None else settings.gateway_rate,
                entry.burst if entry.burst is not None else settings.gateway_burst)

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def names(self) -> list[str]:
        return sorted(k.name for k in self._by_hash.values())

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The key presented in ``headers``, or None when none or an unknown one is."""
        presented = presented_key(headers)
        if not presented:
            return None
        digest = hash_key(presented)
        for stored, key in self._by_hash.items():  # constant time per entry
            if hmac.compare_digest(stored, digest):
                return key
        return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


def _channels(catalogue: Catalogue) -> tuple[str, ...]:
    """The channels of the contract (the envelope's enum, less the reader's 'unknown')."""
    for f in catalogue.latest(catalogue.interaction_types[0]).definition["fields"]:
        if f["name"] == "channel":
            return tuple(s for s in f["type"]["symbols"] if s != "unknown")
    raise ValueError("the contract has no channel field")
