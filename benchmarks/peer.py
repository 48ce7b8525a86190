"""The peer: the worker's folds on a plain confluent-kafka (librdkafka) loop.

    python -m benchmarks.peer --config FILE --state-topic TOPIC

What a framework on librdkafka would reach with the same folds and the same at-least-once
order as ``processors.app`` (a consumer group of its own, ``topics.processors_app``):

  1. consume a batch: up to 10,000 messages or 0.2 s (the worker's ``take_events``);
  2. decode with the project's codec and apply the consumers' ledger check
     (``schemas.validation.ledger_refusal``, unless the SDK sealed the message with the
     settings' seal key, ``schemas.seal``); what fails goes to the dead-letter topic;
  3. fold per partition in offset order (``processors.batch.PartitionFolds.fold_batch``)
     and record each partition's position, as the worker does;
  4. send the derived events (Avro, to the derived topics, keyed as the worker keys them)
     through an idempotent librdkafka producer and wait for every acknowledgement;
  5. persist the changed state (each changed customer and each partition's own state, encoded
     as the worker encodes it for its changelog) to a compacted topic, keyed and partitioned
     as the worker's changelog, and wait for those acknowledgements;
  6. commit the batch's offsets, synchronously.

Runs until SIGTERM/SIGINT; prints a JSON line of counters to stdout when it stops.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from cxledger.config import load_settings
from processors.batch import PartitionFolds, settle_heap, tune_gc_for_folds
from processors.changelog import state_records
from processors.rules import load_rules
from processors.window_batches import pack_window_partials
from producers.sdk import PRODUCER_DEFAULTS, make_codec
from schemas.codec import DecodeError
from schemas.deadletter import deadletter_message
from schemas.seal import is_sealed, sealer_of
from schemas.validation import ledger_refusal
from sinks.kafka_sink import consumer_conf

BATCH_SIZE = 10_000
BATCH_WITHIN = 0.2


class NotAcknowledged(RuntimeError):
    pass


try:  # how the worker keys a derived event on its topic
    from processors.derived import message_key
except ImportError:
    def message_key(record: dict) -> bytes:
        return (record["customer_id"] or record["city"]).encode()


def changed_state(folds: PartitionFolds, partitions) -> list[tuple[int, str, bytes | None]]:
    """(partition, key, value) of the changed state, encoded as the worker encodes it for its
    changelog (``processors.changelog.state_records``)."""
    return state_records(folds, partitions)


def run(config: str, state_topic: str) -> dict:
    settings = load_settings(config, environ={})
    topics = settings.topics
    rules = load_rules(settings.rules_path)
    codec = make_codec(settings)
    sealer = sealer_of(settings.seal_key)
    folds = PartitionFolds(rules)
    tune_gc_for_folds()
    consumer = Consumer(consumer_conf(settings, topics.processors_app))
    producer = Producer(settings.kafka_conf(**PRODUCER_DEFAULTS))
    failures: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             headers=None) -> None:
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers,
                                 on_delivery=delivered, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)

    def settle() -> None:
        remaining = producer.flush(60)
        if remaining or failures:
            raise NotAcknowledged(f"{remaining} in flight, failures {failures[:3]}")

    stopping = {"now": False}
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.__setitem__("now", True))
    counters = {"events": 0, "batches": 0, "derived": 0, "state_records": 0, "deadlettered": 0,
                "seconds_busy": 0.0}
    consumer.subscribe([topics.ledger])
    topic_for = topics.for_derived
    try:
        while not stopping["now"]:
            msgs = consumer.consume(BATCH_SIZE, timeout=BATCH_WITHIN)
            if not msgs:
                continue
            started = time.perf_counter()
            batch: dict[int, list[dict]] = defaultdict(list)
            ends: dict[int, int] = {}
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        print(f"consumer error: {err}", file=sys.stderr)
                    continue
                partition, offset = msg.partition(), msg.offset()
                ends[partition] = offset + 1
                sealed = is_sealed(sealer, msg)
                try:
                    record, _ = codec.decode(msg.value(), sealed)
                except DecodeError as exc:
                    reason = str(exc)
                else:
                    reason = None if sealed else ledger_refusal(record, msg.key())
                    if reason is None:
                        batch[partition].append(record)
                        continue
                value, headers = deadletter_message(msg.value(), reason, topics.processors_app,
                                                    topics.ledger, partition, offset)
                send(topics.deadletter, msg.key(), value, headers=headers)
                counters["deadlettered"] += 1
            if not ends:
                continue
            derived = folds.fold_batch(batch)
            for partition, end in ends.items():
                folds.get(partition).position = end
            for record in pack_window_partials(derived):  # as the worker sends them
                send(topic_for(record["event_type"]), message_key(record), codec.encode(record))
            settle()
            state = changed_state(folds, ends)
            for partition, key, value in state:
                send(state_topic, key.encode(), value, partition=partition)
            settle()
            consumer.commit(offsets=[TopicPartition(topics.ledger, p, end)
                                     for p, end in ends.items()], asynchronous=False)
            counters["events"] += sum(len(v) for v in batch.values())
            counters["batches"] += 1
            counters["derived"] += len(derived)
            counters["state_records"] += len(state)
            del derived, state
            settle_heap()
            counters["seconds_busy"] += time.perf_counter() - started
    finally:
        consumer.close()
        producer.flush(10)
    counters["seconds_busy"] = round(counters["seconds_busy"], 2)
    return counters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer")
    parser.add_argument("--config", required=True)
    parser.add_argument("--state-topic", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.config, args.state_topic)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
