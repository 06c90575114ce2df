"""Scale-out: two worker processes and the sink on one embedded broker credit every order,
pay every commission and place every customer in its referral chain as a single worker
does (the simulator's ground truth): the partitions are shared, every key's state lives
with the worker that owns its partition, and a customer's place settles across both
(a round waits for the other worker's committed offsets; a parked referrer on one worker
holds its friend on the other).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from stack import assert_paid_as_the_truth, get, running_stack

from ripple.broker import free_port
from ripple.simulator import SimConfig, generate, produce
from sinks.clickhouse import ClickHouse

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouse, dict[str, Any], list[str]]]:
    base = tmp_path_factory.mktemp("two")
    with running_stack(base) as stack:
        stack.sink()
        web = stack.web
        metrics = []
        for n in (1, 2):
            port = free_port()
            metrics.append(f"http://127.0.0.1:{port}/metrics")
            stack.worker(f"w{n}", port, f"worker{n}.log")
        time.sleep(8)  # both in the group before the data comes
        ds = generate(SimConfig(seed=9, start_ms=1_767_225_600_000, views=3000))
        produce(ds.reference, stack.bootstrap)
        produce(ds.events, stack.bootstrap)
        truth = ds.truth
        want = sum(1 for v in truth["last_click"].values() if v)
        deadline = time.monotonic() + 180
        last: dict[str, Any] = {}
        quiet = 0
        while time.monotonic() < deadline:
            try:
                t = get(f"http://127.0.0.1:{web}/api/totals")
                h = get(f"http://127.0.0.1:{web}/healthz")
            except OSError:
                time.sleep(1)
                continue
            lag = sum(v["lag"] for v in h.get("topics", {}).values()) + sum(
                v["lag"] for v in h.get("pipeline", {}).values()
            )
            last = {**t, "lag": lag}
            done = t["attributed"] >= want and t["chain_nodes"] >= len(truth["chain_parents"])
            quiet = quiet + 1 if done and lag == 0 else 0
            if quiet >= 3:
                break
            time.sleep(1)
        time.sleep(3)
        read = []
        for url in metrics:
            with urllib.request.urlopen(url, timeout=10) as resp:
                read.append(
                    sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in resp.read().decode().splitlines()
                        if line.startswith("ripple_events_in_total{")
                    )
                )
        stack.stop(timeout=30)
        ch = ClickHouse(f"chdb://{base / 'sink' / 'clickhouse'}")
        yield ch, truth, [json.dumps(last), *map(str, read)]
        ch.close()


def test_both_workers_took_part(outcome: tuple[ClickHouse, dict[str, Any], list[str]]) -> None:
    _, _, info = outcome
    assert all(float(n) > 0 for n in info[1:]), info


def test_two_workers_credit_every_order_as_the_truth_says(
    outcome: tuple[ClickHouse, dict[str, Any], list[str]],
) -> None:
    ch, truth, info = outcome
    assert_paid_as_the_truth(ch, truth, info[0])


def test_two_workers_place_every_customer_as_the_truth_says(
    outcome: tuple[ClickHouse, dict[str, Any], list[str]],
) -> None:
    ch, truth, info = outcome
    rows = ch.query("SELECT node_id, parent_id FROM ripple.chain_nodes FINAL WHERE active = 1 AND parent_id != ''")
    assert dict(rows) == truth["chain_parents"], info[0]
    sizes = dict(ch.query("SELECT root_id, nodes FROM ripple.chains FINAL"))
    assert {root: sizes.get(root) for root in truth["chains"]} == {
        root: chain["nodes"] for root, chain in truth["chains"].items()
    }, info[0]
