"""The built-in dashboard of ``ripple up --demo`` in a real browser (Debian's headless Chromium).

Each of the five views is loaded; its panels must render with data, the page must report
no script error, and Chromium's console must show none. Screenshots of every view are
kept in ``test-artifacts/`` (the README's picture is one of them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import chromium

from ripple.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.integration

#: the panels that must show data in each view once the demo has run a simulated day
KEY_PANELS = {
    "creators": ["leaderboard", "funnel", "revenue", "tiers"],
    "attribution": ["models", "model-revenue", "touch-types"],
    "chains": ["top-chains", "k", "growth"],
    "fraud": ["by-rule", "alerts-per-day", "blocked", "leaked", "latest"],
    "pipeline": ["stored", "sink", "dead-letters"],
}


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=20) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("dashboard") / "data"
    port = free_port()
    log = (data.parent / "up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ripple", "up", "--demo", "--data-dir", str(data), "--web-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "RIPPLE_WEB_PORT"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        missing: dict[str, list[str]] = dict(KEY_PANELS)
        while time.monotonic() < deadline and missing:
            time.sleep(2)
            assert proc.poll() is None, f"ripple up exited: {(data.parent / 'up.log').read_text()[-2000:]}"
            try:
                missing = {view: panels for view, panels in KEY_PANELS.items() if not has_data(url, view)}
            except OSError:
                continue  # not serving yet
        assert not missing, f"views still without data after 180 s: {missing}"
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def has_data(url: str, view: str) -> bool:
    """Whether the view's API already returns rows for its key panels."""
    body = get(f"{url}/api/view/{view}")
    checks = {
        "creators": ["leaderboard", "daily", "tiers"],
        "attribution": ["models", "touch_types"],
        "chains": ["top", "growth"],
        "fraud": ["by_day", "blocked", "leaked_codes", "latest"],
        "pipeline": ["stored", "sink", "dead_letters"],
    }[view]
    return all(body.get(key) for key in checks)


def load(url: str, view: str) -> tuple[str, str]:
    """The page's DOM after its scripts ran, and Chromium's log."""
    ARTIFACTS.mkdir(exist_ok=True)
    common = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,1700",
        "--virtual-time-budget=10000",
    ]
    shot = subprocess.run(
        [*common, f"--screenshot={ARTIFACTS / f'dashboard-{view}.png'}", f"{url}/#{view}"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    dom = subprocess.run([*common, "--dump-dom", f"{url}/#{view}"], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout, shot.stderr + dom.stderr


@pytest.mark.parametrize("view", list(KEY_PANELS))
def test_view_renders_with_data_and_no_errors(web: str, view: str) -> None:
    dom, log = load(web, view)
    assert f'data-view="{view}"' in dom, "the view did not render"
    rows = dict(re.findall(r'id="panel-([a-z-]+)" data-rows="(\d+)"', dom))
    for panel in KEY_PANELS[view]:
        assert int(rows.get(panel, "0")) > 0, f"panel {panel} of {view} is empty: {rows}"
    assert 'id="errors" data-count="0"' in dom, re.findall(r'<div id="errors"[^>]*>([^<]*)', dom)
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if re.search(r"error|uncaught|failed", line, re.IGNORECASE)], console
    assert (ARTIFACTS / f"dashboard-{view}.png").stat().st_size > 20_000  # a picture, not a blank page


def test_unknown_view_and_model_are_refused(web: str) -> None:
    for path, code in [("/api/view/nope", 404), ("/api/view/creators?model=nope", 400)]:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(web + path, timeout=20)
        assert exc.value.code == code
