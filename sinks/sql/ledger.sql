-- Migration 1 of the ClickHouse schema (sinks/migrations.py; `cxledger db ddl` renders it for one
-- node or, with --cluster, as Replicated tables under Distributed ones). Never edit an applied
-- migration: a change is a new migration.
--
-- Partitioning: by month of event time, toYYYYMM(occurred_at). At 50 million events a day a
-- month is ~1.5 billion rows: few partitions, big parts; queries by time range prune by month.
-- TTL: none, and none to add. The ledger is the record: everything derived is recomputed from it.
--
-- The raw ledger: every interaction event, exactly as published, one row per event.
-- ReplacingMergeTree on a key that ends in event_id: a redelivered event collapses into one row;
-- query the `ledger` view (FINAL) to never see a not-yet-merged duplicate.
CREATE TABLE IF NOT EXISTS ledger_events
(
    event_id        UUID,
    event_type      LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    customer_id     String,
    channel         LowCardinality(String),
    city            LowCardinality(String),
    agent_id        Nullable(String),
    correlation_id  Nullable(String),
    payload         String CODEC(ZSTD(3)),
    schema_id       UInt32,
    kafka_partition UInt16,
    -- the event's position in its ledger partition: the Kafka offset (on the single-machine
    -- stack, whose broker starts empty, continued after the positions already stored)
    kafka_offset    UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- The ledger sink looks event ids up before it inserts (the first version of an id is kept).
ALTER TABLE ledger_events ADD INDEX IF NOT EXISTS event_id_seen event_id TYPE bloom_filter(0.001) GRANULARITY 1;

-- What ops query: the ledger with redeliveries collapsed.
CREATE VIEW IF NOT EXISTS ledger AS
SELECT * FROM ledger_events FINAL;

-- Messages that could not be decoded (bad framing, unknown schema id, corrupt body).
CREATE TABLE IF NOT EXISTS deadletter_events
(
    source_topic     LowCardinality(String),
    source_partition UInt16,
    source_offset    UInt64,
    reason           String,
    key              Nullable(String),
    value_hex        String,
    seen_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, source_partition, source_offset);
