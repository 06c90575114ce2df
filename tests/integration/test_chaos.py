"""Crashes, restarts and rebalances in the middle of a run change nothing in the results.

Broker, workers and sink run as separate processes, as in production. While a simulated
program (every fraud pattern injected) is produced in chunks, the worker and the sink are
killed with SIGKILL (no flush, no commit) or stopped with SIGTERM at moments drawn from the
run's seed, and started again; in the rebalance run a second worker joins mid-run and the
first one leaves later. After the pipeline drains, ClickHouse holds exactly the ground
truth: the raw events, every credit and commission, the chains, the fraud verdicts and
alerts, the dead letters, and ``creator_daily``. Seeds: ``RIPPLE_CHAOS_SEEDS`` (default 24,27,28:
an out-of-order leak bucket, a leak burst behind a later redemption, a sink stopped while
it joined its group).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from stack import assert_paid_as_the_truth, eventually, get, spawn

from ripple.broker import EmbeddedBroker, create_topics, free_port
from ripple.simulator import Dataset, SimConfig, generate, parse_inject, produce
from sinks.clickhouse import ClickHouse
from sinks.runner import SINK_GROUP
from streams.topics import INPUT_TOPICS, INTERNAL_TOPICS, OUTPUT_TOPICS

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SEEDS = [int(s) for s in os.environ.get("RIPPLE_CHAOS_SEEDS", "24,27,28").split(",") if s.strip()]
CHUNKS = 8
WORKER_GROUP = "ripple"


@dataclass
class Proc:
    """One restartable process: a worker or the sink, always on the same data dir and port."""

    name: str
    args: tuple[str, ...]
    log_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = spawn(*self.args, "--web-port", str(self.port), log=self.log)

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def stop(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metric(self, prefix: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            lines = resp.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


@dataclass
class Run:
    ch: ClickHouse
    ds: Dataset
    actions: list[str]
    problem: str
    #: after the drain: the group's committed offsets minus the end offsets (0 everywhere = all committed)
    uncommitted: dict[str, int]
    #: messages a worker and a sink restarted after a SIGTERM at the end read again
    reread: dict[str, float]


def uncommitted(bootstrap: str, group: str, topics: tuple[str, ...]) -> dict[str, int]:
    """Per topic: true end offsets minus the group's committed offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=10)
        parts = [TopicPartition(t, p) for t in topics for p in meta.topics[t].partitions]
        committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10)}
        ends = true_ends(bootstrap, parts)
        out: dict[str, int] = defaultdict(int)
        for (topic, partition), offset in committed.items():
            out[topic] += ends[(topic, partition)] - offset
        return dict(out)
    finally:
        consumer.close()


