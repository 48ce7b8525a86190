-- Migration 3: what the service-hall views read, in tables of its own. The views of migration 2
-- read the whole ledger (FINAL) and parsed its JSON payload at query time: 1.5 s a hall panel
-- on a million events. ClickHouse now fills these tables itself from every insert into
-- ledger_events (materialized views): hall visits and on-site shifts typed, and the few rarer
-- event types the other views read (exams, spot checks, feedback, incidents, tier decisions)
-- ordered by type, so a view reads its own rows only. A ledger row inserted twice (a
-- redelivered batch) gives two rows here too: the tables are ReplacingMergeTree and the views
-- read them FINAL, as the ledger view reads ledger_events.
-- Never edit an applied migration: a change is a new migration. {placeholders} come from the
-- rules file (sinks.clickhouse.view_params).

CREATE TABLE IF NOT EXISTS hall_visit_events
(
    event_id         UUID,
    occurred_at      DateTime64(3, 'UTC'),
    customer_id      String,
    city             LowCardinality(String),
    channel          LowCardinality(String),
    agent_id         Nullable(String),
    visit_id         String,
    hall_id          String,
    district         String,
    wait_seconds     Int64,
    served_at        LowCardinality(String),
    business_type    LowCardinality(String),
    handling_seconds Int64,
    resolved_on_site Bool,
    greeted          Bool,
    need_asked       Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (hall_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS onsite_shift_events
(
    event_id           UUID,
    occurred_at        DateTime64(3, 'UTC'),
    customer_id        String,
    city               LowCardinality(String),
    shift_id           String,
    hall_id            String,
    manager_id         String,
    customers_received Int64,
    unresolved         Int64,
    on_duty            Bool,
    handheld_used      Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (hall_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS ledger_by_type
(
    event_id    UUID,
    event_type  LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    customer_id String,
    channel     LowCardinality(String),
    city        LowCardinality(String),
    agent_id    Nullable(String),
    payload     String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_type, occurred_at, event_id);

-- The views first, then the rows already in the ledger: a row inserted in between reaches the
-- table twice (view and copy), which FINAL collapses; the other order could miss it.
CREATE MATERIALIZED VIEW IF NOT EXISTS hall_visit_events_mv TO hall_visit_events AS
SELECT
    event_id, occurred_at, customer_id, city, channel, agent_id,
    JSONExtractString(payload, 'visit_id')       AS visit_id,
    JSONExtractString(payload, 'hall_id')        AS hall_id,
    JSONExtractString(payload, 'district')       AS district,
    JSONExtractInt(payload, 'wait_seconds')      AS wait_seconds,
    JSONExtractString(payload, 'served_at')      AS served_at,
    JSONExtractString(payload, 'business_type')  AS business_type,
    JSONExtractInt(payload, 'handling_seconds')  AS handling_seconds,
    JSONExtractBool(payload, 'resolved_on_site') AS resolved_on_site,
    JSONExtractBool(payload, 'greeted')          AS greeted,
    JSONExtractBool(payload, 'need_asked')       AS need_asked
FROM ledger_events
WHERE event_type = 'hall.visit_completed';

CREATE MATERIALIZED VIEW IF NOT EXISTS onsite_shift_events_mv TO onsite_shift_events AS
SELECT
    event_id, occurred_at, customer_id, city,
    JSONExtractString(payload, 'shift_id')          AS shift_id,
    JSONExtractString(payload, 'hall_id')           AS hall_id,
    JSONExtractString(payload, 'manager_id')        AS manager_id,
    JSONExtractInt(payload, 'customers_received')   AS customers_received,
    JSONExtractInt(payload, 'unresolved')           AS unresolved,
    JSONExtractBool(payload, 'on_duty')             AS on_duty,
    JSONExtractBool(payload, 'handheld_used')       AS handheld_used
FROM ledger_events
WHERE event_type = 'supervision.onsite_shift';

CREATE MATERIALIZED VIEW IF NOT EXISTS ledger_by_type_mv TO ledger_by_type AS
SELECT event_id, event_type, occurred_at, customer_id, channel, city, agent_id, payload
FROM ledger_events
WHERE event_type IN ('staff.exam_scored', 'quality.spot_check_recorded', 'feedback.received',
                     'feedback.handled', 'feedback.result_reported', 'incident.detected',
                     'incident.resolved', 'tier.change_decided');

-- The rows already in the ledger (what each view above would have written).
INSERT INTO hall_visit_events COPY FROM hall_visit_events_mv;

INSERT INTO onsite_shift_events COPY FROM onsite_shift_events_mv;

INSERT INTO ledger_by_type COPY FROM ledger_by_type_mv;

-- The views of migration 2 under the same names and columns, now over the typed tables
-- (`cxledger db migrate` replaces a view whose query changed).
CREATE VIEW IF NOT EXISTS hall_visits AS
SELECT
    event_id, occurred_at, customer_id, city, channel, agent_id,
    formatDateTime(occurred_at, '%Y-%m', '{business_timezone}') AS month,
    visit_id, hall_id, district, wait_seconds, served_at, business_type, handling_seconds,
    resolved_on_site, greeted, need_asked
FROM hall_visit_events FINAL;

CREATE VIEW IF NOT EXISTS onsite_shifts AS
SELECT
    event_id, occurred_at, city,
    formatDateTime(occurred_at, '%Y-%m', '{business_timezone}') AS month,
    shift_id, hall_id, manager_id, customers_received, unresolved, on_duty, handheld_used
FROM onsite_shift_events FINAL;

-- The views of migrations 1 and 2 that read these event types, now over ledger_by_type
-- (same names, same columns).

CREATE VIEW IF NOT EXISTS staff_exams AS
SELECT event_id, occurred_at, city, agent_id,
       formatDateTime(occurred_at, '%Y-%m', '{business_timezone}') AS month,
       JSONExtractString(payload, 'exam_id')  AS exam_id,
       JSONExtractString(payload, 'hall_id')  AS hall_id,
       JSONExtractFloat(payload, 'score')     AS score
FROM ledger_by_type FINAL
WHERE event_type = 'staff.exam_scored';

CREATE VIEW IF NOT EXISTS spot_checks AS
SELECT event_id, occurred_at, city,
       formatDateTime(occurred_at, '%Y-%m', '{business_timezone}') AS month,
       JSONExtractString(payload, 'check_id')  AS check_id,
       JSONExtractString(payload, 'unit_type') AS unit_type,
       JSONExtractString(payload, 'unit_id')   AS unit_id,
       JSONExtractInt(payload, 'sampled')      AS sampled,
       JSONExtractInt(payload, 'passed')       AS passed,
       round(JSONExtractInt(payload, 'passed') / nullIf(JSONExtractInt(payload, 'sampled'), 0), 4) AS pass_rate,
       JSONExtractFloat(payload, 'score')      AS score
FROM ledger_by_type FINAL
WHERE event_type = 'quality.spot_check_recorded';

CREATE VIEW IF NOT EXISTS feedback_sla_compliance AS
SELECT
    toDate(received_at, '{business_timezone}') AS day, city,
    count() AS received,
    countIf(h_met) AS handled_met, countIf(h_missed) AS handled_missed,
    round(countIf(h_met) / nullIf(countIf(h_met OR h_missed), 0), 4) AS handled_compliance,
    countIf(r_met) AS result_met, countIf(r_missed) AS result_missed,
    round(countIf(r_met) / nullIf(countIf(r_met OR r_missed), 0), 4) AS result_compliance
FROM
(
    SELECT f.feedback_id AS feedback_id, f.city AS city, f.received_at AS received_at,
           NOT b.handled_breached AND (f.handled_at IS NOT NULL OR f.reported_at IS NOT NULL) AS h_met,
           b.handled_breached AS h_missed,
           NOT b.result_breached AND f.reported_at IS NOT NULL AS r_met,
           b.result_breached AS r_missed
    FROM
    (
        SELECT JSONExtractString(payload, 'feedback_id') AS feedback_id, customer_id,
               anyIf(city, event_type = 'feedback.received') AS city,
               minIf(occurred_at, event_type = 'feedback.received') AS received_at,
               if(countIf(event_type = 'feedback.handled') > 0,
                  minIf(occurred_at, event_type = 'feedback.handled'), NULL) AS handled_at,
               if(countIf(event_type = 'feedback.result_reported') > 0,
                  minIf(occurred_at, event_type = 'feedback.result_reported'), NULL) AS reported_at
        FROM ledger_by_type FINAL
        WHERE event_type IN ('feedback.received', 'feedback.handled', 'feedback.result_reported')
        GROUP BY feedback_id, customer_id
        HAVING countIf(event_type = 'feedback.received') > 0
    ) AS f
    LEFT JOIN
    (
        SELECT customer_id, feedback_id, countIf(sla = 'handled') > 0 AS handled_breached,
               countIf(sla = 'result') > 0 AS result_breached
        FROM feedback_sla_breaches FINAL GROUP BY customer_id, feedback_id
    ) AS b ON b.customer_id = f.customer_id AND b.feedback_id = f.feedback_id
)
GROUP BY day, city;

CREATE VIEW IF NOT EXISTS incidents AS
SELECT
    JSONExtractString(payload, 'incident_id') AS incident_id,
    minIf(occurred_at, event_type = 'incident.detected') AS detected_at,
    if(countIf(event_type = 'incident.resolved') > 0,
       minIf(occurred_at, event_type = 'incident.resolved'), NULL) AS resolved_at,
    argMinIf(JSONExtractInt(payload, 'level'), occurred_at, event_type = 'incident.detected') AS level,
    argMinIf(JSONExtractString(payload, 'service'), occurred_at, event_type = 'incident.detected') AS service,
    argMinIf(JSONExtract(payload, 'cities', 'Array(String)'), occurred_at,
             event_type = 'incident.detected') AS cities
FROM ledger_by_type FINAL
WHERE event_type IN ('incident.detected', 'incident.resolved')
GROUP BY incident_id
HAVING countIf(event_type = 'incident.detected') > 0;

CREATE VIEW IF NOT EXISTS tier_pending_approvals AS
SELECT p.customer_id AS customer_id, p.proposal_id AS proposal_id, p.city AS city,
       p.from_tier AS from_tier, p.to_tier AS to_tier, p.basis AS basis,
       p.occurred_at AS proposed_at
FROM (SELECT * FROM tier_proposals FINAL WHERE requires_approval) AS p
INNER JOIN (SELECT customer_id, max(occurred_at) AS last_proposed
            FROM tier_proposals FINAL GROUP BY customer_id) AS l
        ON l.customer_id = p.customer_id AND l.last_proposed = p.occurred_at
LEFT JOIN (SELECT customer_id, max(occurred_at) AS last_decided FROM ledger_by_type FINAL
           WHERE event_type = 'tier.change_decided' GROUP BY customer_id) AS d
        ON d.customer_id = p.customer_id
WHERE d.last_decided < p.occurred_at;
