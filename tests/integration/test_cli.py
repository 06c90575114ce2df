"""Bad settings and arguments: a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ripple.checks import ConfigError
from ripple.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def ripple(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ripple", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["up", "--web-port", "99999"], {}, "99999"),
        (["up", "--bootstrap", "nohostport"], {}, "HOST:PORT"),
        (["worker", "--bootstrap", "localhost:abc"], {}, "HOST:PORT"),
        (["sink", "--clickhouse", "mysql://x"], {"RIPPLE_BOOTSTRAP": "127.0.0.1:9"}, "chdb://"),
        (["up", "--partitions", "0"], {}, "partitions"),
        (["up", "--log-level", "loud"], {}, "log-level"),
        (["simulate", "--views", "-5", "--out", "/tmp/x"], {}, "negative"),
        (["simulate", "--start", "yesterday", "--out", "/tmp/x"], {}, "ISO 8601"),
        (["simulate", "--chain-k", "super=lots", "--out", "/tmp/x"], {}, "not a number"),
        (["simulate", "--chain-k", "mega=2", "--out", "/tmp/x"], {}, "expected sub=K"),
        (["up"], {"RIPPLE_PARTITIONS": "eight"}, "RIPPLE_PARTITIONS"),
        (["worker", "--bootstrap", "127.0.0.1:9"], {"RIPPLE_WEB_PORT": "70000"}, "web port"),
        (["up"], {"RIPPLE_MAX_LATENESS_MS": "-1"}, "max_lateness_ms"),
        (["worker"], {}, "--bootstrap"),
        (["evaluate", "--seeds", "one"], {}, "comma list of integers"),
        (["evaluate", "--seeds", "1,1"], {}, "seeds must differ"),
        (["evaluate", "--seeds", "1,2", "--honest-seeds", "2,3"], {}, "must differ"),
        (["evaluate", "--inject", "phishing"], {}, "unknown fraud type"),
        (["bench", "--input-batch", "0"], {}, "at least 1"),
        (["bench", "--views", "many"], {}, "not a number"),
        (["up"], {"RIPPLE_FRAUD_RULES": "/nonexistent/rules.json"}, "cannot read"),
        (["worker", "--bootstrap", "127.0.0.1:9"], {"RIPPLE_FRAUD_RULES": "README.md"}, "not JSON"),
        (["nonsense"], {}, "invalid choice"),
    ],
)
def test_invalid_input_exits_2_with_one_line(args: list[str], env: dict[str, str], needle: str) -> None:
    result = ripple(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_environment_and_flags_are_read_in_one_place(tmp_path: Path) -> None:
    s = load_settings({"RIPPLE_PARTITIONS": "4", "RIPPLE_DATA_DIR": str(tmp_path)}, web_port=9000)
    assert (s.partitions, s.data_dir, s.web_port) == (4, tmp_path, 9000)
    assert s.clickhouse_dsn == f"chdb://{(tmp_path / 'clickhouse').resolve()}"
    assert load_settings({}, partitions=2, bootstrap="a:1,b:2").bootstrap == "a:1,b:2"
    # each command has its own default web port; RIPPLE_WEB_PORT or the flag wins
    assert load_settings({}).with_web_port(6066).web_port == 6066
    assert load_settings({"RIPPLE_WEB_PORT": "9001"}).with_web_port(6066).web_port == 9001
    with pytest.raises(ConfigError):
        load_settings({"RIPPLE_CLICK_WINDOW_MS": "0"})


def test_each_process_has_its_own_static_group_member_id_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    def member(role: str, data: str, port: int) -> str:
        env = {"RIPPLE_DATA_DIR": str(tmp_path / data)}
        return load_settings(env).with_web_port(port).group_instance_id(role)

    assert member("worker", "a", 6066) == member("worker", "a", 6066)  # a restart takes its place back
    assert member("worker", "a", 6066) == member("worker", "a", 6067)  # also on another port
    ids = {member("worker", "a", 6066), member("sink", "a", 6066), member("worker", "b", 6066)}
    assert len(ids) == 3
    assert all(i.startswith(("ripple-worker-", "ripple-sink-")) and len(i) < 250 for i in ids)


def test_help_lists_the_commands() -> None:
    result = ripple("--help")
    assert result.returncode == 0
    for command in ("up", "worker", "sink", "collect", "simulate", "evaluate", "bench", "migrate"):
        assert command in result.stdout
