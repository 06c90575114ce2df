"""The web server's API token, against the real aiohttp server on the real chDB.

The server runs in a child process (chDB allows one engine per process), built as the sink
builds it: settings from the environment, ``build_app`` and ``serve``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack import dump_dom

from ripple.broker import free_port
from ripple.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "9f2c1e7a4b8d6f30a5c2e1b7d9f4a6c8"

SERVER = """
import asyncio, json
from ripple.config import load_settings
from streams.metrics import SinkMetrics
from ripple.web import build_app, serve
from sinks.clickhouse import ClickHouse

async def main() -> None:
    settings = load_settings()
    ch = ClickHouse(settings.clickhouse_dsn)
    ch.migrate()
    app = build_app(ch, SinkMetrics(), dict, None, api_token=settings.api_token)
    runner = await serve(app, settings.web_host, settings.web_port)
    print(json.dumps({"addresses": [list(a)[:2] for a in runner.addresses]}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Server:
    url: str
    addresses: list[list[object]]
    proc: subprocess.Popen[str]

    def output(self) -> str:
        """Everything the server printed, once it has stopped."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


def start(tmp: Path, env: dict[str, str]) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")},
            "RIPPLE_CLICKHOUSE": f"chdb://{tmp / 'ch'}",
            "RIPPLE_WEB_PORT": str(port),
            **env,
        },
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("{"), line + proc.stdout.read()
    return Server(f"http://127.0.0.1:{port}", json.loads(line)["addresses"], proc)


def stop(server: Server) -> str:
    if server.proc.poll() is None:
        return server.output()
    return ""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("guarded")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")  # from a file, as a container secret would be
    server = start(tmp, {"RIPPLE_API_TOKEN_FILE": str(token_file), "RIPPLE_LOG_LEVEL": "debug"})
    yield server
    stop(server)


def call(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_server_binds_loopback_by_default(guarded: Server) -> None:
    assert load_settings({}).web_host == "127.0.0.1"
    assert {str(a[0]) for a in guarded.addresses} == {"127.0.0.1"}


@pytest.mark.parametrize("path", ["/api/totals", "/api/leaderboard", "/api/chains", "/api/view/creators"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-token-wrong-token"),
        bearer(TOKEN[:-1]),
        bearer(TOKEN + "x"),
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-Api-Token": TOKEN},
    ],
    ids=["none", "wrong", "prefix", "longer", "no scheme", "basic", "other header"],
)
def test_api_refuses_without_the_token(guarded: Server, path: str, headers: dict[str, str]) -> None:
    status, answer, _ = call(guarded.url + path, headers)
    assert status == 401
    assert answer.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("path", ["/api/totals", "/api/leaderboard", "/api/chains?limit=3", "/api/view/pipeline"])
def test_api_answers_with_the_token(guarded: Server, path: str) -> None:
    status, _, body = call(guarded.url + path, bearer(TOKEN))
    assert status == 200, body
    json.loads(body)
    assert call(guarded.url + path, {"Authorization": f"bearer  {TOKEN} "})[0] == 200  # scheme is case-insensitive


def test_health_metrics_and_page_stay_open(guarded: Server) -> None:
    for path, kind in [("/healthz", "application/json"), ("/metrics", "text/plain"), ("/", "text/html")]:
        status, headers, _ = call(guarded.url + path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(kind)


def test_unknown_paths_need_the_token_too(guarded: Server) -> None:
    assert call(guarded.url + "/api/nothing")[0] == 401
    assert call(guarded.url + "//api/totals")[0] == 401
    assert call(guarded.url + "/api/nothing", bearer(TOKEN))[0] == 404


def test_without_a_token_setting_the_api_is_open(tmp_path: Path) -> None:
    server = start(tmp_path, {})
    try:
        assert call(server.url + "/api/totals")[0] == 200
    finally:
        stop(server)


def test_the_token_never_reaches_the_output(guarded: Server, tmp_path: Path) -> None:
    for _ in range(3):
        call(guarded.url + "/api/totals", bearer(TOKEN))
        call(guarded.url + "/api/totals", bearer(TOKEN + "x"))
        call(f"{guarded.url}/?token={TOKEN}")
    output = stop(guarded)
    assert TOKEN not in output


def dom(url: str) -> str:
    return dump_dom(url, 8000)


RENDERED = re.compile(r'<main[^>]*id="view"[^>]*data-view="creators"')


@pytest.mark.integration
def test_dashboard_page_sends_the_token_it_was_opened_with(tmp_path: Path) -> None:
    server = start(tmp_path, {"RIPPLE_API_TOKEN": TOKEN})
    try:
        page = dom(f"{server.url}/?token={TOKEN}#creators")
        assert RENDERED.search(page), "the view did not render"
        assert 'id="errors" data-count="0"' in page, re.findall(r'<div id="errors"[^>]*>([^<]*)', page)
        refused = dom(f"{server.url}/#creators")
        assert not RENDERED.search(refused)
        assert "needs its token" in refused
    finally:
        stop(server)
