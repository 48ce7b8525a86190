"""The window partials of one drain as few messages: ``satisfaction.windows_updated``.

The fold drains one ``satisfaction.window_updated`` per window key it touched
(processors.windows), so a batch of N events gives up to 2N partials: in a live run at 5,000
events/s they were 95% of the worker's derived events. Sent one message each, every partial
costs the broker, the worker's acknowledgement wait and the derived sink a message of its own.

On Kafka the worker therefore sends the partials of one ledger partition's drain as one
``satisfaction.windows_updated`` (at most ``MAX_PARTIALS`` partials per message), and the
derived sink writes each partial as the row it always was (sinks.derived_sink). Nothing else
changes: the fold, its partials, their versions and ids, the table and its views, and replay
(which writes the partials without Kafka).
"""

from __future__ import annotations

from typing import Any, Iterable

from processors.derived import WINDOWS_UPDATED, derived_id
from processors.windows import WINDOW_UPDATED

#: Partials per message: about 150 bytes each encoded, so a message stays near 150 KB, well
#: under a broker's default message size limit (1 MB).
MAX_PARTIALS = 1_000


def pack_window_partials(derived: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``derived`` with its ``satisfaction.window_updated`` records replaced by
    ``satisfaction.windows_updated`` ones: per (source partition, rules version), in drain
    order, ``MAX_PARTIALS`` at a time, after the other derived events (whose order is kept)."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for record in derived:
        if record["event_type"] == WINDOW_UPDATED:
            key = (record["source_partition"], record["rules_version"])
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(record)
        else:
            out.append(record)
    for (partition, version), partials in groups.items():
        for i in range(0, len(partials), MAX_PARTIALS):
            out.append(windows_updated(partition, version, partials[i:i + MAX_PARTIALS]))
    return out


def windows_updated(partition: int, version: str, partials: list[dict[str, Any]]
                    ) -> dict[str, Any]:
    """One ``satisfaction.windows_updated`` carrying ``partials`` (window_updated records of
    one partition; their envelope fields are not written). Its id is derived from theirs."""
    return {
        "event_id": derived_id(WINDOWS_UPDATED, version, partition,
                               *[p["event_id"] for p in partials]),
        "event_type": WINDOWS_UPDATED,
        "occurred_at": max(p["window_start"] for p in partials),
        "customer_id": "",
        "channel": "unknown",
        "city": "",
        "agent_id": None,
        "correlation_id": None,
        "rules_version": version,
        "source_partition": partition,
        "partials": partials,
    }


def unpack_window_partials(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The partials of a decoded ``satisfaction.windows_updated``, each with the
    ``source_partition`` and ``rules_version`` of the message (the fields a
    ``satisfaction.window_updated`` carries besides its envelope)."""
    partition, version = record["source_partition"], record["rules_version"]
    partials = record["partials"]
    for p in partials:
        p["source_partition"] = partition
        p["rules_version"] = version
    return partials
