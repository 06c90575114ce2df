"""The reader of the compacted reference topics (``codes``, ``creators``) and of end
offsets: every code and creator in memory on every worker, with an explicit "caught up"
barrier (what a GlobalTable does), and the true end of a partition on a broker that
reports the end of its last batch. The collector reads the ``codes`` topic with it too."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ConsumerStoppedError
from mode import Service

from streams.events import decode, message_time
from streams.kafka import PLAINTEXT, KafkaSecurity
from streams.reference import ReferenceData

log = logging.getLogger("ripple.worker")


#: what a worker reads
REFERENCE_TOPICS = ("codes", "creators")


class ReferenceReader(Service):
    """Reads the compacted reference topics in full and then continuously, with the
    workers' decoding, into ``data``; no consumer group, nothing committed.

    ``group``: the consumer group whose committed offsets :meth:`committed` reads;
    ``offsets``: whether to open the clients :meth:`end_offsets` and :meth:`committed`
    need (the worker's settle rounds; the collector reads codes only)."""

    def __init__(
        self,
        bootstrap: str,
        data: ReferenceData,
        group: str,
        security: KafkaSecurity = PLAINTEXT,
        topics: tuple[str, ...] = REFERENCE_TOPICS,
        offsets: bool = True,
    ) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.security = security
        self.data = data
        self.group = group
        self.topics = topics
        self.with_offsets = offsets
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: AIOKafkaConsumer | None = None  # never fetches: asks for end offsets only
        self._admin: AIOKafkaAdminClient | None = None  # the group's committed offsets
        # read the last batch of a partition (see ``_true_ends``): one for the reference
        # data and table recovery, one for the ordered inputs' probes (``probe_end``), so
        # neither waits behind the other
        self._tails: dict[str, AIOKafkaConsumer] = {}
        self._tail_locks = {"reference": asyncio.Lock(), "inputs": asyncio.Lock()}
        self._known_ends: dict[TopicPartition, tuple[int, int]] = {}  # reported end -> true end
        self._probing: set[TopicPartition] = set()
        self._probes: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()
        self._last_sync = 0.0
        self._ready = asyncio.Event()

    async def on_start(self) -> None:
        auth = self.security.aiokafka()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None, **auth
        )
        await self._consumer.start()
        await self._consumer.topics()  # loads metadata for every topic
        if self.with_offsets:
            self._offsets = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None, **auth
            )
            await self._offsets.start()
            await self._offsets.topics()
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **auth)
            await self._admin.start()
        parts = []
        for topic in self.topics:
            for p in self._consumer.partitions_for_topic(topic) or ():
                parts.append(TopicPartition(topic, p))
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        await self._catch_up()
        self._ready.set()

    async def on_stop(self) -> None:
        for consumer in (self._consumer, self._offsets, *self._tails.values()):
            if consumer is not None:
                await consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            await self._read_once(0.2)

    async def _read_once(self, timeout: float) -> None:
        assert self._consumer is not None
        async with self._lock:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        for tp, messages in batches.items():
            for msg in messages:
                good, _ = decode(tp.topic, msg.value, message_time(msg.timestamp, int(time.time() * 1000)))  # ms
                for event in good:
                    self.data.apply(tp.topic, event)

    async def ready(self) -> None:
        await self._ready.wait()

    def reading(self) -> set[str]:
        """The topics read (a topic that did not exist at start is not)."""
        return {tp.topic for tp in self._consumer.assignment()} if self._consumer is not None else set()

    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def sync(self) -> None:
        """Return once everything written to the reference topics before now is applied."""
        await self._ready.wait()  # agents may get events before this service has started
        now = time.monotonic()
        if now - self._last_sync < 0.2:
            return
        self._last_sync = now
        await self._catch_up()

    async def _catch_up(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        parts = list(consumer.assignment())
        if not parts:
            return
        ends = await self._true_ends(await consumer.end_offsets(parts))
        deadline = time.monotonic() + 30
        while not await self._reached(ends):
            if time.monotonic() > deadline:
                positions = {str(tp): await consumer.position(tp) for tp in ends}
                log.warning("reference topics not read up to %s after 30 s (at %s)", ends, positions)
                return
            await self._read_once(0.05)

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        """The broker's end offsets of any partitions, from a client that never fetches: a
        request waits behind a fetch on the same connection (Faust's consumer, the reader),
        which the broker holds for up to its maximum wait."""
        await self._ready.wait()
        assert self._offsets is not None
        ends = await self._true_ends(
            await self._offsets.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        )
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in tps}

    async def true_ends(self, ends: dict[Any, int]) -> dict[Any, int]:
        """:meth:`_true_ends` for partitions of any tuple type ``(topic, partition)``."""
        found = await self._true_ends({TopicPartition(tp[0], tp[1]): end for tp, end in ends.items()})
        return {tp: found[TopicPartition(tp[0], tp[1])] for tp in ends}

    async def _true_ends(
        self, ends: dict[TopicPartition, int], timeout: float = 5.0, slot: str = "reference", within: float = 120.0
    ) -> dict[TopicPartition, int]:
        """:meth:`_probe_ends`, tried again for ``within`` seconds while some last batch
        could not be read: table recovery, the reference data and the settle rounds must
        not stop short of a partition's end (a busy broker or worker can take longer than
        one try). Past ``within``, what the broker answered is the best known."""
        deadline = time.monotonic() + within
        while True:
            try:
                out = await asyncio.wait_for(self._probe_ends(ends, timeout, slot), timeout + 5)
            except TimeoutError:
                log.warning("reading the last batch of %d partitions took over %.0f s", len(ends), timeout + 5)
                out = ends
            unknown = [tp for tp, end in ends.items() if end > 0 and self._known_ends.get(tp, (-1, 0))[0] != end]
            if not unknown or time.monotonic() >= deadline or self.should_stop:
                return out
            log.warning("reading the last batch of %d partitions again", len(unknown))

    async def _probe_ends(
        self, ends: dict[TopicPartition, int], timeout: float, slot: str
    ) -> dict[TopicPartition, int]:
        """End offsets that count every record of the last batch.

        The embedded broker answers a request for the latest offset with the offset of the
        last record *batch* plus one, not past its last record (a producer's batch of ten
        records ending at offset 9 reads as 1). Reading from that offset returns the
        batch, whose last record gives the true end; on Kafka, where the answer is exact,
        the read returns the last record and changes nothing."""
        out = dict(ends)
        # a partition whose reported end has not moved has no new batch: its true end is known
        for tp, end in ends.items():
            known = self._known_ends.get(tp)
            if known is not None and known[0] == end:
                out[tp] = known[1]
        probe = [tp for tp, end in ends.items() if end > 0 and self._known_ends.get(tp, (-1, 0))[0] != end]
        if not probe:
            return out
        async with self._tail_locks[slot]:
            tail = self._tails.get(slot)
            if tail is None:  # on first use: table recovery may ask before this service starts
                tail = self._tails[slot] = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    enable_auto_commit=False,
                    group_id=None,
                    fetch_max_wait_ms=10,  # 0 makes the embedded broker answer empty
                    # the embedded broker returns nothing for a batch larger than this (Kafka
                    # returns it anyway): room for the largest batch a producer sends (1 MB)
                    max_partition_fetch_bytes=2 * 1024 * 1024,
                    **self.security.aiokafka(),
                )
                await tail.start()
            held = tail.assignment()
            if not set(probe) <= held:  # assigned once, paused between reads (no fetching)
                tail.assign(sorted(held | set(probe)))
                tail.pause(*tail.assignment())
            tail.resume(*probe)
            for tp in probe:
                tail.seek(tp, ends[tp] - 1)
            waiting = set(probe)
            deadline = time.monotonic() + timeout
            while waiting and time.monotonic() < deadline:
                try:
                    fetched = await tail.getmany(*waiting, timeout_ms=200)
                except ConsumerStoppedError:  # the worker is stopping
                    return ends
                for tp, records in fetched.items():
                    if records:
                        out[tp] = max(out[tp], records[-1].offset + 1)
                        if tp in waiting:
                            self._known_ends[tp] = (ends[tp], out[tp])
                        waiting.discard(tp)
            tail.pause(*probe)
        if waiting:  # what the broker answered is the best known then
            log.warning("could not read the last batch of %d partitions in %.0f s", len(waiting), timeout)
        return out

    def known_end(self, topic: str, partition: int, reported: int) -> int | None:
        """The true end of a partition whose broker reports ``reported``, if read already."""
        known = self._known_ends.get(TopicPartition(topic, partition))
        return known[1] if known is not None and known[0] == reported else None

    def probe_end(self, topic: str, partition: int, reported: int) -> None:
        """Read the partition's last batch in the background (see ``known_end``)."""
        tp = TopicPartition(topic, partition)
        if tp in self._probing:
            return
        self._probing.add(tp)

        async def probe() -> None:
            try:
                await self._true_ends({tp: reported}, timeout=1.0, slot="inputs", within=0.0)
            finally:
                self._probing.discard(tp)

        task = asyncio.ensure_future(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of these topics (the metadata read at start: topics exist before
        a worker starts, and their partition counts do not change under it)."""
        assert self._offsets is not None
        known = self._offsets.partitions_for_topic
        return [TopicPartition(t, p) for t in sorted(topics) for p in sorted(known(t) or ())]

    async def committed(self, tps: list[Any]) -> dict[Any, int]:
        """The worker group's committed offsets (the next offset to read; 0 when none):
        Faust commits only what it has processed, after flushing what that produced."""
        await self._ready.wait()
        assert self._admin is not None
        found = await self._admin.list_consumer_group_offsets(
            self.group, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps]
        )
        out = {}
        for tp in tps:
            meta = found.get(TopicPartition(tp.topic, tp.partition))
            out[tp] = max(meta.offset, 0) if meta is not None else 0
        return out

    async def _reached(self, ends: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, end in ends.items():
            if await self._consumer.position(tp) < end:
                return False
        return True
