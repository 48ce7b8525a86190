-- Migration 2: service halls, feedback, incidents and quality control (domain.md, "Service
-- halls, feedback, incidents and quality control"); service-request compliance per window.
-- Never edit an applied migration: a change is a new migration. {placeholders} come from the
-- rules file (sinks.clickhouse.view_params).
--
-- Operational ledger events (supervision.onsite_shift, quality.spot_check_recorded,
-- staff.exam_scored, incident.*) have no customer: their ledger_events rows have customer_id ''.
-- The views below read them (and the hall visits) from the ledger's payload.

-- Service requests per window (satisfaction.window_updated v2): answered within the SLA or not.
ALTER TABLE satisfaction_window_partials ADD COLUMN IF NOT EXISTS service_requests UInt32 DEFAULT 0;
ALTER TABLE satisfaction_window_partials ADD COLUMN IF NOT EXISTS service_requests_met UInt32 DEFAULT 0;

-- One row per (hall, month, ledger partition): the partition's partial of the hall's SMS survey
-- replies in the month (business time zone); the highest version is current, `closed` once the
-- partition's clock passed the month's end. hall_satisfaction_monthly sums the partitions.
CREATE TABLE IF NOT EXISTS hall_survey_month_partials
(
    hall_id              String,
    city                 LowCardinality(String),
    month                LowCardinality(String),
    month_start          DateTime64(3, 'UTC'),
    source_partition     UInt16,
    version              UInt64,
    closed               Bool,
    replies              UInt32,
    valid_replies        UInt32,
    score_sum            Float64,
    overall_sum          Float64,
    overall_count        UInt32,
    environment_sum      Float64,
    environment_count    UInt32,
    waiting_sum          Float64,
    waiting_count        UInt32,
    handling_sum         Float64,
    handling_count       UInt32,
    staff_attitude_sum   Float64,
    staff_attitude_count UInt32,
    rules_version        LowCardinality(String)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(month_start)
ORDER BY (month_start, hall_id, source_partition);

-- What each ledger partition handed the hall-months fold when it closed a month.
CREATE TABLE IF NOT EXISTS hall_survey_month_closes
(
    event_id         UUID,
    source_partition UInt16,
    month            LowCardinality(String),
    month_end        DateTime64(3, 'UTC'),
    hall_ids         Array(String),
    hall_cities      Array(String),
    replies          Array(UInt32),
    valid_replies    Array(UInt32),
    score_sums       Array(Float64),
    rules_version    LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (month, source_partition, event_id);

-- hall.key_improvement_flagged: three months below target; hall.key_improvement_cleared: back.
CREATE TABLE IF NOT EXISTS hall_key_improvement_flags
(
    event_id      UUID,
    hall_id       String,
    city          LowCardinality(String),
    months        Array(String),
    values        Array(Float64),
    valid_replies Array(UInt32),
    target        Float64,
    occurred_at   DateTime64(3, 'UTC'),
    rules_version LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (hall_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS hall_key_improvement_clears
(
    event_id       UUID,
    hall_id        String,
    city           LowCardinality(String),
    month          LowCardinality(String),
    value          Float64,
    valid_replies  UInt32,
    target         Float64,
    flagged_months Array(String),
    occurred_at    DateTime64(3, 'UTC'),
    rules_version  LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (hall_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS feedback_sla_breaches
(
    event_id      UUID,
    feedback_id   String,
    customer_id   String,
    city          LowCardinality(String),
    channel       LowCardinality(String),
    sla           LowCardinality(String),
    deadline      DateTime64(3, 'UTC'),
    received_at   DateTime64(3, 'UTC'),
    occurred_at   DateTime64(3, 'UTC'),
    rules_version LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (city, occurred_at, event_id);

-- A hall's SMS satisfaction per month, the ledger partitions summed: valid replies, the month
-- value (mean of the valid replies' scores, 2 decimals) and each item's mean as a percent.
CREATE VIEW IF NOT EXISTS hall_satisfaction_monthly AS
SELECT
    hall_id, month, month_start, city, replies, valid_replies, score_sum,
    round(score_sum / nullIf(valid_replies, 0), 2)                           AS satisfaction,
    round({hall_item_scale} * overall_sum / nullIf(overall_count, 0), 2)     AS overall,
    round({hall_item_scale} * environment_sum / nullIf(environment_count, 0), 2) AS environment,
    round({hall_item_scale} * waiting_sum / nullIf(waiting_count, 0), 2)     AS waiting,
    round({hall_item_scale} * handling_sum / nullIf(handling_count, 0), 2)   AS handling,
    round({hall_item_scale} * staff_attitude_sum / nullIf(staff_attitude_count, 0), 2) AS staff_attitude,
    valid_replies >= {hall_min_valid_replies}                                AS ranked,
    closed_partitions
FROM
(
    SELECT hall_id, month, min(month_start) AS month_start, any(city) AS city,
           sum(replies) AS replies, sum(valid_replies) AS valid_replies, sum(score_sum) AS score_sum,
           sum(overall_sum) AS overall_sum, sum(overall_count) AS overall_count,
           sum(environment_sum) AS environment_sum, sum(environment_count) AS environment_count,
           sum(waiting_sum) AS waiting_sum, sum(waiting_count) AS waiting_count,
           sum(handling_sum) AS handling_sum, sum(handling_count) AS handling_count,
           sum(staff_attitude_sum) AS staff_attitude_sum,
           sum(staff_attitude_count) AS staff_attitude_count,
           countIf(closed) AS closed_partitions
    FROM hall_survey_month_partials FINAL
    GROUP BY hall_id, month
);

-- Every hall visit, typed from the ledger.
CREATE VIEW IF NOT EXISTS hall_visits AS
SELECT
    event_id, occurred_at, customer_id, city, channel, agent_id,
    formatDateTime(occurred_at, '%Y-%m', '{business_timezone}')  AS month,
    JSONExtractString(payload, 'visit_id')                       AS visit_id,
    JSONExtractString(payload, 'hall_id')                        AS hall_id,
    JSONExtractString(payload, 'district')                       AS district,
    JSONExtractInt(payload, 'wait_seconds')                      AS wait_seconds,
    JSONExtractString(payload, 'served_at')                      AS served_at,
    JSONExtractString(payload, 'business_type')                  AS business_type,
    JSONExtractInt(payload, 'handling_seconds')                  AS handling_seconds,
    JSONExtractBool(payload, 'resolved_on_site')                 AS resolved_on_site,
    JSONExtractBool(payload, 'greeted')                          AS greeted,
    JSONExtractBool(payload, 'need_asked')                       AS need_asked
FROM ledger
WHERE event_type = 'hall.visit_completed';

-- The halls: district and city as their latest visit says.
CREATE VIEW IF NOT EXISTS halls AS
SELECT hall_id, argMax(district, occurred_at) AS district, argMax(city, occurred_at) AS city,
       count() AS visits
FROM hall_visits
GROUP BY hall_id;

-- On-site reception shifts (驻厅接待), typed from the ledger.
CREATE VIEW IF NOT EXISTS onsite_shifts AS
SELECT
    event_id, occurred_at, city,
    formatDateTime(occurred_at, '%Y-%m', '{business_timezone}')  AS month,
    JSONExtractString(payload, 'shift_id')                       AS shift_id,
    JSONExtractString(payload, 'hall_id')                        AS hall_id,
    JSONExtractString(payload, 'manager_id')                     AS manager_id,
    JSONExtractInt(payload, 'customers_received')                AS customers_received,
    JSONExtractInt(payload, 'unresolved')                        AS unresolved,
    JSONExtractBool(payload, 'on_duty')                          AS on_duty,
    JSONExtractBool(payload, 'handheld_used')                    AS handheld_used
FROM ledger
WHERE event_type = 'supervision.onsite_shift';

-- Hall metrics per hall and month: visits, mean and p90 wait, handheld share, on-site resolution
-- from the supervisors' shifts ((received - unresolved) / received), greeting and need-asked
-- rates, SMS satisfaction and each item, replies and the response rate (replies / visits).
CREATE VIEW IF NOT EXISTS hall_metrics_monthly AS
SELECT
    m.hall_id AS hall_id, m.month AS month,
    toDateTime(concat(m.month, '-01 00:00:00'), '{business_timezone}') AS month_start,
    if(h.district = '', '(unknown)', h.district) AS district,
    if(m.city = '', h.city, m.city) AS city,
    m.visits AS visits,
    round(m.wait_sum / nullIf(m.visits, 0), 1)              AS wait_mean_seconds,
    m.wait_p90 AS wait_p90_seconds,
    round(m.handheld / nullIf(m.visits, 0), 4)              AS handheld_share,
    round(m.greeted / nullIf(m.visits, 0), 4)               AS greeting_rate,
    round(m.need_asked / nullIf(m.visits, 0), 4)            AS need_asked_rate,
    m.shifts AS shifts, m.received AS shift_customers, m.unresolved AS shift_unresolved,
    round((m.received - m.unresolved) / nullIf(m.received, 0), 4) AS onsite_resolution_rate,
    m.replies AS replies, m.valid_replies AS valid_replies, m.score_sum AS score_sum,
    round(m.replies / nullIf(m.visits, 0), 4)               AS response_rate,
    round(m.score_sum / nullIf(m.valid_replies, 0), 2)      AS satisfaction,
    m.overall AS overall, m.environment AS environment, m.waiting AS waiting,
    m.handling AS handling, m.staff_attitude AS staff_attitude
FROM
(
    SELECT hall_id, month, max(city) AS city,
           sum(visits) AS visits, sum(wait_sum) AS wait_sum, max(wait_p90) AS wait_p90,
           sum(handheld) AS handheld, sum(greeted) AS greeted, sum(need_asked) AS need_asked,
           sum(shifts) AS shifts, sum(received) AS received, sum(unresolved) AS unresolved,
           sum(replies) AS replies, sum(valid_replies) AS valid_replies, sum(score_sum) AS score_sum,
           max(overall) AS overall, max(environment) AS environment, max(waiting) AS waiting,
           max(handling) AS handling, max(staff_attitude) AS staff_attitude
    FROM
    (
        SELECT hall_id, month, any(city) AS city, count() AS visits, sum(wait_seconds) AS wait_sum,
               toFloat64(quantileExact(0.9)(wait_seconds)) AS wait_p90,
               countIf(served_at = 'handheld') AS handheld, countIf(greeted) AS greeted,
               countIf(need_asked) AS need_asked, 0 AS shifts, 0 AS received, 0 AS unresolved,
               0 AS replies, 0 AS valid_replies, 0 AS score_sum,
               CAST(NULL AS Nullable(Float64)) AS overall, CAST(NULL AS Nullable(Float64)) AS environment,
               CAST(NULL AS Nullable(Float64)) AS waiting, CAST(NULL AS Nullable(Float64)) AS handling,
               CAST(NULL AS Nullable(Float64)) AS staff_attitude
        FROM hall_visits GROUP BY hall_id, month
        UNION ALL
        SELECT hall_id, month, any(city), 0, 0, CAST(NULL AS Nullable(Float64)), 0, 0, 0,
               count(), sum(customers_received), sum(unresolved), 0, 0, 0,
               NULL, NULL, NULL, NULL, NULL
        FROM onsite_shifts GROUP BY hall_id, month
        UNION ALL
        SELECT hall_id, month, city, 0, 0, CAST(NULL AS Nullable(Float64)), 0, 0, 0, 0, 0, 0,
               replies, valid_replies, score_sum, overall, environment, waiting, handling,
               staff_attitude
        FROM hall_satisfaction_monthly
    )
    GROUP BY hall_id, month
) AS m
LEFT JOIN halls AS h ON h.hall_id = m.hall_id;

-- The same per district and month.
CREATE VIEW IF NOT EXISTS hall_metrics_district_monthly AS
SELECT
    district, month, any(h_month_start) AS month_start, any(h_city) AS city, count() AS halls,
    sum(h_visits) AS visits,
    round(sum(h_wait_sum) / nullIf(sum(h_visits), 0), 1)        AS wait_mean_seconds,
    round(sum(h_handheld) / nullIf(sum(h_visits), 0), 4)        AS handheld_share,
    round(sum(h_greeted) / nullIf(sum(h_visits), 0), 4)         AS greeting_rate,
    round(sum(h_need_asked) / nullIf(sum(h_visits), 0), 4)      AS need_asked_rate,
    round((sum(h_received) - sum(h_unresolved)) / nullIf(sum(h_received), 0), 4) AS onsite_resolution_rate,
    sum(h_replies) AS replies, sum(h_valid) AS valid_replies,
    round(sum(h_score_sum) / nullIf(sum(h_valid), 0), 2)        AS satisfaction
FROM
(
    SELECT district, month, month_start AS h_month_start, city AS h_city, visits AS h_visits,
           coalesce(wait_mean_seconds, 0) * visits AS h_wait_sum,
           coalesce(handheld_share, 0) * visits AS h_handheld,
           coalesce(greeting_rate, 0) * visits AS h_greeted,
           coalesce(need_asked_rate, 0) * visits AS h_need_asked,
           shift_customers AS h_received, shift_unresolved AS h_unresolved,
           replies AS h_replies, valid_replies AS h_valid, score_sum AS h_score_sum
    FROM hall_metrics_monthly
)
GROUP BY district, month;

-- The hall league table: halls with enough valid replies ranked by the month's satisfaction,
-- best first (rank) and worst first (rank_from_bottom); top 10: rank <= 10, bottom 10:
-- rank_from_bottom <= 10.
CREATE VIEW IF NOT EXISTS hall_league_monthly AS
SELECT
    month, hall_id, district, city, satisfaction, valid_replies, replies,
    satisfaction >= {hall_target} AS on_target,
    row_number() OVER (PARTITION BY month ORDER BY satisfaction DESC, hall_id) AS rank,
    row_number() OVER (PARTITION BY month ORDER BY satisfaction ASC, hall_id)  AS rank_from_bottom,
    count() OVER (PARTITION BY month) AS ranked_halls
FROM hall_metrics_monthly
WHERE valid_replies >= {hall_min_valid_replies};

-- Halls flagged for key improvement now: their latest flag has no clear after it.
CREATE VIEW IF NOT EXISTS hall_key_improvement_current AS
SELECT f.hall_id AS hall_id, f.city AS city, f.months AS months, f.values AS values,
       f.valid_replies AS valid_replies, f.flagged_at AS flagged_at
FROM
(
    SELECT hall_id, argMax(city, occurred_at) AS city, argMax(months, occurred_at) AS months,
           argMax(values, occurred_at) AS values, argMax(valid_replies, occurred_at) AS valid_replies,
           max(occurred_at) AS flagged_at
    FROM hall_key_improvement_flags FINAL GROUP BY hall_id
) AS f
LEFT JOIN (SELECT hall_id, max(occurred_at) AS last_cleared
           FROM hall_key_improvement_clears FINAL GROUP BY hall_id) AS c
       ON c.hall_id = f.hall_id
WHERE c.last_cleared < f.flagged_at;

-- Staff exams and spot checks, typed from the ledger.
CREATE VIEW IF NOT EXISTS staff_exams AS
SELECT event_id, occurred_at, city, agent_id,
       formatDateTime(occurred_at, '%Y-%m', '{business_timezone}') AS month,
       JSONExtractString(payload, 'exam_id')  AS exam_id,
       JSONExtractString(payload, 'hall_id')  AS hall_id,
       JSONExtractFloat(payload, 'score')     AS score
FROM ledger
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
FROM ledger
WHERE event_type = 'quality.spot_check_recorded';

-- Star staff candidates (明星员工): a month's exam mean >= {star_exam_mean} and no spot check
-- of theirs below {star_spot_check} in that month.
CREATE VIEW IF NOT EXISTS star_staff_candidates AS
SELECT e.month AS month, e.agent_id AS agent_id, e.hall_id AS hall_id, e.city AS city,
       e.exams AS exams, e.exam_mean AS exam_mean, s.spot_checks AS spot_checks,
       s.lowest_spot_check AS lowest_spot_check
FROM
(
    SELECT month, agent_id, argMax(hall_id, occurred_at) AS hall_id, argMax(city, occurred_at) AS city,
           count() AS exams, round(avg(score), 2) AS exam_mean
    FROM staff_exams GROUP BY month, agent_id
) AS e
LEFT JOIN
(
    SELECT month, unit_id AS agent_id, count() AS spot_checks,
           CAST(min(score) AS Nullable(Float64)) AS lowest_spot_check
    FROM spot_checks WHERE unit_type = 'agent' GROUP BY month, agent_id
) AS s ON s.month = e.month AND s.agent_id = e.agent_id
WHERE e.exam_mean >= {star_exam_mean}
  AND (s.spot_checks = 0 OR s.lowest_spot_check >= {star_spot_check});

-- Feedback SLA compliance per day of receipt (business time zone) and city: met = the step came
-- on time (a result reported meets the handled SLA too), missed = feedback.sla_breached;
-- compliance = met / (met + missed), over the feedback whose deadline is settled.
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
        FROM ledger
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

-- Service-request compliance per window (1m, 1d) and city / channel / tier: service requests
-- answered within the SLA ({service_request_seconds} s first response) over service requests.
CREATE VIEW IF NOT EXISTS service_request_compliance AS
SELECT window, window_start, city, channel, tier, requests AS service_requests, met,
       round(met / nullIf(requests, 0), 4) AS compliance
FROM
(
    SELECT window, window_start, city, channel, tier,
           sum(service_requests) AS requests, sum(service_requests_met) AS met
    FROM satisfaction_window_partials FINAL
    GROUP BY window, window_start, city, channel, tier
);

-- Incidents: when detected and resolved (NULL while open), level, service, affected cities.
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
FROM ledger
WHERE event_type IN ('incident.detected', 'incident.resolved')
GROUP BY incident_id
HAVING countIf(event_type = 'incident.detected') > 0;

-- Incident tagging (processors.incidents): a contact or a complaint in an affected city while an
-- incident is open (detected_at <= occurred_at < resolved_at, or not resolved yet) carries its id.
CREATE VIEW IF NOT EXISTS incident_tags AS
SELECT i.incident_id AS incident_id, i.level AS level, i.service AS service,
       e.event_id AS event_id, e.event_type AS event_type, e.occurred_at AS occurred_at,
       e.customer_id AS customer_id, e.city AS city, e.channel AS channel,
       coalesce(nullIf(JSONExtractString(e.payload, 'complaint_id'), ''),
                JSONExtractString(e.payload, 'contact_id')) AS subject_id
FROM (SELECT event_id, event_type, occurred_at, customer_id, city, channel, payload FROM ledger
      WHERE event_type IN ('contact.completed', 'complaint.filed')) AS e
INNER JOIN (SELECT incident_id, level, service, detected_at, resolved_at, arrayJoin(cities) AS city
            FROM incidents) AS i ON i.city = e.city
WHERE e.occurred_at >= i.detected_at AND (i.resolved_at IS NULL OR e.occurred_at < i.resolved_at);

-- Contact volume per city and hour (the 1-minute windows summed), with the incidents open in that
-- hour in that city overlaid (incident_ids, the most urgent level: 1 is an emergency).
CREATE VIEW IF NOT EXISTS contact_volume_hourly AS
WITH (SELECT groupArray((incident_id, level, detected_at, resolved_at, cities)) FROM incidents) AS all_incidents
SELECT hour, city, contacts, complaints,
       arraySort(arrayMap(x -> x.1, open_incidents)) AS incident_ids,
       if(empty(open_incidents), NULL, arrayMin(arrayMap(x -> x.2, open_incidents))) AS top_level
FROM
(
    SELECT hour, city, contacts, complaints,
           arrayFilter(x -> has(x.5, city) AND x.3 < hour + INTERVAL 1 HOUR
                            AND (isNull(x.4) OR x.4 > hour), all_incidents) AS open_incidents
    FROM
    (
        SELECT toStartOfHour(window_start) AS hour, city, sum(contacts) AS contacts,
               sum(complaints) AS complaints
        FROM satisfaction_window_partials FINAL
        WHERE window = '1m'
        GROUP BY hour, city
    )
);
