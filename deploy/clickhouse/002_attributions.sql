-- Credited orders. One row per (order, model, referrer); a restatement writes a higher
-- version, and rows of referrers that lost credit are rewritten with credit 0.
CREATE TABLE IF NOT EXISTS ripple.attributions
(
    order_id         String,
    model            LowCardinality(String),
    referrer_id      String,
    referrer_type    LowCardinality(String),
    root_creator_id  String,
    touch_type       LowCardinality(String),
    touch_event_id   String,
    credit           Float64,
    revenue_minor    Int64,
    commission_minor Int64,
    currency         LowCardinality(String),
    ctot_ms          Int64,
    status           LowCardinality(String),
    reasons          Array(String),
    generation       UInt16,
    version          UInt64,
    ts               DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (order_id, model, referrer_id);
