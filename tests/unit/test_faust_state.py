"""The names of faust-streaming's private consumer state that ``streams.faust_state`` reads
still exist and mean what it says, on the faust-streaming this project pins. Fails loudly
on an upgrade that renames or retypes them, before the worker's watchdog reads nothing."""

from __future__ import annotations

import importlib.metadata

import faust
from faust.types import TP

from streams import faust_state

TP0 = TP("views", 0)


def app() -> faust.App:
    return faust.App("faust-state-test", broker="kafka://127.0.0.1:1")


def test_the_pinned_faust_streaming_is_the_one_read() -> None:
    major, minor, *_ = importlib.metadata.version("faust-streaming").split(".")
    assert (major, minor) == ("0", "15"), "streams.faust_state reads private state of faust-streaming 0.15"


def test_the_consumer_and_conductor_have_every_attribute_read() -> None:
    a = app()
    missing = [name for name in faust_state.CONSUMER_ATTRIBUTES if not hasattr(a.consumer, name)]
    missing += [name for name in faust_state.CONDUCTOR_ATTRIBUTES if not hasattr(a.topics, name)]
    assert not missing, f"faust-streaming no longer has {missing}"


def test_a_partition_stopped_for_a_full_queue_is_seen_and_fetched_again_on_drop() -> None:
    consumer = app().consumer
    consumer._set_active_tps({TP0})  # what an assignment does
    assert faust_state.active(consumer) == {TP0}
    consumer.on_buffer_full(TP0)  # a stream's queue under pressure
    assert faust_state.buffered(consumer) == {TP0}
    assert faust_state.active(consumer) == set()
    consumer.on_buffer_drop(TP0)
    assert faust_state.buffered(consumer) == set()
    assert faust_state.active(consumer) == {TP0}


def test_empty_state_reads_as_empty() -> None:
    a = app()
    consumer = a.consumer
    assert faust_state.paused(consumer) == set()
    assert faust_state.read_offsets(consumer) == {}
    assert faust_state.acked(consumer, TP0) == set()
    assert faust_state.acked_ranges(consumer) == {}
    assert faust_state.committed(consumer) == {}
    assert not faust_state.held_by_a_handler(consumer, TP0)
    assert faust_state.queued(a, TP0) == 0
    assert faust_state.expected(consumer) == {}
    assert faust_state.base(consumer) == {}
