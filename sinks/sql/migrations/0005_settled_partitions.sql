-- Migration 5: a month partition that has taken no insert for 5 minutes is merged into one part.
-- The views read these ReplacingMergeTree tables FINAL, which merges the rows of overlapping
-- parts while the query runs; a partition of one part needs none of that. On a live store every
-- month but the current one settles (a late event only reopens its month for 5 minutes), so a
-- dashboard over six months merges at most one month at query time. Each merge rewrites one
-- partition once after it has gone quiet, not on every insert: the current month of a busy
-- store never waits 5 minutes for an insert.
-- The ledger itself (ledger_events) is left to ClickHouse's own merges: a month of it at
-- production rates is too big to rewrite whole; `ledger_by_type`, `hall_visit_events` and
-- `onsite_shift_events` hold the ledger's few operational events and are.
-- Never edit an applied migration: a change is a new migration.

ALTER TABLE satisfaction_scores MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE satisfaction_window_partials MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE complaint_sla_breaches MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE churn_risk_changes MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE tier_proposals MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE tier_changes MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE hall_survey_month_partials MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE feedback_sla_breaches MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE hall_visit_events MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE onsite_shift_events MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE ledger_by_type MODIFY SETTING min_age_to_force_merge_seconds = 300, min_age_to_force_merge_on_partition_only = 1;
