-- Creator metrics per day, model and currency, read from the deduplicated facts (FINAL),
-- so replays and restatements never count twice, merged or not.
--
--   views, clicks, unique_clickers    creator's content views; clicks on the creator's codes
--                                     and slugs; distinct clicking visitors
--   conversions                       sum of credit of the creator's orders that day
--   revenue_minor                     sum of credit x amount paid
--   aov_minor                         revenue / conversions
--   commission_minor                  sum of credit x net amount x rate (net of refunds)
--   discount_minor                    sum of credit x discount given (a cost to the brand)
--   refunds_minor                     sum of credit x refunded amount
--   new_customers                     sum of credit of orders by first-time customers
--   flat_fees_minor                   the plan's monthly flat fee, on the first day of the month
--   ctr = clicks / views, cr = conversions / unique_clickers, epc = commission / clicks,
--   rpc = revenue / clicks, cac = (commission + discount + flat fees) / new customers,
--   roi = (revenue - refunds - cost) / cost with cost = commission + discount + flat fees,
--   ltv_30d_minor, ltv_90d_minor      net revenue of the customers the creator brought in
--                                     that day (their first order credited to the creator),
--                                     over their first 30 / 90 days, per customer
-- Ratios are NULL where the denominator is 0. One currency per creator is assumed.
CREATE VIEW IF NOT EXISTS ripple.creator_daily AS
WITH
    refunded AS (
        SELECT order_id, sum(amount_minor) AS refunded_minor FROM ripple.refunds FINAL GROUP BY order_id
    ),
    o AS (
        SELECT o.order_id AS order_id, o.customer_id AS customer_id, o.ts AS ts, o.amount_minor AS amount_minor,
               o.discount_minor AS discount_minor, o.is_new_customer AS is_new_customer,
               least(o.amount_minor, r.refunded_minor) AS refunded_minor
        FROM ripple.orders AS o FINAL
        LEFT JOIN refunded AS r ON r.order_id = o.order_id
    ),
    first_orders AS (
        SELECT customer_id, min(ts) AS first_ts FROM o GROUP BY customer_id
    ),
    customer_value AS (
        SELECT f.customer_id AS customer_id, f.first_ts AS first_ts,
               sumIf(o.amount_minor - o.refunded_minor, o.ts < f.first_ts + INTERVAL 30 DAY) AS value_30d,
               sumIf(o.amount_minor - o.refunded_minor, o.ts < f.first_ts + INTERVAL 90 DAY) AS value_90d
        FROM first_orders AS f
        INNER JOIN o ON o.customer_id = f.customer_id
        GROUP BY f.customer_id, f.first_ts
    ),
    a AS (
        SELECT a.referrer_id AS creator_id, toDate(a.ts) AS day, a.model AS model,
               sum(a.credit) AS conversions,
               sum(a.revenue_minor) AS revenue_minor,
               sum(a.commission_minor * greatest(0, 1 - o.refunded_minor / greatest(o.amount_minor, 1))) AS commission_minor,
               sum(a.credit * o.discount_minor) AS discount_minor,
               sum(a.credit * o.refunded_minor) AS refunds_minor,
               sum(a.credit * o.is_new_customer) AS new_customers,
               sumIf(a.credit, cv.first_ts = o.ts) AS acquired,
               sumIf(a.credit * cv.value_30d, cv.first_ts = o.ts) AS acquired_value_30d,
               sumIf(a.credit * cv.value_90d, cv.first_ts = o.ts) AS acquired_value_90d
        FROM ripple.attributions AS a FINAL
        INNER JOIN o ON o.order_id = a.order_id
        LEFT JOIN customer_value AS cv ON cv.customer_id = o.customer_id
        WHERE a.credit > 0 AND a.referrer_type = 'creator'
        GROUP BY creator_id, day, model
    ),
    v AS (
        SELECT creator_id, toDate(ts) AS day, count() AS views FROM ripple.views FINAL GROUP BY creator_id, day
    ),
    c AS (
        SELECT k.referrer_id AS creator_id, toDate(cl.ts) AS day, count() AS clicks,
               uniqExact(cl.visitor_id) AS unique_clickers
        FROM ripple.clicks AS cl FINAL
        INNER JOIN (
            SELECT code_lower, referrer_id FROM ripple.codes FINAL WHERE referrer_type = 'creator'
        ) AS k ON k.code_lower = lower(cl.ref)
        GROUP BY creator_id, day
    ),
    fees AS (
        SELECT referrer_id AS creator_id, toDate(ts) AS day, sum(commission_minor) AS flat_fees_minor
        FROM ripple.commission_ledger FINAL
        WHERE kind = 'flat_fee'
        GROUP BY creator_id, day
    ),
    currencies AS (
        SELECT referrer_id AS creator_id, any(currency) AS currency FROM ripple.attributions FINAL GROUP BY referrer_id
    ),
    base AS (
        SELECT creator_id, day FROM a
        UNION DISTINCT SELECT creator_id, day FROM v
        UNION DISTINCT SELECT creator_id, day FROM c
        UNION DISTINCT SELECT creator_id, day FROM fees
    ),
    m AS (
        SELECT arrayJoin(['last_click', 'first_click', 'linear', 'time_decay', 'position_based']) AS model
    ),
    joined AS (
        SELECT b.creator_id AS creator_id, b.day AS day, m.model AS model, cur.currency AS currency,
               v.views AS views, c.clicks AS clicks, c.unique_clickers AS unique_clickers,
               a.conversions AS conversions, a.revenue_minor AS revenue_minor,
               a.commission_minor AS commission_minor, a.discount_minor AS discount_minor,
               a.refunds_minor AS refunds_minor, a.new_customers AS new_customers,
               fees.flat_fees_minor AS flat_fees_minor, a.acquired AS acquired,
               a.acquired_value_30d AS acquired_value_30d, a.acquired_value_90d AS acquired_value_90d
        FROM base AS b
        CROSS JOIN m
        LEFT JOIN a ON a.creator_id = b.creator_id AND a.day = b.day AND a.model = m.model
        LEFT JOIN v ON v.creator_id = b.creator_id AND v.day = b.day
        LEFT JOIN c ON c.creator_id = b.creator_id AND c.day = b.day
        LEFT JOIN fees ON fees.creator_id = b.creator_id AND fees.day = b.day
        LEFT JOIN currencies AS cur ON cur.creator_id = b.creator_id
    )
SELECT
    creator_id, day, model, currency,
    views, clicks, unique_clickers, conversions, revenue_minor,
    if(conversions = 0, NULL, revenue_minor / conversions) AS aov_minor,
    commission_minor, discount_minor, refunds_minor, new_customers, flat_fees_minor,
    if(views = 0, NULL, clicks / views) AS ctr,
    if(unique_clickers = 0, NULL, conversions / unique_clickers) AS cr,
    if(clicks = 0, NULL, commission_minor / clicks) AS epc,
    if(clicks = 0, NULL, revenue_minor / clicks) AS rpc,
    if(new_customers = 0, NULL, (commission_minor + discount_minor + flat_fees_minor) / new_customers) AS cac,
    if(commission_minor + discount_minor + flat_fees_minor = 0, NULL,
       (revenue_minor - refunds_minor - commission_minor - discount_minor - flat_fees_minor)
           / (commission_minor + discount_minor + flat_fees_minor)) AS roi,
    if(acquired = 0, NULL, acquired_value_30d / acquired) AS ltv_30d_minor,
    if(acquired = 0, NULL, acquired_value_90d / acquired) AS ltv_90d_minor
FROM joined;