def true_ends(bootstrap: str, parts: list[TopicPartition]) -> dict[tuple[str, int], int]:
    """The embedded broker's high watermark is the offset of the last record batch plus one:
    read that batch to find its last record (streams.reference_reader.ReferenceReader._true_ends)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "ripple-test-ends", "enable.auto.commit": False})
    try:
        ends = {}
        probe = []
        for tp in parts:
            _, high = reader.get_watermark_offsets(tp, timeout=10)
            ends[(tp.topic, tp.partition)] = high
            if high > 0:
                probe.append(TopicPartition(tp.topic, tp.partition, high - 1))
        reader.assign(probe)
        waiting = {(tp.topic, tp.partition) for tp in probe}
        deadline = time.monotonic() + 30
        quiet = 0  # a large batch comes in several reads: read until nothing more comes
        while (waiting or quiet < 2) and time.monotonic() < deadline:
            batch = reader.consume(1000, timeout=0.5)
            quiet = 0 if batch else quiet + 1
            for msg in batch:
                if msg.error() is None:
                    key = (str(msg.topic()), int(msg.partition() or 0))
                    ends[key] = max(ends[key], int(msg.offset() or 0) + 1)
                    waiting.discard(key)
        assert not waiting, waiting
        return ends
    finally:
        reader.close()


def dump_topics(bootstrap: str, into: Path) -> None:
    into.mkdir(exist_ok=True)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "ripple-test-dump", "auto.offset.reset": "earliest"})
    try:
        meta = reader.list_topics(timeout=10)
        topics = [t for t in meta.topics if not t.startswith("__")]
        reader.assign([TopicPartition(t, p, 0) for t in topics for p in meta.topics[t].partitions])
        files = {t: (into / f"{t}.jsonl").open("w") for t in topics}
        quiet = 0
        while quiet < 5:
            batch = reader.consume(5000, timeout=1)
            quiet = 0 if batch else quiet + 1
            for msg in batch:
                if msg.error() is None:
                    value = msg.value() or b""
                    line = {"p": msg.partition(), "o": msg.offset(), "k": (msg.key() or b"").decode(errors="replace")}
                    files[str(msg.topic())].write(json.dumps({**line, "v": value.decode(errors="replace")}) + "\n")
        for fh in files.values():
            fh.close()
    finally:
        reader.close()


def post_mortem(bootstrap: str, base: Path, procs: list[Proc]) -> None:
    """Everything the topics hold, both groups' commits against the true ends, and where
    every live process waits (``py-spy dump``; a worker also logs its tasks on SIGUSR1)."""
    dump_topics(bootstrap, base / "topics")
    lag = {
        WORKER_GROUP: uncommitted(bootstrap, WORKER_GROUP, (*INPUT_TOPICS, *INTERNAL_TOPICS)),
        SINK_GROUP: uncommitted(bootstrap, SINK_GROUP, (*INPUT_TOPICS, *OUTPUT_TOPICS)),
    }
    (base / "uncommitted.json").write_text(json.dumps(lag, indent=1))
    spy = Path(sys.executable).parent / "py-spy"
    for p in procs:
        if not p.alive():
            continue
        assert p.proc is not None
        if p.name.startswith("worker"):
            p.proc.send_signal(signal.SIGUSR1)
        with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/metrics", timeout=10) as resp:
            (base / f"{p.name}.metrics").write_bytes(resp.read())
        if spy.exists():
            dump = subprocess.run([str(spy), "dump", "--pid", str(p.proc.pid)], capture_output=True, text=True)
            (base / f"{p.name}.stacks").write_text(dump.stdout + dump.stderr)


def warnings(base: Path, last: int = 12) -> list[str]:
    """The workers' last warnings and errors about offsets, for a failure's message (CI
    keeps no files): where a partition was read again, reclaimed or given up."""
    lines = []
    for path in sorted(base.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if ("WARNING" in line or "ERROR" in line) and "offset" in line:
                lines.append(f"{path.name}: {line.split('] ', 2)[-1][:200]}")
    return lines[-last:]


def input_progress(bootstrap: str) -> float:
    """The share of the input topics' records the worker group has committed."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": WORKER_GROUP, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=10)
        parts = [TopicPartition(t, p) for t in INPUT_TOPICS for p in meta.topics[t].partitions]
        committed = sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()
    total = sum(true_ends(bootstrap, parts).values())
    return committed / total if total else 1.0


def wait_progress(bootstrap: str, share: float, timeout: float = 180) -> None:
    if not eventually(lambda: input_progress(bootstrap) >= share, timeout, interval=0.3):
        raise AssertionError(f"the workers did not commit {share:.0%} of the backlog in {timeout} s")


