"""Every read of faust-streaming's private consumer state, behind named accessors.

The worker's watchdog (``unstick_partitions``), its ordered inputs and its ``kill -USR1``
dump need to know what Faust's consumer holds: which partitions it fetches, pauses or
stopped for a full queue, what it delivered, acknowledged and committed, and the expected
offsets :mod:`streams.faust_fixes` keeps on it. Faust has no public API for any of it, so
the names live here and nowhere else, and ``tests/unit/test_faust_state.py`` fails loudly when
the pinned faust-streaming changes them.
"""

from __future__ import annotations

from typing import Any

#: attributes of ``faust.transport.consumer.Consumer`` read here (set in its ``__init__``)
CONSUMER_ATTRIBUTES = (
    "_active_partitions",
    "_paused_partitions",
    "_buffered_partitions",
    "_read_offset",
    "_acked",
    "_committed_offset",
    "_unacked_messages",
)
#: attribute of ``faust.transport.conductor.Conductor``: partition -> channels reading it
CONDUCTOR_ATTRIBUTES = ("_tp_index",)


def active(consumer: Any) -> set[Any] | None:
    """The partitions the fetcher asks for (None: every assigned one)."""
    result: set[Any] | None = consumer._active_partitions
    return result


def paused(consumer: Any) -> set[Any]:
    """Partitions paused by ``pause_partitions`` (recovery, the ordered inputs)."""
    return set(getattr(consumer, "_paused_partitions", ()))


def buffered(consumer: Any) -> set[Any]:
    """Partitions taken out of the fetch set because a stream's queue was full."""
    return set(consumer._buffered_partitions)


def read_offsets(consumer: Any) -> dict[Any, int | None]:
    """The last offset delivered per partition."""
    return dict(consumer._read_offset)


def acked(consumer: Any, tp: Any) -> set[int]:
    """Offsets of ``tp`` acknowledged since the last commit."""
    return set(consumer._acked.get(tp, ()))


def acked_ranges(consumer: Any) -> dict[Any, tuple[int, int, int]]:
    """Per partition: first and last offset acknowledged and not yet committed, and how many."""
    return {tp: (min(a), max(a), len(a)) for tp, a in consumer._acked.items() if a}


def committed(consumer: Any) -> dict[Any, int | None]:
    """The offsets this worker committed last, per partition."""
    return dict(getattr(consumer, "_committed_offset", {}))


def committed_of(consumer: Any, tp: Any) -> int | None:
    """The offset this worker committed last for ``tp`` (no copy of the table: read per
    message by the ordered inputs)."""
    table: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return table.get(tp)


def held_by_a_handler(consumer: Any, tp: Any) -> bool:
    """Whether a message of ``tp`` was delivered and is not acknowledged yet."""
    return any(m.tp == tp for m in list(consumer._unacked_messages))


def queued(app: Any, tp: Any) -> int:
    """Messages of ``tp`` waiting in the streams' queues."""
    return sum(chan.queue.qsize() for chan in app.topics._tp_index.get(tp, ()))


def expected(consumer: Any) -> dict[Any, int]:
    """The next offset to deliver per partition (kept by :mod:`streams.faust_fixes`)."""
    table: dict[Any, int] = getattr(consumer, "_ripple_next", {})
    return table


def base(consumer: Any) -> dict[Any, int]:
    """Where each partition was sought to by the last seek (:mod:`streams.faust_fixes`)."""
    table: dict[Any, int] = getattr(consumer, "_ripple_base", {})
    return table


def fetch(consumer: Any, tp: Any) -> bool:
    """Put ``tp`` back into the fetch set if Faust took it out (a full queue, a rebalance's
    leftovers) and nobody paused it; True if it was out."""
    consumer.on_buffer_drop(tp)
    fetched = active(consumer)
    if fetched is None or tp in fetched or tp in paused(consumer) or tp not in consumer.assignment():
        return False
    fetched.add(tp)
    return True
