"""What a worker tells about itself: the gauges sampled for ``/metrics`` (state size, lag)
and each ordered task's stream time and wait, for ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

from streams import faust_state, records
from streams.batch import StreamClock
from streams.metrics import WorkerMetrics
from streams.ordered_input import OrderedInput

#: per agent: (partitions assigned here, per partition its status)
TaskStatus = dict[str, tuple[list[int], dict[int, dict[str, Any]]]]


def sample_state(metrics: WorkerMetrics, tables: dict[str, Any]) -> None:
    """Keys and (estimated from a sample of 500) bytes of each state table."""
    for name, table in tables.items():
        metrics.state_keys.labels(name).set(len(table.data))
        sample = list(itertools.islice(table.data.items(), 500))
        if sample:
            size = sum(len(k) + len(records.encode(v)) for k, v in sample) / len(sample)
            metrics.state_bytes.labels(name).set(round(size * len(table.data)))


async def sample_lag(metrics: WorkerMetrics, consumer: Any, processed: dict[tuple[str, int], int]) -> None:
    """Per input topic, how far this worker's partitions are behind their ends."""
    tps = [tp for tp in consumer.assignment() if not tp.topic.endswith("-changelog")]
    if not tps:
        return
    lag: dict[str, int] = {}
    committed = faust_state.committed(consumer)
    for tp, high in (await consumer.highwaters(*tps)).items():
        done = processed.get((tp.topic, tp.partition))
        # before this worker has read from a partition: its group's committed offset
        behind = max(0, high - (done + 1 if done is not None else committed.get(tp) or 0))
        lag[tp.topic] = lag.get(tp.topic, 0) + behind
    metrics.consumer_lag.clear()  # topics moved to another worker leave no stale value
    for topic, behind in lag.items():
        metrics.consumer_lag.labels(topic).set(behind)


def task_status(tps: Iterable[Any], ordered: Iterable[tuple[OrderedInput, str, StreamClock]]) -> TaskStatus:
    """Per agent whose inputs are ordered (its input, the first of its topics, its clock):
    its tasks (partitions assigned here) and, for each, stream time, its lag behind the
    wall clock, and its wait for a lagging input."""
    now_ms = time.time() * 1000
    tps = list(tps)
    out = {}
    for source, first_topic, clock in ordered:
        partitions = sorted(tp.partition for tp in tps if tp.topic == first_topic)
        status = {}
        for p in partitions:
            st = clock.get(p)
            lag = round((now_ms - st) / 1000, 3) if st else None
            status[p] = {"stream_time": st, "stream_time_lag_seconds": lag, **source.status(p)}
        out[source.name] = (partitions, status)
    return out


def render_metrics(metrics: WorkerMetrics, tasks: TaskStatus) -> tuple[bytes, str]:
    """The ``/metrics`` body, with each task's stream time and wait as of now."""
    metrics.stream_time_lag.clear()
    metrics.task_idle.clear()
    for name, (partitions, status) in tasks.items():
        for p in partitions:
            metrics.task_idle.labels(name, str(p)).set(status[p]["idle_seconds"])
            if status[p]["stream_time"]:
                metrics.stream_time_lag.labels(name, str(p)).set(status[p]["stream_time_lag_seconds"])
    return metrics.render()


def health(tps: Iterable[Any], tasks: TaskStatus, stream_time: dict[int, int]) -> dict[str, Any]:
    """The ``/healthz`` body."""
    assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in tps)
    by_task = {name: {str(p): s for p, s in status.items()} for name, (_, status) in tasks.items()}
    return {"status": "ok", "assigned": assignment, "stream_time": stream_time, "tasks": by_task}


def serve(
    app: Any,
    metrics: WorkerMetrics,
    tables: dict[str, Any],
    ordered: list[tuple[OrderedInput, str, StreamClock]],
    processed: dict[tuple[str, int], int],
    clock: StreamClock,
) -> None:
    """``/metrics``, ``/healthz`` (stream time from ``clock``) and the timer that samples
    lag and state size for them."""

    @app.timer(5.0)
    async def sample_gauges() -> None:
        """Lag on this worker's partitions and the size of its state, for /metrics."""
        sample_state(metrics, tables)
        await sample_lag(metrics, app.consumer, processed)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = render_metrics(metrics, task_status(app.consumer.assignment(), ordered))
        return web.bytes(body, content_type=content_type)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        tps = app.consumer.assignment()
        return web.json(health(tps, task_status(tps, ordered), clock.times))
