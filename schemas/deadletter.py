"""The dead-letter message every consumer writes for input it cannot take.

A dead letter carries the original bytes as its value and says, in headers, why and where from:
``reason``, ``dead_lettered_by``, ``source_topic``, ``source_partition``, ``source_offset``
(the position, see sinks.kafka_sink). A value too large for the dead-letter topic (a broker
takes about 1 MB a message by default) is cut to ``MAX_VALUE_BYTES`` with a ``truncated_from``
header giving its full size; ``deadletter_events`` keeps the whole value.
"""

from __future__ import annotations

MAX_VALUE_BYTES = 900_000


def deadletter_message(value: bytes | None, reason: str, by: str, topic: str, partition: int,
                       position: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of the dead letter for a message."""
    value = value or b""
    headers = [("reason", reason.encode()), ("dead_lettered_by", by.encode()),
               ("source_topic", topic.encode()), ("source_partition", str(partition).encode()),
               ("source_offset", str(position).encode())]
    if len(value) > MAX_VALUE_BYTES:
        headers.append(("truncated_from", str(len(value)).encode()))
        value = value[:MAX_VALUE_BYTES]
    return value, headers
