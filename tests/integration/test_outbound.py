"""The worker's librdkafka producer (streams/outbound.py) against the real embedded broker:
tickets resolve once their records are in the broker, in order, where they were sent;
``flush`` covers every ticket handed over; an undeliverable record stops the process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from ripple.broker import EmbeddedBroker, create_topics, free_port
from ripple.config import Settings
from streams.kafka import producer_config
from streams.outbound import PRODUCER_TUNING, Outbound
from streams.partitioner import partition_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = EmbeddedBroker(tmp_path_factory.mktemp("outbound") / "broker.log")
    broker.start()
    try:
        create_topics(broker.bootstrap, 4)
        yield broker.bootstrap
    finally:
        broker.stop()


def read_all(bootstrap: str, topic: str, partitions: int, want: int) -> list[tuple[int, bytes, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "outbound-test", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[tuple[int, bytes, bytes]] = []
    try:
        for _ in range(60):
            for msg in consumer.consume(1000, timeout=0.5):
                part, key, value = msg.partition(), msg.key(), msg.value()
                if msg.error() is None and part is not None and key is not None and value is not None:
                    got.append((part, key, value))
            if len(got) >= want:
                break
    finally:
        consumer.close()
    return got


def test_tickets_resolve_once_the_broker_has_every_record_in_order(bootstrap: str) -> None:
    settings = Settings(bootstrap=bootstrap, partitions=4)
    n = 5000

    async def run() -> tuple[bool, bool, int]:
        out = Outbound(producer_config(bootstrap, settings.kafka, PRODUCER_TUNING))
        first = await out.send(("ripple-credits", b"%d" % i, b"k%d" % (i % 7), i % 4) for i in range(n))
        # keyed without a partition: murmur2, as every producer of Ripple's topics places keys
        second = await out.send([("alerts", b"a%d" % i, b"key-%d" % i, None) for i in range(50)])
        await out.wait([first])
        first_done = first.done.done()
        await out.flush()
        out.close()  # else its threads outlive the broker and log their reconnects
        return first_done, second.done.done(), len(out.open)

    first_done, second_done, still_open = asyncio.run(run())
    assert first_done and second_done and still_open == 0
    got = read_all(bootstrap, "ripple-credits", 4, n)
    assert len(got) == n  # once each: the idempotent producer does not repeat a retried batch
    for p in range(4):
        values = [int(v) for part, _, v in got if part == p]
        assert values == list(range(p, n, 4))  # the partition asked for, in the order sent
    alerts = read_all(bootstrap, "alerts", 4, 50)
    assert len(alerts) == 50
    assert all(part == partition_for(key, 4) for part, key, _ in alerts)


def test_a_record_the_broker_never_takes_stops_the_process() -> None:
    # nothing listens on the port: the record's delivery times out and the process exits 70
    # before anything else could be committed (its batch is read again after a restart)
    code = f"""
import asyncio, logging
from streams.kafka import producer_config
from streams.outbound import PRODUCER_TUNING, Outbound
logging.basicConfig(level=logging.INFO)
config = producer_config("127.0.0.1:{free_port()}", tuning={{**PRODUCER_TUNING, "delivery.timeout.ms": 1500}})

async def main() -> None:
    out = Outbound(config)
    ticket = await out.send([("ripple-credits", b"1", b"k", 0)])
    await out.wait([ticket])
    print("delivered?")

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 70, done.stderr[-2000:]
    assert "delivered?" not in done.stdout
    assert "a record could not be delivered" in done.stderr
