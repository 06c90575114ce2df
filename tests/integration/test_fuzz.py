"""Hostile input against the running pipeline: broker, one worker and the sink as separate
processes, a simulated program mixed with more than 100 000 hostile events (tests/hostile.py).

Afterwards the worker is still the one that started, ``ripple.dead_letters`` holds exactly
one row per bad event (by topic, partition, offset and index, each with an error), the odd
but valid events are stored, and every simulated order is paid as the ground truth says.
``RIPPLE_FUZZ_SINGLES`` and ``RIPPLE_FUZZ_EVENTS`` size the run.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from hostile import PREFIX, Generator, Hostile, corpus, count
from stack import assert_paid_as_the_truth, get, running_stack, wait_for

from ripple.simulator import PRODUCER_TUNING, Message, SimConfig, generate, parse_inject
from sinks.clickhouse import ClickHouse
from streams.kafka import producer_config

pytestmark = pytest.mark.integration

SEED = 11
SINGLES = int(os.environ.get("RIPPLE_FUZZ_SINGLES", "60000"))
EVENTS = int(os.environ.get("RIPPLE_FUZZ_EVENTS", "110000"))
WRAPPED_SHARE = 0.05  # simulated events sent inside an array of bad events
Slot = tuple[str, int, int]  # topic, partition, offset


@dataclass
class Fuzz:
    ch: ClickHouse
    truth: dict[str, Any]
    expected: dict[Slot, list[int]]  # dead letters each message must leave, by index
    odd: dict[str, int]  # odd but valid events sent, per topic
    worker_alive: bool
    sink_alive: bool
    worker_log: str
    problem: str
    figures: dict[str, float] = field(default_factory=dict)


class Sender:
    """Produces in order and keeps, from the delivery reports, where each message landed."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer(producer_config(bootstrap, tuning=PRODUCER_TUNING))
        self.expected: dict[Slot, list[int]] = {}
        self.failures: list[str] = []
        self.sent = 0

    def send(self, topic: str, key: bytes | None, value: bytes | None, bad: tuple[int, ...], timestamp: int) -> None:
        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self.failures.append(f"{topic}: {err}")
            elif bad:
                self.expected[(topic, msg.partition(), msg.offset())] = sorted(bad)

        kwargs: dict[str, Any] = {"timestamp": timestamp} if timestamp else {}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:
            self.producer.poll(0)

    def flush(self) -> None:
        remaining = self.producer.flush(60)
        assert not remaining, f"{remaining} messages were not delivered"
        assert not self.failures, self.failures[:5]


def interleave(rng: random.Random, sim: list[Message], gen: Generator, hostile: list[Hostile]) -> Iterator[Any]:
    """The simulated messages in their order, some of them wrapped among bad events, with
    the hostile messages (sorted by slot) spread between them at their slots."""
    h = 0
    for i, m in enumerate([*sim, None]):
        while h < len(hostile) and hostile[h].slot == i:
            yield hostile[h]
            h += 1
        if m is None:
            break
        if m.event is not None and m.topic not in ("codes", "creators") and rng.random() < WRAPPED_SHARE:
            yield gen.wrap(m)
        else:
            yield m


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    started = time.monotonic()
    base = tmp_path_factory.mktemp("fuzz")
    with running_stack(base) as stack:
        sink = stack.sink()
        web = stack.web
        worker = stack.worker()

        ds = generate(SimConfig(seed=SEED, start_ms=1_767_225_600_000, views=2000, inject=parse_inject("all")))
        gen = Generator(SEED, ds, int(time.time() * 1000))
        hostile = corpus(gen, singles=SINGLES, events=EVENTS)
        sender = Sender(stack.bootstrap)
        for m in ds.reference:
            sender.send(m.topic, m.key.encode(), m.value, (), 0)
        rng = random.Random(SEED)
        wrapped = 0
        for item in interleave(rng, ds.events, gen, hostile):
            if isinstance(item, Hostile):
                wrapped += item.kind == "simulated event among bad"
                sender.send(item.topic, item.key, item.value, item.bad, item.timestamp)
            else:
                sender.send(item.topic, item.key.encode(), item.value, () if item.event else (-1,), 0)
        sender.flush()
        produced = time.monotonic()
        want_dead = sum(len(v) for v in sender.expected.values())
        truth = ds.truth
        want_attributed = sum(1 for v in truth["last_click"].values() if v)
        last: dict[str, Any] = {}

        def drained() -> bool:
            t = get(f"http://127.0.0.1:{web}/api/totals")
            lag = sum(v["lag"] for v in get(f"http://127.0.0.1:{web}/healthz").get("topics", {}).values())
            last.update(t, lag=lag, want_dead_letters=want_dead, want_attributed=want_attributed)
            if worker.poll() is not None or sink.poll() is not None:
                return True  # no use waiting
            return t["dead_letters"] >= want_dead and t["attributed"] >= want_attributed and lag == 0

        problem = ""
        try:
            wait_for(drained, float(os.environ.get("RIPPLE_TEST_SETTLE_S", "150")), "the hostile input to drain")
        except AssertionError as exc:
            problem = f"{exc}: {last}"
        time.sleep(2)  # one more sink flush
        worker_alive, sink_alive = worker.poll() is None, sink.poll() is None
        drained_at = time.monotonic()
        stack.stop(timeout=30)
        ch = ClickHouse(f"chdb://{base / 'sink' / 'clickhouse'}")
        figures = {
            "messages": sender.sent,
            "hostile messages": len(hostile),
            "hostile single messages": sum(1 for h in hostile if h.kind != "array"),
            "hostile events": sum(count(h) for h in hostile),
            "simulated events wrapped among bad ones": wrapped,
            "dead letters expected": want_dead,
            "produce s": round(produced - started, 1),
            "drain s": round(drained_at - produced, 1),
        }
        print("\nfuzz:", ", ".join(f"{k} {v}" for k, v in figures.items()))
        yield Fuzz(
            ch,
            truth,
            sender.expected,
            dict(gen.odd_counts),
            worker_alive,
            sink_alive,
            Path(base / "worker.log").read_text(errors="replace"),
            problem,
            figures,
        )
        ch.close()


