-- Migration 4: three views of the service-halls dashboard, the same columns and rows, computed
-- in less time (measured on the benchmark's million events, `make bench`):
-- * contact_volume_hourly joins each (hour, city) to the incidents open then, expanded once to
--   their hours and cities, instead of filtering the list of every incident on every row;
-- * incident_tags reads the ledger only from the first incident's detection to the last one's
--   resolution (the whole ledger from the first detection while one is open; nothing while
--   there is none), so the month partitions outside are not read;
-- * hall_metrics_monthly groups the visits by the start of the month (a date) and writes the
--   month's text once per group, and takes each hall's district and city from the visits
--   without collapsing redeliveries first (the latest row wins either way).
-- Never edit an applied migration: a change is a new migration. {placeholders} come from the
-- rules file (sinks.clickhouse.view_params).

-- Contact volume per city and hour (the 1-minute windows summed), with the incidents open in that
-- hour in that city overlaid (incident_ids, the most urgent level: 1 is an emergency). An
-- incident is open in an hour when it was detected before the hour's end and not resolved
-- before its start.
CREATE VIEW IF NOT EXISTS contact_volume_hourly AS
SELECT v.hour AS hour, v.city AS city, v.contacts AS contacts, v.complaints AS complaints,
       o.incident_ids AS incident_ids,
       if(empty(o.incident_ids), NULL, o.top_level) AS top_level
FROM
(
    SELECT toStartOfHour(window_start) AS hour, city, sum(contacts) AS contacts,
           sum(complaints) AS complaints
    FROM satisfaction_window_partials FINAL
    WHERE window = '1m'
    GROUP BY hour, city
) AS v
LEFT JOIN
(
    SELECT hour, city, arraySort(groupArray(incident_id)) AS incident_ids, min(level) AS top_level
    FROM
    (
        SELECT incident_id, level, arrayJoin(cities) AS city,
               arrayJoin(arrayMap(k -> toStartOfHour(detected_at) + toIntervalHour(k),
                   range(toUInt64(greatest(0, 1 + dateDiff('hour', toStartOfHour(detected_at),
                       toStartOfHour(coalesce(resolved_at - toIntervalMillisecond(1), last_window)))))))) AS hour
        FROM incidents
        -- an incident not resolved yet is open until the latest window
        CROSS JOIN (SELECT max(window_start) AS last_window FROM satisfaction_window_partials
                    WHERE window = '1m') AS w
    )
    GROUP BY hour, city
) AS o ON o.hour = v.hour AND o.city = v.city;

-- Incident tagging (processors.incidents): a contact or a complaint in an affected city while an
-- incident is open (detected_at <= occurred_at < resolved_at, or not resolved yet) carries its id.
CREATE VIEW IF NOT EXISTS incident_tags AS
SELECT i.incident_id AS incident_id, i.level AS level, i.service AS service,
       e.event_id AS event_id, e.event_type AS event_type, e.occurred_at AS occurred_at,
       e.customer_id AS customer_id, e.city AS city, e.channel AS channel,
       coalesce(nullIf(JSONExtractString(e.payload, 'complaint_id'), ''),
                JSONExtractString(e.payload, 'contact_id')) AS subject_id
FROM (SELECT event_id, event_type, occurred_at, customer_id, city, channel, payload FROM ledger
      WHERE event_type IN ('contact.completed', 'complaint.filed')
        AND occurred_at >= (SELECT minOrNull(detected_at) FROM incidents)
        AND occurred_at < (SELECT if(countIf(resolved_at IS NULL) > 0,
                                     toDateTime64('2299-12-31 00:00:00', 3, 'UTC'),
                                     maxOrNull(resolved_at)) FROM incidents)) AS e
INNER JOIN (SELECT incident_id, level, service, detected_at, resolved_at, arrayJoin(cities) AS city
            FROM incidents) AS i ON i.city = e.city
WHERE e.occurred_at >= i.detected_at AND (i.resolved_at IS NULL OR e.occurred_at < i.resolved_at);

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
        SELECT hall_id, formatDateTime(month_of, '%Y-%m', '{business_timezone}') AS month, city, visits, wait_sum,
               wait_p90, handheld, greeted, need_asked, 0 AS shifts, 0 AS received, 0 AS unresolved,
               0 AS replies, 0 AS valid_replies, 0 AS score_sum,
               CAST(NULL AS Nullable(Float64)) AS overall, CAST(NULL AS Nullable(Float64)) AS environment,
               CAST(NULL AS Nullable(Float64)) AS waiting, CAST(NULL AS Nullable(Float64)) AS handling,
               CAST(NULL AS Nullable(Float64)) AS staff_attitude
        FROM
        (
            SELECT hall_id, toStartOfMonth(occurred_at, '{business_timezone}') AS month_of, any(city) AS city,
                   count() AS visits, sum(wait_seconds) AS wait_sum,
                   toFloat64(quantileExact(0.9)(wait_seconds)) AS wait_p90,
                   countIf(served_at = 'handheld') AS handheld, countIf(greeted) AS greeted,
                   countIf(need_asked) AS need_asked
            FROM hall_visit_events FINAL GROUP BY hall_id, month_of
        )
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
LEFT JOIN (SELECT hall_id, argMax(district, occurred_at) AS district, argMax(city, occurred_at) AS city
           FROM hall_visit_events GROUP BY hall_id) AS h ON h.hall_id = m.hall_id;
