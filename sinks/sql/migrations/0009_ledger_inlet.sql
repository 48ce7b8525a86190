-- Migration 9: ClickHouse decodes sealed ledger messages itself (sinks.ledger_inlets). The
-- ledger sink inserts a batch's sealed messages into this Null table (it keeps nothing) as one
-- Avro object container: each record is the message's position (kafka_partition, kafka_offset,
-- schema_id) and the event, a union of the event records, which ClickHouse reads into a Variant
-- of one Tuple per shape (event types whose records have the same fields share one). The
-- view writes the ledger_events row, with the payload as the JSON form of the record (the same
-- JSON value as the sink writes for a message it decodes itself, sinks.ledger_sink.ledger_row;
-- see schemas.jsonform.same_payload), and the columns read from it. The shapes are those of
-- the schemas' latest versions when this was written; a version with another shape needs a
-- new migration (until then the sink decodes its messages in Python).
-- Written by `python -m sinks.ledger_inlets`. Never edit an applied migration: a change is a
-- new migration.

CREATE TABLE IF NOT EXISTS ledger_inlet
(
    kafka_partition Int32,
    kafka_offset Int64,
    schema_id Int32,
    event Variant(
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), reason Nullable(String)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), period String, spend Decimal(14, 2), plan_code String),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), complaint_id String),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), complaint_id String, level Int32, reason Enum8('manual' = 0, 'sla_breach' = 1)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), complaint_id String, category Enum8('billing' = 0, 'network' = 1, 'logistics' = 2, 'service_attitude' = 3, 'product' = 4, 'dialect_misunderstanding' = 5, 'other' = 6), severity Enum8('normal' = 0, 'urgent' = 1, 'complex' = 2)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), complaint_id String, outcome Enum8('satisfied' = 0, 'unsatisfied' = 1, 'unreachable' = 2)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), complaint_id String, resolution Enum8('fixed' = 0, 'compensated' = 1, 'explained' = 2, 'rejected' = 3)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), contact_id String, direction Enum8('inbound' = 0, 'outbound' = 1), category Enum8('inquiry' = 0, 'complaint' = 1, 'service_request' = 2, 'billing' = 3, 'technical' = 4, 'sales' = 5, 'retention' = 6, 'other' = 7), handler Enum8('ai' = 0, 'agent' = 1, 'part_time_agent' = 2), wait_seconds Int32, first_response_seconds Int32, handle_seconds Int32, transfers Int32, resolved_first_contact Bool, intent Enum8('none' = 0, 'port_out' = 1, 'cancel' = 2, 'downgrade' = 3, 'upgrade' = 4)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), feedback_id String),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), survey_id String, hall_id String, visit_id Nullable(String), overall Nullable(Int32), environment Nullable(Int32), waiting Nullable(Int32), handling Nullable(Int32), staff_attitude Nullable(Int32), valid Bool),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), visit_id String, hall_id String, district String, wait_seconds Int32, served_at Enum8('counter' = 0, 'handheld' = 1, 'self_service' = 2), business_type Enum8('new_subscription' = 0, 'broadband' = 1, 'plan_change' = 2, 'device_instalment' = 3, 'bill_payment' = 4, 'inquiry' = 5, 'other' = 6), handling_seconds Int32, resolved_on_site Bool, greeted Bool, need_asked Bool),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), incident_id String, level Int32, service Enum8('network' = 0, 'billing' = 1, 'app' = 2, 'other' = 3), cities Array(String)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), from_plan String, to_plan String, direction Enum8('upgrade' = 0, 'downgrade' = 1, 'lateral' = 2)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), check_id String, unit_type Enum8('district' = 0, 'hall' = 1, 'agent' = 2), unit_id String, sampled Int32, passed Int32, score Float64),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id String, correlation_id Nullable(String), exam_id String, hall_id Nullable(String), score Float64),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), shift_id String, hall_id String, manager_id String, customers_received Int32, unresolved Int32, on_duty Bool, handheld_used Bool),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), survey_id String, subject_id Nullable(String), response_speed Nullable(Float64), resolution_efficiency Nullable(Float64), attitude Nullable(Float64), follow_up Nullable(Float64), nps Nullable(Int32)),
        Tuple(event_id UUID, event_type String, occurred_at DateTime64(3), customer_id String, channel Enum8('phone' = 0, 'ivr' = 1, 'online_chat' = 2, 'email' = 3, 'app' = 4, 'wechat' = 5, 'weibo' = 6, 'sms' = 7, 'web' = 8, 'service_hall' = 9, 'field_visit' = 10, 'social_media' = 11, 'ai_assistant' = 12, 'unknown' = 13), city String, agent_id Nullable(String), correlation_id Nullable(String), decision Enum8('approved' = 0, 'rejected' = 1), proposal_id Nullable(String)))
)
ENGINE = Null
SETTINGS allow_experimental_variant_type = 1, allow_suspicious_variant_types = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ledger_inlet_mv TO ledger_events AS
WITH toJSONString(event) AS record
SELECT
    toUUID(JSONExtractString(record, 'event_id')) AS event_id,
    JSONExtractString(record, 'event_type') AS event_type,
    parseDateTime64BestEffort(JSONExtractString(record, 'occurred_at'), 3, 'UTC') AS occurred_at,
    JSONExtractString(record, 'customer_id') AS customer_id,
    JSONExtractString(record, 'channel') AS channel,
    JSONExtractString(record, 'city') AS city,
    JSONExtract(record, 'agent_id', 'Nullable(String)') AS agent_id,
    JSONExtract(record, 'correlation_id', 'Nullable(String)') AS correlation_id,
    replaceRegexpOne(record, '"occurred_at":"([^"]*)Z"', '"occurred_at":"\\1+00:00"') AS payload,
    schema_id,
    kafka_partition,
    kafka_offset
FROM ledger_inlet
SETTINGS output_format_json_quote_decimals = 1, output_format_decimal_trailing_zeros = 1,
    date_time_output_format = 'iso', output_format_json_quote_64bit_integers = 0,
    output_format_json_quote_denormals = 0, output_format_json_escape_forward_slashes = 0;