def test_the_corpus_is_big_and_mostly_separate_messages(fuzz: Fuzz) -> None:
    assert fuzz.figures["hostile events"] >= EVENTS
    assert fuzz.figures["hostile single messages"] >= min(SINGLES, EVENTS) // 2


def test_the_worker_and_the_sink_survive(fuzz: Fuzz) -> None:
    assert fuzz.worker_alive, fuzz.worker_log[-3000:]
    assert fuzz.sink_alive
    assert "unexpected error" not in fuzz.worker_log
    assert not fuzz.problem, fuzz.problem


def test_one_dead_letter_per_bad_event(fuzz: Fuzz) -> None:
    rows = fuzz.ch.query(
        "SELECT topic, partition, offset, arraySort(groupArray(idx)), countIf(error = '') "
        "FROM ripple.dead_letters FINAL GROUP BY topic, partition, offset"
    )
    assert sum(r[4] for r in rows) == 0, "a dead letter without an error"
    got = {(t, p, o): list(idx) for t, p, o, idx, _ in rows}
    missing = {k: v for k, v in fuzz.expected.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in fuzz.expected}
    assert not missing and not extra, (
        f"{len(missing)} messages without their dead letters (e.g. {list(missing.items())[:3]}, "
        f"got {[got.get(k) for k in list(missing)[:3]]}); {len(extra)} unexpected (e.g. {list(extra.items())[:3]})"
    )


def test_odd_but_valid_events_are_stored(fuzz: Fuzz) -> None:
    stored = dict(
        fuzz.ch.query(
            f"""
            SELECT 'views', count() FROM ripple.views FINAL WHERE startsWith(event_id, '{PREFIX}')
            UNION ALL SELECT 'clicks', count() FROM ripple.clicks FINAL WHERE startsWith(event_id, '{PREFIX}')
            UNION ALL SELECT 'orders', count() FROM ripple.orders FINAL WHERE startsWith(order_id, 'fz-ord-')
            UNION ALL SELECT 'refunds', count() FROM ripple.refunds FINAL WHERE startsWith(event_id, '{PREFIX}')
            UNION ALL SELECT 'codes', count() FROM ripple.codes FINAL WHERE startsWith(code, '{PREFIX}kode-')
            UNION ALL SELECT 'creators', count() FROM ripple.creators FINAL WHERE startsWith(creator_id, '{PREFIX}cr-')
            """
        )
    )
    assert stored == fuzz.odd


def test_simulated_orders_are_paid_as_the_truth(fuzz: Fuzz) -> None:
    assert_paid_as_the_truth(fuzz.ch, fuzz.truth, "after hostile input")
