"""The cross-worker settle protocol: the time up to which everything a customer's claim
can travel through has been read, on this worker and the others (:class:`Settled`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from streams.reference_reader import ReferenceReader


class Settled:
    """The time up to which everything a claim can travel through has been read.

    A round starts at time S: this worker's producer is flushed, so what it sent is in
    the broker, and the broker's end offsets of every upstream partition — this
    worker's and the other workers' — are noted; the round completes once all of them
    are processed: this worker's as it processes them (a batch's offsets count as
    processed once its outputs are with the producer), the others' (and this worker's
    from before a restart) once the group has committed them (Faust commits only after
    flushing what the records produced). Then whatever was in the topics at S is
    processed — but what that produced (a credit, then a claim) may still be on its
    way, one hop per round. So the settled time is the start of the round completed
    ``HOPS - 1`` rounds ago: input → (click by ip → flood verdict → visitor) → credit →
    claim is at most five hops, and each round covers one (the flush puts the outputs
    of the previous round's records in the broker before this round notes the end
    offsets). A record another process sent just before S may still sit in its
    producer's buffer: a round vouches only for what was sent ``MARGIN_S`` before it
    started. With one worker a round waits only for its own processing; with several,
    for the group's commits (``broker_commit_interval``), so a generation of customers
    settles more slowly, and exactly as with one."""

    HOPS = 5
    MARGIN_S = 1.0  # > the linger of the producers writing to upstream topics (20 ms), with room for a busy host
    ASK_EVERY_S = 0.5  # how often a round behind on some partition asks for the group's commits

    def __init__(
        self,
        reader: ReferenceReader,
        flush: Callable[[], Awaitable[Any]],
        upstream: Iterable[str],
        processed: dict[tuple[str, int], int],
    ) -> None:
        """``flush``: the worker's producers; ``upstream``: the topics a claim travels
        through; ``processed``: the last offset this worker handled per partition."""
        self.reader = reader
        self.flush = flush
        self.upstream = set(upstream)
        self.processed = processed
        self.before = 0.0
        self.starts: list[float] = []
        self.round: tuple[float, dict[Any, int]] | None = None
        self.asked = 0.0

    async def advance(self) -> bool:
        if self.round is None:
            await self.reader.ready()  # its clients know every topic's partitions
            started = time.time() - self.MARGIN_S
            await self.flush()
            # from the broker: the fetcher's last responses can be seconds old while
            # fetched records wait in its buffer
            self.round = (started, await self.reader.end_offsets(self.reader.partitions(self.upstream)))
        started, highs = self.round
        behind = [tp for tp, high in highs.items() if self.processed.get((tp.topic, tp.partition), -1) + 1 < high]
        if behind:
            if time.monotonic() - self.asked < self.ASK_EVERY_S:
                return False
            self.asked = time.monotonic()
            committed = await self.reader.committed(behind)
            if any(committed[tp] < highs[tp] for tp in behind):
                return False
        self.round = None
        self.starts = [*self.starts, started][-self.HOPS :]
        if len(self.starts) == self.HOPS and self.starts[0] > self.before:
            self.before = self.starts[0]
            return True
        return False
