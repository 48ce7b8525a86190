-- Migration 8: the dashboards' six heaviest views as snapshot tables, which ClickHouse replaces
-- with the view's rows in the background (refreshable materialized views), so that a panel
-- reads a few thousand stored rows instead of aggregating the whole span on every load. The
-- views stay what they are, exact at query time, for SQL users. The dashboards read the
-- snapshots: the contact volume and churn risk (on dashboards reloaded every minute) are
-- refreshed every minute, the four hall views (the service-halls dashboard, reloaded every five
-- minutes) every five. RANDOMIZE FOR moves each refresh by up to half its span either way (5
-- and 30 seconds), so that they do not all start at once. A refresh recomputes the whole view
-- (the six took 0.8-1.2 s together on the single-machine stack at 5,000 events/s, the hall
-- views 70% of it), so more often would cost the stack's two cores more for nothing a dashboard
-- shows. `SYSTEM REFRESH VIEW <view>` refreshes one at once (sinks.migrations.refresh_snapshots:
-- all of them, waiting for them).
-- * hall_metrics_monthly: "Halls per month", "Handheld share and on-site resolution", "SMS
--   satisfaction per month" and two stats;
-- * hall_metrics_district_monthly: "Districts per month";
-- * contact_volume_hourly: "Contacts per city and hour, incidents overlaid";
-- * churn_risk_current: the churn-risk panels;
-- * hall_satisfaction_monthly and hall_league_monthly: "Top 10 halls", "Bottom 10 halls" and
--   "Hall SMS satisfaction".
-- Where the database's engine cannot hold a refreshable view (chDB's default database,
-- Overlay), the views live in an Atomic database beside it, <database>_refreshers, and still
-- fill the tables here (sinks.migrations.refreshers_database). On a cluster every node keeps a
-- whole snapshot of its own, refreshed from the Distributed tables.
-- Never edit an applied migration: a change is a new migration.

CREATE TABLE IF NOT EXISTS hall_metrics_monthly_snapshot
(
    hall_id                String,
    month                  String,
    month_start            DateTime('{business_timezone}'),
    district               String,
    city                   String,
    visits                 UInt64,
    wait_mean_seconds      Nullable(Float64),
    wait_p90_seconds       Nullable(Float64),
    handheld_share         Nullable(Float64),
    greeting_rate          Nullable(Float64),
    need_asked_rate        Nullable(Float64),
    shifts                 UInt64,
    shift_customers        Int64,
    shift_unresolved       Int64,
    onsite_resolution_rate Nullable(Float64),
    replies                UInt64,
    valid_replies          UInt64,
    score_sum              Float64,
    response_rate          Nullable(Float64),
    satisfaction           Nullable(Float64),
    overall                Nullable(Float64),
    environment            Nullable(Float64),
    waiting                Nullable(Float64),
    handling               Nullable(Float64),
    staff_attitude         Nullable(Float64)
)
ENGINE = MergeTree
ORDER BY (month_start, hall_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS hall_metrics_monthly_snapshot_refresh REFRESH EVERY 5 MINUTE RANDOMIZE FOR 1 MINUTE TO hall_metrics_monthly_snapshot AS
SELECT * FROM hall_metrics_monthly;

CREATE TABLE IF NOT EXISTS hall_metrics_district_monthly_snapshot
(
    district               String,
    month                  String,
    month_start            DateTime('{business_timezone}'),
    city                   String,
    halls                  UInt64,
    visits                 UInt64,
    wait_mean_seconds      Nullable(Float64),
    handheld_share         Nullable(Float64),
    greeting_rate          Nullable(Float64),
    need_asked_rate        Nullable(Float64),
    onsite_resolution_rate Nullable(Float64),
    replies                UInt64,
    valid_replies          UInt64,
    satisfaction           Nullable(Float64)
)
ENGINE = MergeTree
ORDER BY (month_start, district);

CREATE MATERIALIZED VIEW IF NOT EXISTS hall_metrics_district_monthly_snapshot_refresh REFRESH EVERY 5 MINUTE RANDOMIZE FOR 1 MINUTE TO hall_metrics_district_monthly_snapshot AS
SELECT * FROM hall_metrics_district_monthly;

CREATE TABLE IF NOT EXISTS contact_volume_hourly_snapshot
(
    hour         DateTime('UTC'),
    city         LowCardinality(String),
    contacts     UInt64,
    complaints   UInt64,
    incident_ids Array(String),
    top_level    Nullable(Int64)
)
ENGINE = MergeTree
ORDER BY (hour, city);

CREATE MATERIALIZED VIEW IF NOT EXISTS contact_volume_hourly_snapshot_refresh REFRESH EVERY 1 MINUTE RANDOMIZE FOR 10 SECOND TO contact_volume_hourly_snapshot AS
SELECT * FROM contact_volume_hourly;

CREATE TABLE IF NOT EXISTS churn_risk_current_snapshot
(
    customer_id String,
    score       Float64,
    level       String,
    reasons     Array(String),
    city        String,
    tier        String,
    changed_at  DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (level, customer_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS churn_risk_current_snapshot_refresh REFRESH EVERY 1 MINUTE RANDOMIZE FOR 10 SECOND TO churn_risk_current_snapshot AS
SELECT * FROM churn_risk_current;

CREATE TABLE IF NOT EXISTS hall_satisfaction_monthly_snapshot
(
    hall_id           String,
    month             LowCardinality(String),
    month_start       DateTime64(3, 'UTC'),
    city              String,
    replies           UInt64,
    valid_replies     UInt64,
    score_sum         Float64,
    satisfaction      Nullable(Float64),
    overall           Nullable(Float64),
    environment       Nullable(Float64),
    waiting           Nullable(Float64),
    handling          Nullable(Float64),
    staff_attitude    Nullable(Float64),
    ranked            UInt8,
    closed_partitions UInt64
)
ENGINE = MergeTree
ORDER BY (month, hall_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS hall_satisfaction_monthly_snapshot_refresh REFRESH EVERY 5 MINUTE RANDOMIZE FOR 1 MINUTE TO hall_satisfaction_monthly_snapshot AS
SELECT * FROM hall_satisfaction_monthly;

CREATE TABLE IF NOT EXISTS hall_league_monthly_snapshot
(
    month            String,
    hall_id          String,
    district         String,
    city             String,
    satisfaction     Nullable(Float64),
    valid_replies    UInt64,
    replies          UInt64,
    on_target        Nullable(UInt8),
    rank             UInt64,
    rank_from_bottom UInt64,
    ranked_halls     UInt64
)
ENGINE = MergeTree
ORDER BY (month, rank);

CREATE MATERIALIZED VIEW IF NOT EXISTS hall_league_monthly_snapshot_refresh REFRESH EVERY 5 MINUTE RANDOMIZE FOR 1 MINUTE TO hall_league_monthly_snapshot AS
SELECT * FROM hall_league_monthly;
