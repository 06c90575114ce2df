-- What referrers earn. The sum of commission_minor over an order is what its referrers
-- earn on it; entry_id is the natural key, a change writes a higher version.
CREATE TABLE IF NOT EXISTS ripple.commission_ledger
(
    entry_id         String,
    order_id         String,
    referrer_id      String,
    kind             LowCardinality(String),
    commission_minor Int64,
    currency         LowCardinality(String),
    status           LowCardinality(String),
    ts               DateTime64(3, 'UTC'),
    version          UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY entry_id;

-- Orders whose discount code belongs to someone else than the last click's referrer.
-- A restatement that removes the disagreement writes active = 0.
CREATE TABLE IF NOT EXISTS ripple.conflicts
(
    order_id          String,
    code_referrer_id  String,
    click_referrer_id String,
    policy            LowCardinality(String),
    winner            LowCardinality(String),
    ts                DateTime64(3, 'UTC'),
    active            UInt8,
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY order_id;

-- Events that arrived more than max_lateness behind their task's stream time: stored and
-- counted, they never restate earlier results.
CREATE TABLE IF NOT EXISTS ripple.late_events
(
    topic       LowCardinality(String),
    event_id    String,
    ts          DateTime64(3, 'UTC'),
    stream_time DateTime64(3, 'UTC'),
    lateness_ms Int64,
    partition   UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, event_id);
