-- Raw input facts, deduplicated by their natural key (ReplacingMergeTree).
-- Read them with FINAL (or argMax) so duplicates never count twice before a merge.
CREATE DATABASE IF NOT EXISTS ripple;

CREATE TABLE IF NOT EXISTS ripple.views
(
    event_id      String,
    ts            DateTime64(3, 'UTC'),
    creator_id    String,
    content_id    String,
    visitor_id    String,
    platform      LowCardinality(String),
    kind          LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS ripple.clicks
(
    event_id        String,
    ts              DateTime64(3, 'UTC'),
    visitor_id      String,
    ref             String,
    creator_id      String,
    utm_source      String,
    utm_medium      String,
    utm_campaign    String,
    utm_content     String,
    ip_hash         String,
    user_agent      String,
    referrer_domain String,
    landing_url     String
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS ripple.orders
(
    event_id        String,
    ts              DateTime64(3, 'UTC'),
    order_id        String,
    visitor_id      String,
    customer_id     String,
    amount_minor    Int64,
    currency        LowCardinality(String),
    discount_code   String,
    discount_minor  Int64,
    is_new_customer UInt8,
    email_hash      String,
    payment_hash    String,
    shipping_hash   String,
    device_id       String,
    ip_hash         String,
    user_agent      String,
    referrer_domain String,
    items           String
)
ENGINE = ReplacingMergeTree
ORDER BY order_id;

CREATE TABLE IF NOT EXISTS ripple.refunds
(
    event_id     String,
    ts           DateTime64(3, 'UTC'),
    order_id     String,
    amount_minor Int64,
    reason       String
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

-- Compacted reference topics: the record with the latest message time wins.
CREATE TABLE IF NOT EXISTS ripple.codes
(
    code          String,
    code_lower    String,
    referrer_id   String,
    referrer_type LowCardinality(String),
    issued_ts     DateTime64(3, 'UTC'),
    active        UInt8,
    expires_ts    Nullable(DateTime64(3, 'UTC')),
    platform      LowCardinality(String),
    discount_pct  Nullable(Float64),
    landing_url   String,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY code_lower;

CREATE TABLE IF NOT EXISTS ripple.creators
(
    creator_id   String,
    handle       String,
    platform     LowCardinality(String),
    followers    UInt64,
    tier         LowCardinality(String),
    niche        LowCardinality(String),
    email_hash   String,
    payment_hash String,
    device_ids   Array(String),
    plan         String,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY creator_id;

CREATE TABLE IF NOT EXISTS ripple.dead_letters
(
    topic      LowCardinality(String),
    partition  UInt32,
    offset     UInt64,
    idx        Int32,
    error      String,
    raw        String,
    ts         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset, idx)
TTL toDateTime(ts) + INTERVAL 90 DAY;
