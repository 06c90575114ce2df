"""What an ordered input buffers around a rebalance (streams.ordered_input), on a real,
unstarted Faust app: a record handed over after the revocation and before the new
assignment is not buffered — the consumer reads it again from the committed offset, and
that copy must not be ignored as a duplicate of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types.tuples import Message

from streams.metrics import WorkerMetrics
from streams.ordered_input import OrderedInput
from streams.reference import ReferenceData
from streams.reference_reader import ReferenceReader


@dataclass
class Event:
    message: Message


def source() -> OrderedInput:
    app = faust.App("ordered-input-test", broker="kafka://127.0.0.1:1", store="memory://")
    reader = ReferenceReader("127.0.0.1:1", ReferenceData(), "ordered-input-test")
    return OrderedInput(app, "visitors", ("views", "clicks"), 2.0, WorkerMetrics(), reader)


def record(offset: int, generation: int) -> Event:
    msg = Message("views", 0, offset, 0.0, 0, None, b"v1", b"{}", None, generation_id=generation)
    return Event(msg)


def buffered(src: OrderedInput) -> int:
    return sum(src.queues.buffered(p) for p in src.queues.tasks)


def items(offset: int) -> list[tuple[int, Any]]:
    return [(1_000 + offset, f"event-{offset}")]


def test_a_record_of_the_current_generation_is_buffered() -> None:
    src = source()
    src.app.consumer_generation_id = 3
    assert src.add(record(0, 3), items(0)) == []
    assert buffered(src) == 1


def test_a_record_fetched_before_the_rebalance_is_not_buffered() -> None:
    src = source()
    src.app.consumer_generation_id = 4
    src.add(record(0, 3), items(0))
    assert buffered(src) == 0


def test_between_revocation_and_assignment_nothing_is_buffered_and_the_copy_read_again_is() -> None:
    src = source()
    src.app.consumer_generation_id = 3
    src.add(record(0, 3), items(0))
    src.forget()  # partitions revoked: the generation still reads 3
    assert buffered(src) == 0
    src.add(record(1, 3), items(1))  # handed over late, looking current
    assert buffered(src) == 0
    src.app.consumer_generation_id = 4  # the new assignment
    src.assigned()
    src.add(record(0, 4), items(0))  # read again from the committed offset
    src.add(record(1, 4), items(1))
    assert buffered(src) == 2
    taken = src.take()
    assert [t.event for t in taken] == ["event-0", "event-1"]


def test_the_first_assignment_may_keep_the_generation_of_the_first_revocation() -> None:
    src = source()
    src.forget()  # the group forms: an empty revocation, generation 0
    src.assigned()  # generation 0 again
    src.add(record(0, 0), items(0))
    assert buffered(src) == 1


async def test_a_record_ahead_of_a_missing_one_is_not_buffered_and_the_partition_is_read_again() -> None:
    src = source()
    src.add(record(0, 0), items(0))
    assert src.add(record(2, 0), items(2)) == []  # offset 1 never came
    assert buffered(src) == 1
    assert src.reseeks, "the partition is sought back to the missing offset"
    for seek in list(src.reseeks):
        seek.cancel()
    src.add(record(1, 0), items(1))  # read again: now in order
    src.add(record(2, 0), items(2))
    assert [t.event for t in src.take()] == ["event-0", "event-1", "event-2"]


def test_a_record_delivered_and_never_handled_is_taken_when_the_watchdog_reclaims_it() -> None:
    src = source()
    src.add(record(0, 0), items(0))
    src.add(record(1, 0), items(1))
    assert [t.event for t in src.take()] == ["event-0", "event-1"]
    # offset 0 is read again (its first copy never acknowledged): a duplicate, ignored ...
    src.add(record(0, 0), items(0))
    assert buffered(src) == 0
    # ... unless the watchdog found it delivered and never handled
    src.reclaim(record(0, 0).message.tp, 0)
    done = src.add(record(0, 0), items(0))
    assert done == [] and buffered(src) == 1
    assert [t.event for t in src.take()] == ["event-0"]
    assert src.queues.next_offset[("views", 0)] == 2, "the input goes on after what it had"
    src.add(record(0, 0), items(0))  # reclaimed once only
    assert buffered(src) == 0


def test_a_reclaim_of_another_agents_topic_is_ignored() -> None:
    src = source()
    src.reclaim(Message("orders", 0, 5, 0.0, 0, None, b"k", b"{}", None).tp, 5)
    assert src.reclaimed == {}


async def test_after_an_assignment_the_first_record_is_expected_at_the_committed_offset() -> None:
    src = source()
    consumer: Any = src.app.consumer
    tp = record(0, 0).message.tp
    consumer._ripple_base = {tp: 1}  # the seek of an earlier assignment
    consumer._committed_offset[tp] = 40  # committed since
    assert src.add(record(40, 0), items(40)) == [] and buffered(src) == 1, "not read again from 1"
    assert not src.reseeks


async def test_records_the_group_committed_meanwhile_are_not_missing() -> None:
    # a partition handed back by another worker: sought to its start before that worker's
    # last commit was known (offset 0 delivered), then to the commit (offset 40)
    src = source()
    consumer: Any = src.app.consumer
    tp = record(0, 0).message.tp
    src.add(record(0, 0), items(0))
    consumer._committed_offset[tp] = 40
    assert src.add(record(40, 0), items(40)) == []
    assert not src.reseeks, "not read again from 1: offsets 1..39 were handled by the group"
    assert buffered(src) == 2
    assert src._expected(tp, src.queues.next_offset[("views", 0)]) == 41


async def test_a_record_ahead_of_the_committed_offset_is_still_missing() -> None:
    src = source()
    consumer: Any = src.app.consumer
    tp = record(0, 0).message.tp
    consumer._committed_offset[tp] = 5
    src.add(record(5, 0), items(5))
    assert src.add(record(7, 0), items(7)) == [] and buffered(src) == 1, "offset 6 never came"
    assert src.reseeks
    for seek in list(src.reseeks):
        seek.cancel()
