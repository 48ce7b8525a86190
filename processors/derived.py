"""What every derived event shares: a deterministic id, and hand-style rounding.

Replaying the same ledger with the same rules version must give identical derived events,
ids included (domain.md, "The ledger"), so a derived ``event_id`` is
``uuid5(NAMESPACE, "|".join([event_type, rules_version, *identifying inputs]))``:

| derived event               | identifying inputs                                          |
|-----------------------------|-------------------------------------------------------------|
| satisfaction.scored         | the survey's event_id                                       |
| complaint.sla_breached      | customer_id, complaint_id, sla, cycle (0, +1 per reopen)     |
| churn.risk_changed          | customer_id, event_id of the triggering event (or breach)    |
| tier.change_proposed        | proposal_id (itself uuid5 of "tier.proposal", version,       |
| tier.changed                |   customer_id, the billing event's event_id)                 |
| satisfaction.window_updated | source_partition, window, window_start, city, channel, tier, |
|                             |   version (events folded into the row so far)                |
| satisfaction.windows_updated| source_partition, the ids of the window_updated it carries   |
| feedback.sla_breached       | customer_id, feedback_id, sla                                |
| hall.survey_month_updated   | source_partition, hall_id, month, version                    |
| hall.survey_month_closed    | source_partition, month                                      |
| hall.key_improvement_flagged| hall_id, the month whose close flagged it                    |
| hall.key_improvement_cleared| hall_id, the month back on target                            |
"""

from __future__ import annotations

import hashlib
import math
import uuid

#: The namespace of every derived event id. Never change it: ids of replays would differ.
NAMESPACE = uuid.UUID("6f1c2a9e-3b57-5d0e-9a41-c8e2f7b3d915")

_BASE = hashlib.sha1(NAMESPACE.bytes)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def name_id(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))``, computed without building UUID objects."""
    h = _BASE.copy()
    h.update(name.encode())
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def derived_id(*parts: object) -> str:
    """The id of a derived event: ``uuid5(NAMESPACE, "|".join(parts))``.

    Call it as ``derived_id(event_type, rules_version, *identifying_inputs)``.
    """
    return name_id("|".join([p if p.__class__ is str else str(p) for p in parts]))


def round2(x: float) -> float:
    """Round half-up to 2 decimals, as a person computing by hand would (87.375 -> 87.38).

    ``round()`` works on the binary value, so a weighted sum landing a hair below a .xx5 tie
    would round down; the 1e-9 nudge absorbs that float noise (far below 0.005).
    """
    return math.floor(x * 100.0 + 0.5 + 1e-9) / 100.0


#: The window partials of one drain in one message (processors.window_batches).
WINDOWS_UPDATED = "satisfaction.windows_updated"

#: The one message key of every ``hall.survey_month_closed``: the hall-months fold reads them
#: all, in order, from the one partition of their topic this key lands on.
HALL_MONTHS_KEY = "hall-months"


def message_key(record: dict) -> bytes:
    """What a derived event is keyed by on its topic: its customer; a hall's aggregate or flag
    by its hall; a month close by ``HALL_MONTHS_KEY``; a batch of window partials by its ledger
    partition; any other aggregate by its city."""
    if record.get("customer_id"):
        return record["customer_id"].encode()
    if record["event_type"] == WINDOWS_UPDATED:
        return f"partition-{record['source_partition']}".encode()
    if record["event_type"] == "hall.survey_month_closed":
        return HALL_MONTHS_KEY.encode()
    return (record.get("hall_id") or record["city"]).encode()
