"""The program to files and to Kafka: JSON lines, collector-style arrays, the demo's stream in real time."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from ripple.config import DAY_MS
from ripple.simulator.model import Dataset, Message, SimConfig
from ripple.simulator.program import generate
from streams.kafka import PLAINTEXT, Arrays, KafkaSecurity, producer_config
from streams.partitioner import partition_for as murmur2_partition


# -- output ---------------------------------------------------------------------------
def write_out(ds: Dataset, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "events.jsonl").open("wb") as fh:
        for m in [*ds.reference, *ds.events]:
            fh.write(
                orjson.dumps(
                    {
                        "topic": m.topic,
                        "key": m.key,
                        "value": m.value.decode(errors="replace"),
                        "valid": m.event is not None,
                    }
                )
            )
            fh.write(b"\n")
    (out / "ground_truth.json").write_bytes(orjson.dumps(ds.truth, option=orjson.OPT_INDENT_2))


#: the simulator's producer tuning, on top of :func:`streams.kafka.producer_config`
PRODUCER_TUNING = {"linger.ms": 20, "batch.size": 1_000_000}


def batched(messages: Iterator[Message] | list[Message], partitions: dict[str, int], size: int) -> Iterator[Message]:
    """Group events as a collector does (SPEC §2): one JSON array per topic partition, at
    most ``size`` events, in their order. Reference topics and malformed messages go alone."""
    arrays: Arrays[Message] = Arrays(max_items=size)

    def flush(key: tuple[str, int]) -> Iterator[Message]:
        for group in arrays.pop(key):
            if len(group) == 1:
                yield group[0]
            else:
                events = [m.event for m in group]
                yield Message(key[0], group[0].key, orjson.dumps(events), {"batch": events})

    for m in messages:
        count = partitions.get(m.topic)
        if count is None or m.topic in ("codes", "creators"):
            yield m
            continue
        key = (m.topic, murmur2_partition(m.key.encode(), count))
        if m.event is None:
            yield from flush(key)
            yield m
            continue
        if arrays.add(key, m):
            yield from flush(key)
    for key in list(arrays.groups):
        yield from flush(key)


def produce(
    messages: Iterator[Message] | list[Message],
    bootstrap: str,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    batch: int = 1,
    security: KafkaSecurity = PLAINTEXT,
) -> int:
    """Send messages in order; ``rate`` > 0 paces them (messages per second). ``batch`` > 1
    sends events as JSON arrays of up to that many per topic partition, as a collector does."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(bootstrap, security, PRODUCER_TUNING))
    if batch > 1:
        meta = producer.list_topics(timeout=10)
        counts = {name: len(t.partitions) for name, t in meta.topics.items() if t.partitions}
        messages = batched(messages, counts, batch)
    sent = 0
    started = time.monotonic()
    for m in messages:
        if stop is not None and stop():
            break
        while True:
            try:
                producer.produce(m.topic, key=m.key.encode(), value=m.value)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            if progress:
                progress(sent)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    remaining = producer.flush(30)
    if remaining:
        from ripple.broker import BrokerError

        raise BrokerError(f"{remaining} messages were not delivered to {bootstrap}")
    return sent


def interleave(streams: list[list[Message]]) -> list[Message]:
    """Several programs' events as one storefront sends them: merged in event time.

    Programs that share a stack run at the same time; sent one after the other, every
    program after the first would arrive days behind the stream time of the one before
    (late, SPEC §3.5). A message without a valid event (malformed) keeps its place after
    the event before it."""

    def keyed(n: int, stream: list[Message]) -> Iterator[tuple[int, int, int, Message]]:
        ts = -1
        for i, m in enumerate(stream):
            if isinstance(m.event, dict) and isinstance(m.event.get("ts"), int):
                ts = m.event["ts"]
            yield ts, n, i, m

    return [m for *_, m in heapq.merge(*(keyed(n, s) for n, s in enumerate(streams)))]


def demo_stream(cfg: SimConfig, stop: Callable[[], bool]) -> Iterator[list[Message]]:
    """Endless demo traffic, one simulated window after another with fresh ids.

    Windows follow each other from ``cfg.start_ms``, always forward in time: the windows in
    the past are sent as fast as the producer goes (a backlog), and once a window reaches
    the present its events are released as their time comes, as a storefront sends them.
    No event is ever in the future, and none goes back behind stream time (SPEC §3.5)."""
    n = 0
    span = int(cfg.days * DAY_MS)
    while not stop():
        window = SimConfig(
            **{
                **cfg.__dict__,
                "seed": cfg.seed + n,
                "run_id": f"{cfg.prefix}-{n}",
                "creator_prefix": cfg.creator_prefix or cfg.prefix,
                "start_ms": cfg.start_ms + n * span,
            }
        )
        ds = generate(window)
        if window.start_ms + span <= time.time() * 1000:
            yield [*ds.reference, *ds.events]
        else:
            yield ds.reference
            yield from _in_real_time(ds.events, stop)
        n += 1


def _in_real_time(events: list[Message], stop: Callable[[], bool]) -> Iterator[list[Message]]:
    """``events`` (in time order) in groups, each once the wall clock has reached its time."""
    pending: list[Message] = []
    for m in events:
        ts = m.event.get("ts") if isinstance(m.event, dict) else None
        while isinstance(ts, int) and ts > time.time() * 1000:
            if stop():
                return
            if pending:
                yield pending
                pending = []
            time.sleep(min(1.0, (ts - time.time() * 1000) / 1000))
        pending.append(m)
    if pending:
        yield pending