def chaos_run(base: Path, seed: int, mode: str) -> Iterator[Run]:
    """``mode``: ``kills`` and ``rebalance`` produce the program in chunks while the workers run;
    ``backlog``, ``backlog-kills`` and ``backlog-rebalance`` produce all of it (over 20 000
    events) before the first worker starts, then read it as a backlog: undisturbed, with the
    worker killed three times, or with a second worker joining and leaving."""
    rng = random.Random(seed)
    backlog = mode.startswith("backlog")
    rebalance = mode == "rebalance"
    broker = EmbeddedBroker(base / "broker.log")
    broker.start()
    procs: list[Proc] = []
    try:
        create_topics(broker.bootstrap, 4)
        sink = Proc("sink", ("sink", "--bootstrap", broker.bootstrap, "--data-dir", str(base / "sink")), base)
        w1 = Proc("worker-a", ("worker", "--bootstrap", broker.bootstrap, "--data-dir", str(base / "wa")), base)
        w2 = Proc("worker-b", ("worker", "--bootstrap", broker.bootstrap, "--data-dir", str(base / "wb")), base)
        procs = [sink, w1, w2]
        sink.start()
        if not backlog:
            w1.start()
        views = 16_500 if backlog else 3000
        ds = generate(SimConfig(seed=seed, start_ms=1_767_225_600_000, views=views, inject=parse_inject("all")))
        produce(ds.reference, broker.bootstrap)
        size = -(-len(ds.events) // CHUNKS)
        actions: list[str] = []
        if backlog:
            produce(ds.events, broker.bootstrap)  # the whole program waits in the topics
            w1.start()
            if mode == "backlog-kills":
                for share in (0.2, 0.45, 0.7):
                    wait_progress(broker.bootstrap, share)
                    w1.stop(signal.SIGKILL)
                    actions.append(f"kill -9 worker at {share:.0%}")
                    w1.start()
            elif mode == "backlog-rebalance":
                wait_progress(broker.bootstrap, 0.25)
                w2.start()
                actions.append("join b")
                wait_progress(broker.bootstrap, 0.6)
                w2.stop(signal.SIGTERM)
                actions.append("term b")
            plan = []
        elif rebalance:
            plan = ["", "", "join b", "", "kill -9 a", "restart a", "term b", ""]
        else:
            kinds = ["kill -9 worker", "kill -9 sink", "term worker", "term sink", "kill -9 both"]
            plan = ["", *rng.sample(kinds, len(kinds)), rng.choice(kinds), "kill -9 worker"]
        for i in range(CHUNKS if plan else 0):
            produce(ds.events[i * size : (i + 1) * size], broker.bootstrap)
            time.sleep(rng.uniform(0.2, 3.0))  # the moment within the chunk's processing
            step = plan[i]
            if not step:
                continue
            actions.append(step)
            if step == "join b":
                w2.start()
            elif step == "restart a":
                w1.start()
            elif step == "kill -9 a":
                w1.stop(signal.SIGKILL)
            elif step == "term b":
                w2.stop(signal.SIGTERM)
            else:
                how, _, which = step.rpartition(" ")
                sig = signal.SIGKILL if how == "kill -9" else signal.SIGTERM
                targets = [w1, sink] if which == "both" else [w1] if which == "worker" else [sink]
                for p in targets:
                    p.stop(sig)
                time.sleep(rng.uniform(0.0, 2.0))
                for p in targets:
                    p.start()
        want = sum(1 for v in ds.truth["last_click"].values() if v)
        last: dict[str, Any] = {}
        quiet = 0

        def drained() -> bool:
            nonlocal quiet
            t = get(f"http://127.0.0.1:{sink.port}/api/totals")
            h = get(f"http://127.0.0.1:{sink.port}/healthz")
            lag = sum(v["lag"] for v in h.get("topics", {}).values())
            lag += sum(v["lag"] for v in h.get("pipeline", {}).values())
            last.update(t, lag=lag, want_attributed=want, want_nodes=len(ds.truth["chain_parents"]))
            done = t["attributed"] >= want and t["chain_nodes"] >= len(ds.truth["chain_parents"]) and lag == 0
            quiet = quiet + 1 if done else 0
            return quiet >= 3

        problem = "" if eventually(drained, 240, interval=1) else f"not drained: {last}; actions {actions}"
        if problem:  # what the topics hold and where the processes wait, for the post-mortem
            post_mortem(broker.bootstrap, base, [w1, w2, sink])
            problem += "; worker warnings: " + " | ".join(warnings(base))
        dead = [p.name for p in procs if p.starts and not p.alive() and p is not w2]
        if dead:
            problem += f" stopped by itself: {dead}"
        time.sleep(2)
        # a clean stop commits everything; a restart then reads nothing again
        workers = [p for p in (w1, w2) if p.alive()]
        for p in [*workers, sink]:
            p.stop(signal.SIGTERM)
        topics = (*INPUT_TOPICS, *INTERNAL_TOPICS)
        left = uncommitted(broker.bootstrap, WORKER_GROUP, topics)
        left.update(
            {
                f"sink:{t}": n
                for t, n in uncommitted(broker.bootstrap, SINK_GROUP, (*INPUT_TOPICS, *OUTPUT_TOPICS)).items()
            }
        )
        w1.start()
        sink.start()
        if not eventually(
            lambda: w1.metric("ripple_messages_in_total") >= 0 and sink.metric("ripple_sink_rows_total") >= 0, 60
        ):
            problem += " restarted processes did not serve metrics"
        # a worker that has joined its group and recovered its tables logs "Worker ready"
        if not eventually(lambda: "Worker ready" in w1.log.read_text(errors="replace"), 90, interval=1):
            problem += " the restarted worker did not get ready"
        time.sleep(2)
        # one repeated view of a visitor who never buys (it restates nothing, and it is the
        # program's last, so not late): once both have read it, they are in their groups
        # and read nothing else
        buyers = {m.event["visitor_id"] for m in ds.events if m.topic == "orders" and isinstance(m.event, dict)}
        view = next(
            m
            for m in reversed(ds.events)
            if m.topic == "views" and isinstance(m.event, dict) and m.event.get("visitor_id") not in buyers
        )
        produce([view], broker.bootstrap)

        def seen() -> bool:
            return bool(w1.metric('ripple_messages_in_total{topic="views"}') and sink.metric("ripple_sink_rows_total{"))

        if not eventually(seen, 90, interval=1):
            problem += " the restarted worker or sink did not read the repeated view"
        time.sleep(2)
        reread = {
            **{f"worker {t}": w1.metric(f'ripple_messages_in_total{{topic="{t}"}}') for t in INPUT_TOPICS},
            **{f"sink {t}": sink.metric(f'ripple_sink_rows_total{{table="{t}"}}') for t in INPUT_TOPICS},
        }
        for p in (w1, sink):
            p.stop(signal.SIGTERM)
        ch = ClickHouse(f"chdb://{base / 'sink' / 'clickhouse'}")
        yield Run(ch, ds, actions, problem, left, reread)
        ch.close()
    finally:
        for p in procs:
            if p.alive():
                assert p.proc is not None
                p.proc.kill()
                p.proc.wait()
        broker.stop()


BACKLOGS = [("backlog", 41), ("backlog-kills", 42), ("backlog-rebalance", 43)]


@pytest.fixture(
    scope="module",
    params=[*(("kills", s) for s in SEEDS), ("rebalance", 31), *BACKLOGS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    mode, seed = request.param
    yield from chaos_run(tmp_path_factory.mktemp(f"{mode}{seed}"), seed, mode)


def context(run: Run) -> str:
    return f"actions {run.actions}; {run.problem}"


def test_the_pipeline_drained_and_nothing_stopped_by_itself(run: Run) -> None:
    assert not run.problem, context(run)
    stops = sum(2 if a.endswith("both") else 1 for a in run.actions if a.startswith(("kill", "term")))
    if "join b" in run.actions:  # rebalance: b joins and leaves, a is killed in between or not
        wanted = 2 if "restart a" in run.actions else 1
    else:  # kills: seven steps, five or more stops; a backlog's kills: three
        wanted = 3 if any(" at " in a for a in run.actions) else 5
    assert stops >= (wanted if run.actions else 0), context(run)


def test_no_event_was_late(run: Run) -> None:
    """At the default lateness: a worker reads each task's inputs in event-time order, so
    neither the backlog nor a restart makes an on-time event late (SPEC §3.5)."""
    (late,) = run.ch.query("SELECT count() FROM ripple.late_events FINAL")[0]
    assert late == 0, context(run)


KEYS = {"views": "event_id", "clicks": "event_id", "orders": "order_id", "refunds": "event_id"}


def test_every_raw_event_is_stored_once(run: Run) -> None:
    for topic, key in KEYS.items():
        want = {m.event[key] for m in run.ds.events if m.topic == topic and isinstance(m.event, dict)}
        # the table name comes from the fixed KEYS above, never from input
        (stored,) = run.ch.query(f"SELECT count() FROM ripple.{topic} FINAL")[0]
        assert stored == len(want), (topic, context(run))
    (dead,) = run.ch.query("SELECT count() FROM ripple.dead_letters FINAL")[0]
    assert dead == run.ds.truth["malformed"], context(run)


def test_every_credit_and_commission_equals_the_truth(run: Run) -> None:
    assert_paid_as_the_truth(run.ch, run.ds.truth, context(run))
    per_order = run.ch.query(
        "SELECT order_id, sum(credit) FROM ripple.attributions FINAL WHERE model = 'linear' GROUP BY order_id"
    )
    assert all(abs(total - 1) < 1e-9 for _, total in per_order if total > 0), context(run)


def test_every_chain_equals_the_truth(run: Run) -> None:
    rows = run.ch.query("SELECT node_id, parent_id FROM ripple.chain_nodes FINAL WHERE active = 1 AND parent_id != ''")
    assert dict(rows) == run.ds.truth["chain_parents"], context(run)
    sizes = dict(run.ch.query("SELECT root_id, nodes FROM ripple.chains FINAL"))
    assert {r: sizes.get(r) for r in run.ds.truth["chains"]} == {
        r: c["nodes"] for r, c in run.ds.truth["chains"].items()
    }, context(run)


def test_every_fraud_verdict_and_alert_equals_the_truth(run: Run) -> None:
    blocked = run.ch.query(
        "SELECT order_id, reasons FROM ripple.attributions FINAL "
        "WHERE model = 'last_click' AND status = 'blocked' AND credit > 0"
    )
    assert {o: r[0] for o, r in blocked} == run.ds.truth["blocked_orders"], context(run)
    rows = run.ch.query("SELECT rule, evidence FROM ripple.alerts FINAL WHERE rule != 'viral_chain'")
    assert {(rule, json.loads(e)["subject"]) for rule, e in rows} == {
        (i["rule"], i["subject"]) for i in run.ds.truth["incidents"]
    }, context(run)


def test_creator_daily_equals_the_truth(run: Run) -> None:
    """Last-click conversions, revenue and discounts per creator and day, from the events."""
    orders = {m.event["order_id"]: m.event for m in run.ds.events if m.topic == "orders" and isinstance(m.event, dict)}
    creators = {m.event["creator_id"] for m in run.ds.reference if m.topic == "creators" and isinstance(m.event, dict)}
    want: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0, 0, 0])
    for order_id, credit in run.ds.truth["last_click"].items():
        if not credit or credit["referrer_id"] not in creators:
            continue  # blocked orders keep their credit (and earn nothing): they count
        o = orders[order_id]
        day = datetime.fromtimestamp(o["ts"] / 1000, UTC).date()
        totals = want[(credit["referrer_id"], day)]
        totals[0] += 1
        totals[1] += o["amount_minor"]
        totals[2] += o.get("discount_minor", 0)
    got = {
        (creator, day): [round(conv), round(rev), round(disc)]
        for creator, day, conv, rev, disc in run.ch.query(
            "SELECT creator_id, day, sum(conversions), sum(revenue_minor), sum(discount_minor) "
            "FROM ripple.creator_daily WHERE model = 'last_click' GROUP BY creator_id, day"
        )
        if conv
    }
    assert got == dict(want), context(run)


def test_a_clean_stop_commits_everything_and_a_restart_reads_nothing_again(run: Run) -> None:
    assert run.uncommitted and not any(run.uncommitted.values()), (run.uncommitted, context(run))
    assert {k: v for k, v in run.reread.items() if v} == {"worker views": 1, "sink views": 1}, context(run)
