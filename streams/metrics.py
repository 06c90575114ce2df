"""Prometheus metrics. Base units, no per-creator or per-code labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.split(";")[0]


class WorkerMetrics(_Metrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.messages_in = Counter("ripple_messages_in_total", "Kafka messages read, by topic", ["topic"], registry=r)
        self.events_in = Counter("ripple_events_in_total", "Valid events read, by topic", ["topic"], registry=r)
        self.dead_letters = Counter(
            "ripple_dead_letters_total", "Invalid events sent to the dead-letter topic", ["topic"], registry=r
        )
        self.late_events = Counter(
            "ripple_late_events_total", "Events more than max_lateness behind stream time", ["topic"], registry=r
        )
        self.orders_attributed = Counter(
            "ripple_orders_attributed_total", "Orders attributed (restatements not counted)", registry=r
        )
        self.rows_out = Counter("ripple_rows_out_total", "Rows sent to output topics", ["topic"], registry=r)
        self.alerts = Counter(
            "ripple_alerts_total", "Alerts raised, by rule and severity", ["rule", "severity"], registry=r
        )
        self.blocked_touches = Counter(
            "ripple_blocked_touches_total", "Clicks denied credit by a fraud rule", ["rule"], registry=r
        )
        self.attribution_latency = Histogram(
            "ripple_attribution_latency_seconds",
            "From an order's arrival in Kafka (clock=arrival) or its event time (clock=event) to its "
            "attribution rows being sent",
            ["clock"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86_400),
            registry=r,
        )
        self.consumer_lag = Gauge(
            "ripple_consumer_lag", "Messages not yet processed on this worker's partitions", ["topic"], registry=r
        )
        self.state_keys = Gauge(
            "ripple_state_keys", "Keys held in each state table on this worker", ["table"], registry=r
        )
        self.state_bytes = Gauge(
            "ripple_state_bytes",
            "Bytes of state (JSON-encoded values) in each state table on this worker, estimated from a sample",
            ["table"],
            registry=r,
        )
        self.parked = Gauge(
            "ripple_parked_referrers",
            "Customers whose referral credits wait until their own place in a chain is settled",
            registry=r,
        )
        self.settled_lag = Gauge(
            "ripple_settled_lag_seconds",
            "How far behind the wall clock the time is up to which every claim on its way has been read",
            registry=r,
        )
        self.unstuck = Counter(
            "ripple_partitions_unstuck_total",
            "Partitions read again after delivering nothing for a while with records waiting (a flow-control stall)",
            ["topic"],
            registry=r,
        )
        self.task_idle = Gauge(
            "ripple_task_idle_seconds",
            "How long each task has waited for an input partition whose records are in Kafka but not fetched "
            "yet (0: not waiting); after 60 x max_task_idle it goes on without them",
            ["agent", "partition"],
            registry=r,
        )
        self.task_idle_timeouts = Counter(
            "ripple_task_idle_timeouts_total",
            "Times a task went on without a lagging input after 60 x max_task_idle (its records may then be late)",
            ["agent"],
            registry=r,
        )
        self.task_buffered = Gauge(
            "ripple_task_buffered_events",
            "Events fetched and waiting to be taken in event-time order, per agent",
            ["agent"],
            registry=r,
        )
        self.stream_time_lag = Gauge(
            "ripple_stream_time_lag_seconds",
            "Wall clock minus each task's stream time (the highest event time it has processed)",
            ["agent", "partition"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ripple_batch_seconds",
            "Time to process one batch of input messages",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )


class SinkMetrics(_Metrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.rows = Counter("ripple_sink_rows_total", "Rows written to ClickHouse", ["table"], registry=r)
        self.batches = Counter("ripple_sink_batches_total", "Inserts into ClickHouse", ["table"], registry=r)
        self.insert_seconds = Histogram(
            "ripple_sink_insert_seconds",
            "Time of one ClickHouse insert",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.failures = Counter("ripple_sink_failures_total", "Failed ClickHouse inserts", registry=r)
        self.batch_rows = Histogram(
            "ripple_sink_batch_rows",
            "Rows in one ClickHouse insert",
            buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000),
            registry=r,
        )
        self.backpressure = Gauge(
            "ripple_sink_backpressure",
            "1 while ClickHouse inserts fail and the sink stops consuming until they succeed",
            registry=r,
        )
        self.pending_rows = Gauge("ripple_sink_pending_rows", "Rows read but not yet written", registry=r)
        self.visible_latency = Histogram(
            "ripple_sink_visible_seconds",
            "From an attribution row's event time to the row being queryable in ClickHouse "
            "(the order's arrival latency when events are sent as they happen)",
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )


class CollectorMetrics(_Metrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter(
            "ripple_collector_requests_total", "HTTP requests, by route and status", ["route", "status"], registry=r
        )
        self.accepted = Counter(
            "ripple_collector_events_accepted_total",
            "Events acknowledged by the broker, by topic (the 'accepted' of 202 answers and recorded clicks)",
            ["topic"],
            registry=r,
        )
        self.rejected = Counter(
            "ripple_collector_events_rejected_total",
            "Events refused, by reason (type, not_object, schema, raw_identity, future, too_deep, too_large, delivery)",
            ["reason"],
            registry=r,
        )
        self.messages = Counter(
            "ripple_collector_messages_total", "Kafka messages produced (JSON arrays of events)", ["topic"], registry=r
        )
        self.produce_seconds = Histogram(
            "ripple_collector_produce_seconds",
            "From a request's first message handed to the producer to the broker's acknowledgement of its last",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.request_seconds = Histogram(
            "ripple_collector_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.clicks = Counter(
            "ripple_collector_referral_clicks_total",
            "GET /r/{code} by outcome: recorded, bot (recorded, its user agent on the bot list), unknown "
            "(unknown, inactive or expired code: no click), failed (not acknowledged in time)",
            ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "ripple_collector_rate_limited_total", "Requests answered 429 by the per-client rate limit", registry=r
        )
        self.codes = Gauge("ripple_collector_codes", "Referral codes known to the collector", registry=r)
