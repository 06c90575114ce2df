"""The worker's and the sink's consumers wait at most ``fetch_wait_ms`` per fetch.

The embedded broker answers a fetch only when its wait is over, even when records arrive
meanwhile (Kafka answers at once), so this wait is added to every hop between agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ripple.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, json
from ripple.config import load_settings
from streams.app import create_app
app = create_app(load_settings())

async def made() -> int:  # the consumer is built the way the worker builds it, not started
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    return consumer._fetch_max_wait_ms

print(json.dumps({"wait": asyncio.run(made())}))
"""


def worker_fetch_wait(extra: dict[str, str]) -> int:
    # in a child process: create_app installs process-wide fixes to Faust
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
    env.update({"RIPPLE_BOOTSTRAP": "127.0.0.1:9", **extra})
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(json.loads(done.stdout.strip().splitlines()[-1])["wait"])


def test_the_worker_consumer_takes_the_setting_not_faust_s_fixed_wait() -> None:
    assert worker_fetch_wait({}) == Settings().fetch_wait_ms == 50
    assert worker_fetch_wait({"RIPPLE_FETCH_WAIT_MS": "240"}) == 240


@pytest.mark.parametrize("value", ["0", "10001", "-5"])
def test_out_of_range_waits_are_refused(value: str) -> None:
    from ripple.checks import ConfigError

    with pytest.raises(ConfigError, match="RIPPLE_FETCH_WAIT_MS must be between 1 and 10000"):
        load_settings({"RIPPLE_FETCH_WAIT_MS": value})
