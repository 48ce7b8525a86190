-- Migration 7: ClickHouse decodes the workers' window partials itself. A worker sends the
-- partials it drained as `satisfaction.windows_updated` messages (up to 1,000 partials each,
-- most of the derived rows); the derived sink decoded each in Python and inserted the rows. With
-- a seal key (schemas.seal: the worker's own encoder wrote exactly these bytes), the sink now
-- inserts the messages as they came, joined into one Avro object container, into this Null
-- table (it keeps nothing); the materialized view writes each partial as a row of
-- satisfaction_window_partials, the same row the sink's mapping writes (sinks.derived_sink).
-- The columns are those of the Avro record ClickHouse reads them from (fields it does not name
-- are skipped); the table's own types are applied as the view writes.
-- On a cluster every node has the Null table, and the view writes through the Distributed
-- table, whose sharding key brings every version of a partial to one shard.
-- Never edit an applied migration: a change is a new migration.

CREATE TABLE IF NOT EXISTS satisfaction_windows_updated_in
(
    source_partition Int32,
    rules_version    String,
    partials         Array(Tuple(
        window                      String,
        window_start                DateTime64(3, 'UTC'),
        city                        String,
        channel                     String,
        tier                        String,
        version                     Int64,
        surveys                     Int32,
        composite_sum               Float64,
        composite_count             Int32,
        response_speed_sum          Float64,
        response_speed_count        Int32,
        resolution_efficiency_sum   Float64,
        resolution_efficiency_count Int32,
        attitude_sum                Float64,
        attitude_count              Int32,
        follow_up_sum               Float64,
        follow_up_count             Int32,
        nps_responses               Int32,
        promoters                   Int32,
        detractors                  Int32,
        contacts                    Int32,
        fcr_contacts                Int32,
        ai_contacts                 Int32,
        transfers_sum               Int32,
        first_response_count        Int32,
        first_response_sum          Float64,
        first_response_buckets      Array(Int32),
        complaints                  Int32,
        service_requests            Int32,
        service_requests_met        Int32))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS satisfaction_windows_updated_in_mv TO satisfaction_window_partials AS
SELECT
    p.window AS window, p.window_start AS window_start, p.city AS city, p.channel AS channel,
    p.tier AS tier, source_partition, p.version AS version, p.surveys AS surveys,
    p.composite_sum AS composite_sum, p.composite_count AS composite_count,
    p.response_speed_sum AS response_speed_sum, p.response_speed_count AS response_speed_count,
    p.resolution_efficiency_sum AS resolution_efficiency_sum,
    p.resolution_efficiency_count AS resolution_efficiency_count,
    p.attitude_sum AS attitude_sum, p.attitude_count AS attitude_count,
    p.follow_up_sum AS follow_up_sum, p.follow_up_count AS follow_up_count,
    p.nps_responses AS nps_responses, p.promoters AS promoters, p.detractors AS detractors,
    p.contacts AS contacts, p.fcr_contacts AS fcr_contacts, p.ai_contacts AS ai_contacts,
    p.transfers_sum AS transfers_sum, p.first_response_count AS first_response_count,
    p.first_response_sum AS first_response_sum,
    p.first_response_buckets AS first_response_buckets, p.complaints AS complaints,
    rules_version, p.service_requests AS service_requests,
    p.service_requests_met AS service_requests_met
FROM satisfaction_windows_updated_in
ARRAY JOIN partials AS p;
