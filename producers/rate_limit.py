"""Per-key rate limits of the ingest gateway: one token bucket per API key, counted in events.

A key with ``rate`` events/s and ``burst`` may send ``burst`` events at once and then ``rate``
per second on average. A request of n events takes n tokens, all or none; when there are too
few, the gateway answers 429 with ``Retry-After``: the seconds until n tokens are there. A
request of more than ``burst`` events could never pass, so it is refused with 413 instead
(split the batch). Buckets live in the process: two gateway replicas allow twice the rate.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: int  # capacity
    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, n: int, now: float | None = None) -> float:
        """Take ``n`` tokens and return 0, or take none and return the seconds to wait."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        if self.tokens + 1e-9 >= n:  # (float refills: 0.1 s at 10/s is 0.9999999999999 tokens)
            self.tokens = max(0.0, self.tokens - n)
            return 0.0
        return (n - self.tokens) / self.rate


class RateLimiter:
    """The buckets of all keys, made on first use; safe to call from any thread."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, name: str, rate: float, burst: int) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
            bucket = self._buckets[name] = TokenBucket(rate, burst)
        return bucket

    def take(self, name: str, rate: float, burst: int, n: int) -> int:
        """0 when key ``name`` may send ``n`` events now (they are counted), else the whole
        seconds to wait (for ``Retry-After``, at least 1)."""
        with self._lock:
            wait = self._bucket(name, rate, burst).take(n)
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    def wait(self, name: str, rate: float, burst: int) -> int:
        """Whole seconds until key ``name`` has a token again (0: it has one), taking none:
        a key that is out of tokens is answered before its body is read."""
        with self._lock:
            bucket = self._bucket(name, rate, burst)
            bucket._refill(time.monotonic())
            missing = 1 - bucket.tokens
        return 0 if missing <= 1e-9 else max(1, math.ceil(missing / rate))
