"""The batch runtime of the worker without a broker: ``Guard`` (one batch handled and
flushed, or the process stopped before anything is acked) and ``Intake`` (valid events on,
invalid ones to the dead-letter topic with where they came from)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import orjson
from agent_kit import box_for, make_table

from streams.batch import Guard, Intake, Outbox
from streams.metrics import WorkerMetrics
from streams.outbound import Outbound


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp: float = 1_767_225_600.0  # Faust: seconds


def test_a_batch_is_handled_then_flushed_and_its_stage_says_done(outbound: Outbound) -> None:
    table = make_table("t")
    boxes: list[Outbox] = []

    def new_box() -> Outbox:
        boxes.append(box_for(table, outbound))
        return boxes[-1]

    async def handle(events: list[Any], box: Outbox) -> None:
        box.read(events[0])
        box.put(table, 0, "k", {"n": 1})

    guard = Guard(new_box)
    asyncio.run(guard(handle, [Msg("views", 0, 7, b"")]))
    (box,) = boxes
    assert box.processed == {("views", 0): 7}  # flushed: the batch's offsets count as processed
    assert not box.changes  # handed to the producer
    assert guard.stage["handle"][0].startswith("done")


def test_an_unexpected_error_stops_the_process_before_anything_is_acked() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from streams.batch import Guard

        async def handle(events, box):
            raise RuntimeError("a bug")

        asyncio.run(Guard(lambda: None)(handle, []))
        print("went on")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == Guard.EXIT_CODE
    assert "went on" not in done.stdout
    assert "a bug" in done.stderr and "read again after a restart" in done.stderr


def test_invalid_events_go_to_the_dead_letter_topic_with_their_origin() -> None:
    sent: list[dict[str, Any]] = []

    async def send(**kwargs: Any) -> None:
        sent.append(kwargs)

    good = {"event_id": "v1", "ts": 1_767_225_600_000, "creator_id": "cr-jane", "content_id": "reel-1"}
    bad = {"event_id": "v2", "ts": "yesterday"}
    msg = Msg("views", 2, 41, orjson.dumps([good, bad]))
    events = asyncio.run(Intake(send, WorkerMetrics(), 600_000).decode(msg))
    assert [e["event_id"] for e in events] == ["v1"]
    (letter,) = sent
    assert letter["key"] == b"views:2:41"
    assert orjson.loads(letter["value"]) == bad
    headers = dict(letter["headers"])
    assert (headers["topic"], headers["partition"], headers["offset"], headers["index"]) == (
        b"views",
        b"2",
        b"41",
        b"1",
    )
    assert headers["error"]
