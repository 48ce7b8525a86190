-- Derived tables, written by the derived sink from the processors' topics.
-- Every table is a ReplacingMergeTree whose sort key ends in event_id (or the aggregate's own
-- key with a version), so redelivered events collapse; the views read them FINAL.

CREATE TABLE IF NOT EXISTS satisfaction_scores
(
    event_id              UUID,
    survey_id             String,
    subject_id            Nullable(String),
    customer_id           String,
    city                  LowCardinality(String),
    channel               LowCardinality(String),
    tier                  LowCardinality(String),
    occurred_at           DateTime64(3, 'UTC'),
    composite             Nullable(Float64),
    response_speed        Nullable(Float64),
    resolution_efficiency Nullable(Float64),
    attitude              Nullable(Float64),
    follow_up             Nullable(Float64),
    nps                   Nullable(UInt8),
    weights_profile       LowCardinality(String),
    rules_version         LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (city, occurred_at, event_id);

-- One row per (window, start, city, channel, tier, ledger partition): the partition's partial
-- aggregate; the highest version is current. satisfaction_windows sums the partitions.
CREATE TABLE IF NOT EXISTS satisfaction_window_partials
(
    window                      LowCardinality(String),
    window_start                DateTime64(3, 'UTC'),
    city                        LowCardinality(String),
    channel                     LowCardinality(String),
    tier                        LowCardinality(String),
    source_partition            UInt16,
    version                     UInt64,
    surveys                     UInt32,
    composite_sum               Float64,
    composite_count             UInt32,
    response_speed_sum          Float64,
    response_speed_count        UInt32,
    resolution_efficiency_sum   Float64,
    resolution_efficiency_count UInt32,
    attitude_sum                Float64,
    attitude_count              UInt32,
    follow_up_sum               Float64,
    follow_up_count             UInt32,
    nps_responses               UInt32,
    promoters                   UInt32,
    detractors                  UInt32,
    contacts                    UInt32,
    fcr_contacts                UInt32,
    ai_contacts                 UInt32,
    transfers_sum               UInt32,
    first_response_count        UInt32,
    first_response_sum          Float64,
    first_response_buckets      Array(UInt32),
    complaints                  UInt32,
    rules_version               LowCardinality(String)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY (window, toYYYYMM(window_start))
ORDER BY (window, window_start, city, channel, tier, source_partition);

CREATE TABLE IF NOT EXISTS complaint_sla_breaches
(
    event_id           UUID,
    complaint_id       String,
    customer_id        String,
    city               LowCardinality(String),
    channel            LowCardinality(String),
    sla                LowCardinality(String),
    deadline           DateTime64(3, 'UTC'),
    escalated_to_level Nullable(UInt8),
    severity           LowCardinality(String),
    category           LowCardinality(String),
    occurred_at        DateTime64(3, 'UTC'),
    rules_version      LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (city, occurred_at, event_id);

-- Current state of each complaint (the highest version wins).
CREATE TABLE IF NOT EXISTS complaint_state
(
    complaint_id        String,
    customer_id         String,
    city                LowCardinality(String),
    channel             LowCardinality(String),
    category            LowCardinality(String),
    severity            LowCardinality(String),
    status              LowCardinality(String),
    level               UInt8,
    filed_at            Nullable(DateTime64(3, 'UTC')),
    acknowledged_at     Nullable(DateTime64(3, 'UTC')),
    resolved_at         Nullable(DateTime64(3, 'UTC')),
    feedback_at         Nullable(DateTime64(3, 'UTC')),
    followed_up_at      Nullable(DateTime64(3, 'UTC')),
    closed_at           Nullable(DateTime64(3, 'UTC')),
    reopened_count      UInt16,
    next_deadline       Nullable(DateTime64(3, 'UTC')),
    next_sla            Nullable(String),
    breaches            Array(String),
    anomalies           Array(String),
    updated_at          DateTime64(3, 'UTC'),
    version             UInt64,
    rules_version       LowCardinality(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (complaint_id);

CREATE TABLE IF NOT EXISTS churn_risk_changes
(
    event_id       UUID,
    customer_id    String,
    city           LowCardinality(String),
    tier           LowCardinality(String),
    score          Float64,
    level          LowCardinality(String),
    previous_level LowCardinality(String),
    reasons        Array(String),
    occurred_at    DateTime64(3, 'UTC'),
    rules_version  LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS tier_proposals
(
    event_id          UUID,
    proposal_id       String,
    customer_id       String,
    city              LowCardinality(String),
    from_tier         LowCardinality(String),
    to_tier           LowCardinality(String),
    basis             Decimal(14, 2),
    requires_approval Bool,
    occurred_at       DateTime64(3, 'UTC'),
    rules_version     LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS tier_changes
(
    event_id      UUID,
    proposal_id   String,
    customer_id   String,
    city          LowCardinality(String),
    from_tier     LowCardinality(String),
    to_tier       LowCardinality(String),
    occurred_at   DateTime64(3, 'UTC'),
    rules_version LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id);
