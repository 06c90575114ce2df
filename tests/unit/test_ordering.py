"""A task's inputs taken in event-time order (streams.ordering, SPEC §3.5): table cases for
the merge, the wait for a lagging partition and its end, and a property over any fetch
interleaving."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ordering import LAGGING_WAIT_FACTOR, TaskQueues

TOPICS = ("views", "clicks", "orders")


@dataclass
class Kafka:
    """What the broker holds per partition (its end offsets), as the consumer last saw it."""

    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def lagging(self, topic: str, partition: int, next_offset: int | None) -> bool:
        return (next_offset or 0) < self.ends.get((topic, partition), 0)


def queues(kafka: Kafka, max_idle_s: float = 2.0) -> TaskQueues:
    return TaskQueues(TOPICS, max_idle_s, kafka.lagging)


def deliver(q: TaskQueues, kafka: Kafka, topic: str, offset: int, *ts: int, partition: int = 0) -> list[str]:
    """One message of ``ts`` events at ``offset``; Kafka holds it (and what came before)."""
    kafka.ends[(topic, partition)] = max(kafka.ends.get((topic, partition), 0), offset + 1)
    done = q.add(topic, partition, offset, [(t, f"{topic}@{t}") for t in ts], f"{topic}:{offset}")
    return [m.token for m in done]


def order_of(q: TaskQueues, now: float = 0.0) -> list[str]:
    return [t.event for t in q.take(now)]


def test_the_lowest_head_goes_first_across_partitions() -> None:
    kafka = Kafka()
    q = queues(kafka)
    deliver(q, kafka, "views", 0, 10, 40)
    deliver(q, kafka, "clicks", 0, 20)
    deliver(q, kafka, "orders", 0, 30)
    assert order_of(q) == ["views@10", "clicks@20", "orders@30", "views@40"]


def test_a_partition_keeps_its_offset_order_even_when_its_times_go_back() -> None:
    # Kafka Streams' semantics: a record out of order on its own partition is not moved
    # ahead of the records before it; it may be late, and that is the producer's doing
    kafka = Kafka()
    q = queues(kafka)
    deliver(q, kafka, "views", 0, 50, 10)
    deliver(q, kafka, "clicks", 0, 30)
    deliver(q, kafka, "orders", 0, 60)
    assert order_of(q) == ["clicks@30", "views@50", "views@10", "orders@60"]


def test_an_empty_partition_with_records_in_kafka_is_waited_for() -> None:
    kafka = Kafka()
    q = queues(kafka, max_idle_s=2.0)
    deliver(q, kafka, "views", 0, 100)
    deliver(q, kafka, "clicks", 0, 100)
    kafka.ends[("orders", 0)] = 5  # orders were written but are not fetched yet
    assert order_of(q, now=10.0) == []
    assert q.idle_seconds(0, 11.5) == 1.5
    assert order_of(q, now=11.9) == []  # still inside max_task_idle
    deliver(q, kafka, "orders", 4, 50)  # they come: the older order goes first
    assert order_of(q, now=11.95) == ["orders@50", "views@100", "clicks@100"]
    assert q.idle_seconds(0, 12.0) == 0.0
    assert q.tasks[0].enforced == 0


def test_records_in_kafka_are_waited_for_past_max_task_idle_and_fetched_again_each_time() -> None:
    # Kafka Streams (KIP-695): records known to be in Kafka are waited for until they come,
    # however long a busy consumer takes; each max_task_idle the consumer is asked again
    kafka = Kafka()
    asked: list[tuple[str, int, float]] = []
    now = [0.0]
    q = TaskQueues(TOPICS, 2.0, kafka.lagging, lambda t, p: asked.append((t, p, now[0])))
    deliver(q, kafka, "views", 0, 100)
    kafka.ends[("orders", 0)] = 1
    for now[0] in (0.0, 1.999, 2.0, 3.0, 4.5, 30.0):
        assert order_of(q, now=now[0]) == []
    assert asked == [("orders", 0, 2.0), ("orders", 0, 4.5), ("orders", 0, 30.0)]
    deliver(q, kafka, "orders", 0, 50)
    assert order_of(q, now=31.0) == ["orders@50", "views@100"]
    assert q.tasks[0].enforced == 0


def test_the_wait_ends_after_max_wait_and_is_counted_once() -> None:
    kafka = Kafka()
    q = queues(kafka, max_idle_s=2.0)
    assert q.max_wait_s == 2.0 * LAGGING_WAIT_FACTOR
    deliver(q, kafka, "views", 0, 100)
    kafka.ends[("orders", 0)] = 1
    assert order_of(q, now=0.0) == []
    assert order_of(q, now=q.max_wait_s - 0.001) == []
    assert order_of(q, now=q.max_wait_s) == ["views@100"]  # a consumer this stuck is broken: go on
    deliver(q, kafka, "views", 1, 110)
    assert order_of(q, now=q.max_wait_s + 0.1) == ["views@110"]  # still without them: the same wait
    assert q.tasks[0].enforced == 1


def test_no_wait_at_all_with_max_task_idle_zero() -> None:
    kafka = Kafka()
    q = queues(kafka, max_idle_s=0.0)
    deliver(q, kafka, "views", 0, 100)
    kafka.ends[("orders", 0)] = 1
    assert order_of(q, now=0.0) == ["views@100"]


def test_a_caught_up_partition_is_not_waited_for() -> None:
    kafka = Kafka()
    q = queues(kafka)
    deliver(q, kafka, "orders", 0, 5)
    assert order_of(q) == ["orders@5"]
    deliver(q, kafka, "views", 0, 100)  # orders is at its end offset: nothing to wait for
    assert order_of(q) == ["views@100"]


def test_tasks_do_not_wait_for_each_other() -> None:
    kafka = Kafka()
    q = queues(kafka)
    kafka.ends[("orders", 1)] = 3  # task 1 waits for its orders ...
    deliver(q, kafka, "views", 0, 100, partition=1)
    deliver(q, kafka, "views", 0, 200, partition=0)  # ... task 0 does not
    assert order_of(q) == ["views@200"]


def test_a_message_is_done_once_all_its_events_are_taken() -> None:
    kafka = Kafka()
    q = queues(kafka)
    deliver(q, kafka, "views", 0, 10, 30)  # a collector's array of two events
    deliver(q, kafka, "clicks", 0, 20)
    kafka.ends[("orders", 0)] = 1
    assert q.take(0.0) == []
    kafka.ends[("orders", 0)] = 0
    taken = q.take(0.0)
    assert [(t.event, [m.token for m in t.done]) for t in taken] == [
        ("views@10", []),
        ("clicks@20", ["clicks:0"]),
        ("views@30", ["views:0"]),
    ]


def test_a_message_without_valid_events_is_done_with_the_one_before_it() -> None:
    kafka = Kafka()
    q = queues(kafka)
    assert deliver(q, kafka, "views", 0) == ["views:0"]  # nothing ahead of it: done at once
    deliver(q, kafka, "views", 1, 10)
    assert deliver(q, kafka, "views", 2) == []  # all dead letters, behind an event not taken
    deliver(q, kafka, "views", 3, 20)
    taken = q.take(0.0)
    assert [[m.token for m in t.done] for t in taken] == [["views:1", "views:2"], ["views:3"]]


def test_a_message_delivered_again_is_ignored_until_the_buffers_are_forgotten() -> None:
    kafka = Kafka()
    q = queues(kafka)
    deliver(q, kafka, "views", 0, 10)
    deliver(q, kafka, "views", 0, 10)  # a seek read it again
    assert order_of(q) == ["views@10"]
    deliver(q, kafka, "views", 0, 10)
    assert order_of(q) == []
    q.forget()  # a rebalance: the consumer reads again from the committed offset
    deliver(q, kafka, "views", 0, 10)
    assert order_of(q) == ["views@10"]


def test_a_partition_holding_too_much_is_named_full() -> None:
    kafka = Kafka()
    q = TaskQueues(TOPICS, 2.0, kafka.lagging, max_buffered=3)
    kafka.ends[("orders", 0)] = 1
    for offset in range(4):
        deliver(q, kafka, "views", offset, 100 + offset)
    assert q.full() == {("views", 0)}
    deliver(q, kafka, "orders", 0, 1)
    q.take(0.0)
    assert q.full() == set()


# -- any fetch interleaving gives the in-order result ---------------------------------------
streams = st.lists(st.integers(0, 50), max_size=15).map(sorted)


@settings(max_examples=300, deadline=None)
@given(
    views=streams,
    clicks=streams,
    orders=streams,
    schedule=st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(1, 4)), max_size=40),
)
def test_any_fetch_interleaving_processes_a_backlog_in_time_order(
    views: list[int], clicks: list[int], orders: list[int], schedule: list[tuple[str, int]]
) -> None:
    """Everything is in Kafka (a backlog); the consumer fetches the three partitions in
    chunks in any order. Whatever the order, the task takes every event in time order,
    so stream time never passes an event not yet processed."""
    data = {"views": views, "clicks": clicks, "orders": orders}
    ends = {(t, 0): len(seq) for t, seq in data.items()}
    q = TaskQueues(TOPICS, 2.0, lambda t, p, nxt: (nxt or 0) < ends[(t, p)])
    fetched = dict.fromkeys(TOPICS, 0)
    taken: list[int] = []
    plan = [*schedule, *((t, 100) for t in TOPICS)]  # in the end everything is fetched
    for topic, n in plan:
        for offset in range(fetched[topic], min(len(data[topic]), fetched[topic] + n)):
            q.add(topic, 0, offset, [(data[topic][offset], None)], None)
            fetched[topic] = offset + 1
        taken += [t.ts for t in q.take(0.0)]
    assert taken == sorted(views + clicks + orders)


HOUR_MS = 3_600_000


def backlog_queues(kafka: Kafka, wall_ms: float) -> TaskQueues:
    """At the defaults: 2 s ``max_task_idle``, 10-minute ``max_lateness``."""
    return TaskQueues(
        TOPICS, 2.0, kafka.lagging, backlog_ms=600_000, idle_topics=frozenset(TOPICS), wall_ms=lambda: wall_ms
    )


def test_in_a_backlog_an_empty_caught_up_input_is_waited_for_until_its_records_come() -> None:
    # a producer sends a backlog in bursts: the views of a burst may reach Kafka a few
    # milliseconds before its clicks, and hours of event time lie in those milliseconds
    kafka = Kafka()
    q = backlog_queues(kafka, wall_ms=48 * HOUR_MS)
    deliver(q, kafka, "views", 0, 1 * HOUR_MS, 5 * HOUR_MS)
    deliver(q, kafka, "orders", 0, 4 * HOUR_MS)
    assert order_of(q, now=0.0) == []  # clicks caught up and empty: wait
    assert order_of(q, now=1.0) == []
    deliver(q, kafka, "clicks", 0, 2 * HOUR_MS)  # the burst's clicks arrive
    assert order_of(q, now=1.1) == [f"views@{1 * HOUR_MS}", f"clicks@{2 * HOUR_MS}"]  # then clicks are empty again
    deliver(q, kafka, "clicks", 1, 6 * HOUR_MS)
    # orders run empty after their record: waited for in turn
    assert order_of(q, now=1.2) == [f"orders@{4 * HOUR_MS}"]
    assert order_of(q, now=3.3) == [f"views@{5 * HOUR_MS}"]


def test_in_a_backlog_the_wait_for_a_caught_up_input_ends_after_max_task_idle_and_is_not_repeated() -> None:
    kafka = Kafka()
    q = backlog_queues(kafka, wall_ms=48 * HOUR_MS)
    deliver(q, kafka, "views", 0, 1 * HOUR_MS, 2 * HOUR_MS)
    deliver(q, kafka, "orders", 0, 3 * HOUR_MS, 4 * HOUR_MS)
    assert order_of(q, now=0.0) == []
    # clicks never came: after max_task_idle the task goes on without them; views run
    # empty after their records and are waited for in turn
    assert order_of(q, now=2.0) == [f"views@{1 * HOUR_MS}", f"views@{2 * HOUR_MS}"]
    assert order_of(q, now=4.0) == [f"orders@{3 * HOUR_MS}", f"orders@{4 * HOUR_MS}"]
    # clicks, still without a record, were not waited for again


def test_live_traffic_never_waits_for_a_caught_up_input() -> None:
    kafka = Kafka()
    now_ms = 48 * HOUR_MS
    q = backlog_queues(kafka, wall_ms=now_ms)
    deliver(q, kafka, "views", 0, now_ms - 1_000)
    deliver(q, kafka, "orders", 0, now_ms - 500)
    assert order_of(q, now=0.0) == [f"views@{now_ms - 1_000}", f"orders@{now_ms - 500}"]
