-- Views for ops and dashboards. {placeholders} are filled from the rules file.

-- Every window per city / channel / tier, the ledger partitions summed.
CREATE VIEW IF NOT EXISTS satisfaction_windows AS
SELECT
    window, window_start, city, channel, tier, surveys,
    composite_sum / nullIf(composite_count, 0)                         AS composite,
    response_speed_sum / nullIf(response_speed_count, 0)               AS response_speed,
    resolution_efficiency_sum / nullIf(resolution_efficiency_count, 0) AS resolution_efficiency,
    attitude_sum / nullIf(attitude_count, 0)                           AS attitude,
    follow_up_sum / nullIf(follow_up_count, 0)                         AS follow_up,
    nps_responses, promoters, detractors,
    100 * (promoters - detractors) / nullIf(nps_responses, 0)          AS nps,
    contacts,
    fcr_contacts / nullIf(contacts, 0)                                 AS fcr_rate,
    ai_contacts / nullIf(contacts, 0)                                  AS ai_share,
    transfers_sum / nullIf(contacts, 0)                                AS transfers_per_contact,
    first_response_sum / nullIf(first_response_count, 0)               AS first_response_mean,
    if(first_response_count = 0, NULL,
       arrayElement({first_response_bounds},
                    arrayFirstIndex(c -> c >= 0.9 * first_response_count,
                                    arrayCumSum(first_response_buckets)))) AS first_response_p90,
    complaints,
    complaints / nullIf(contacts, 0)                                   AS complaint_rate
FROM
(
    SELECT
        window, window_start, city, channel, tier,
        sum(surveys) AS surveys,
        sum(composite_sum) AS composite_sum, sum(composite_count) AS composite_count,
        sum(response_speed_sum) AS response_speed_sum,
        sum(response_speed_count) AS response_speed_count,
        sum(resolution_efficiency_sum) AS resolution_efficiency_sum,
        sum(resolution_efficiency_count) AS resolution_efficiency_count,
        sum(attitude_sum) AS attitude_sum, sum(attitude_count) AS attitude_count,
        sum(follow_up_sum) AS follow_up_sum, sum(follow_up_count) AS follow_up_count,
        sum(nps_responses) AS nps_responses, sum(promoters) AS promoters,
        sum(detractors) AS detractors,
        sum(contacts) AS contacts, sum(fcr_contacts) AS fcr_contacts,
        sum(ai_contacts) AS ai_contacts, sum(transfers_sum) AS transfers_sum,
        sum(first_response_sum) AS first_response_sum,
        sum(first_response_count) AS first_response_count,
        sumForEach(first_response_buckets) AS first_response_buckets,
        sum(complaints) AS complaints
    FROM satisfaction_window_partials FINAL
    GROUP BY window, window_start, city, channel, tier
);

-- Daily composite per city over all channels and tiers (the ranking and the heat map).
CREATE VIEW IF NOT EXISTS satisfaction_city_daily AS
SELECT
    window_start AS day, city,
    sum(p.surveys) AS surveys,
    round(sum(p.composite_sum) / nullIf(sum(p.composite_count), 0), 2) AS composite,
    round(100 * (sum(p.promoters) - sum(p.detractors)) / nullIf(sum(p.nps_responses), 0), 1) AS nps,
    sum(p.contacts) AS contacts,
    sum(p.complaints) AS complaints
FROM satisfaction_window_partials AS p FINAL
WHERE window = '1d'
GROUP BY day, city;

-- A city's daily composite below the red threshold, on enough responses to mean something.
CREATE VIEW IF NOT EXISTS satisfaction_alerts AS
SELECT day, city, composite, surveys, {red_threshold} AS threshold
FROM satisfaction_city_daily
WHERE composite < {red_threshold} AND surveys >= {alert_min_responses};

CREATE VIEW IF NOT EXISTS churn_risk_current AS
SELECT
    customer_id,
    argMax(score, (occurred_at, event_id))   AS score,
    argMax(level, (occurred_at, event_id))   AS level,
    argMax(reasons, (occurred_at, event_id)) AS reasons,
    argMax(city, (occurred_at, event_id))    AS city,
    argMax(tier, (occurred_at, event_id))    AS tier,
    max(occurred_at)                         AS changed_at
FROM churn_risk_changes FINAL
GROUP BY customer_id;

CREATE VIEW IF NOT EXISTS customer_tier_current AS
SELECT
    customer_id,
    argMax(to_tier, (occurred_at, event_id)) AS tier,
    max(occurred_at)                          AS since
FROM tier_changes FINAL
GROUP BY customer_id;

-- Downgrade proposals still waiting for a tier.change_decided: the customer's latest
-- proposal, needing approval, with no decision after it.
CREATE VIEW IF NOT EXISTS tier_pending_approvals AS
SELECT p.customer_id AS customer_id, p.proposal_id AS proposal_id, p.city AS city,
       p.from_tier AS from_tier, p.to_tier AS to_tier, p.basis AS basis,
       p.occurred_at AS proposed_at
FROM (SELECT * FROM tier_proposals FINAL WHERE requires_approval) AS p
INNER JOIN (SELECT customer_id, max(occurred_at) AS last_proposed
            FROM tier_proposals FINAL GROUP BY customer_id) AS l
        ON l.customer_id = p.customer_id AND l.last_proposed = p.occurred_at
LEFT JOIN (SELECT customer_id, max(occurred_at) AS last_decided FROM ledger
           WHERE event_type = 'tier.change_decided' GROUP BY customer_id) AS d
        ON d.customer_id = p.customer_id
WHERE d.last_decided < p.occurred_at;

CREATE VIEW IF NOT EXISTS complaints_open_past_deadline AS
SELECT complaint_id, customer_id, city, severity, category, status, level, next_sla,
       next_deadline, updated_at
FROM complaint_state FINAL
WHERE status != 'closed' AND next_deadline IS NOT NULL
  AND next_deadline < (SELECT max(occurred_at) FROM ledger_events);
