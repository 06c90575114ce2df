-- Referral trees: one row per node (creators and customers who start a tree are roots,
-- with an empty parent_id). A node's parent is the referrer of its earliest credited
-- order; a claim arriving out of order may move a node until it refers someone
-- (a higher version), never after.
CREATE TABLE IF NOT EXISTS ripple.chain_nodes
(
    node_id    String,
    parent_id  String,
    root_id    String,
    generation UInt16,
    ts         DateTime64(3, 'UTC'),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY node_id;

-- Per root, the latest metrics (version grows with every change).
CREATE TABLE IF NOT EXISTS ripple.chains
(
    root_id                    String,
    nodes                      UInt32,
    depth                      UInt16,
    nodes_by_generation        Array(UInt32),
    k_by_generation            Array(Float64),
    structural_virality        Float64,
    viral                      UInt8,
    new_nodes_1h               UInt32,
    new_nodes_24h              UInt32,
    time_to_next_generation_ms Array(Int64),
    cascade_revenue_minor      Int64,
    cascade_commission_minor   Int64,
    updated_ts                 DateTime64(3, 'UTC'),
    version                    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY root_id;

-- Fraud, leakage and chain alerts; alert_id is stable, so a replay writes the same row.
CREATE TABLE IF NOT EXISTS ripple.alerts
(
    alert_id    String,
    ts          DateTime64(3, 'UTC'),
    rule        LowCardinality(String),
    severity    LowCardinality(String),
    referrer_id String,
    code        String,
    evidence    String
)
ENGINE = ReplacingMergeTree
ORDER BY alert_id;
