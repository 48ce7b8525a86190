-- Migration 6: the incidents view from a table of its own. It read ledger_by_type FINAL and
-- parsed each incident event's JSON payload at query time, 12-15 ms on the benchmark's million
-- events however few incidents there are, and the "Incidents" panel evaluates it four times
-- (the panel, incident_tags' two time bounds and its join); "Contacts per city and hour" once
-- more. ClickHouse now types the incident events into `incident_events` on every insert into
-- ledger_events (a materialized view, as migration 3 does for hall visits): a few rows per
-- incident. customer_id is the ledger's ('' for these operational events), so that on a
-- cluster each row stays on the shard of the ledger row it came from. Like the tables of
-- migration 5, the table is merged into one part once it has gone quiet for 5 minutes.
-- Never edit an applied migration: a change is a new migration.

CREATE TABLE IF NOT EXISTS incident_events
(
    event_id    UUID,
    event_type  LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    customer_id String,
    incident_id String,
    level       Int64,
    service     String,
    cities      Array(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (incident_id, occurred_at, event_id)
SETTINGS min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

-- The view first, then the rows already in the ledger (see migration 3).
CREATE MATERIALIZED VIEW IF NOT EXISTS incident_events_mv TO incident_events AS
SELECT
    event_id, event_type, occurred_at, customer_id,
    JSONExtractString(payload, 'incident_id')        AS incident_id,
    JSONExtractInt(payload, 'level')                 AS level,
    JSONExtractString(payload, 'service')            AS service,
    JSONExtract(payload, 'cities', 'Array(String)')  AS cities
FROM ledger_events
WHERE event_type IN ('incident.detected', 'incident.resolved');

INSERT INTO incident_events COPY FROM incident_events_mv;

-- The view of migration 3 under the same name and columns, over the typed table.
CREATE VIEW IF NOT EXISTS incidents AS
SELECT
    incident_id,
    minIf(occurred_at, event_type = 'incident.detected') AS detected_at,
    if(countIf(event_type = 'incident.resolved') > 0,
       minIf(occurred_at, event_type = 'incident.resolved'), NULL) AS resolved_at,
    argMinIf(level, occurred_at, event_type = 'incident.detected') AS level,
    argMinIf(service, occurred_at, event_type = 'incident.detected') AS service,
    argMinIf(cities, occurred_at, event_type = 'incident.detected') AS cities
FROM incident_events FINAL
GROUP BY incident_id
HAVING countIf(event_type = 'incident.detected') > 0;
