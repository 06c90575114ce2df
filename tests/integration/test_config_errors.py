"""Every bad setting and every bad argument of every command stops ``ripple`` at start: exit
code 2, one line on stderr, no traceback, and never a password or token in the message.

Each case runs the real entry point (``python -m ripple``) in a subprocess. ``{tmp}`` in an
argument or a variable is a fresh temporary folder; ``{file}`` a regular file in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ripple.config import SECURITY_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55word-xyz"
TOKEN = "t0ken-" + "k" * 20
SASL = {
    "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "RIPPLE_KAFKA_SASL_USERNAME": "ripple",
    "RIPPLE_KAFKA_SASL_PASSWORD": SECRET,
}
#: a free loopback port nothing listens on is not needed: every case fails before any connection
BROKER = {"RIPPLE_BOOTSTRAP": "127.0.0.1:9"}


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    needle: str = ""  # part of the one line


CASES: dict[str, Case] = {
    # -- environment: numbers ---------------------------------------------------------------
    "partitions not a number": Case(("up",), {"RIPPLE_PARTITIONS": "eight"}, "RIPPLE_PARTITIONS"),
    "partitions zero": Case(("up",), {"RIPPLE_PARTITIONS": "0"}, "partitions must be positive"),
    "partitions too many": Case(("up",), {"RIPPLE_PARTITIONS": "5000"}, "at most 1024"),
    "web port not a number": Case(("up",), {"RIPPLE_WEB_PORT": "http"}, "RIPPLE_WEB_PORT"),
    "web port out of range": Case(("worker",), {**BROKER, "RIPPLE_WEB_PORT": "70000"}, "web port"),
    "web port negative": Case(("sink",), {**BROKER, "RIPPLE_WEB_PORT": "-1"}, "web port"),
    "click window zero": Case(("up",), {"RIPPLE_CLICK_WINDOW_MS": "0"}, "click_window_ms"),
    "click window float": Case(("up",), {"RIPPLE_CLICK_WINDOW_MS": "1e3"}, "not an integer"),
    "click window huge": Case(("up",), {"RIPPLE_CLICK_WINDOW_MS": "9" * 30}, "out of range"),
    "view window negative": Case(("up",), {"RIPPLE_VIEW_WINDOW_MS": "-5"}, "view_window_ms"),
    "lateness negative": Case(("up",), {"RIPPLE_MAX_LATENESS_MS": "-1"}, "max_lateness_ms"),
    "future negative": Case(("up",), {"RIPPLE_MAX_FUTURE_MS": "-1"}, "max_future_ms"),
    "touches zero": Case(("up",), {"RIPPLE_MAX_TOUCHES_PER_VISITOR": "0"}, "max_touches_per_visitor"),
    "half life zero": Case(("up",), {"RIPPLE_HALF_LIFE_MS": "0"}, "half_life_ms"),
    "worker batch zero": Case(("up",), {"RIPPLE_WORKER_BATCH": "0"}, "worker_batch"),
    "worker batch ms text": Case(("up",), {"RIPPLE_WORKER_BATCH_MS": "fast"}, "RIPPLE_WORKER_BATCH_MS"),
    "sink rows zero": Case(("up",), {"RIPPLE_SINK_BATCH_ROWS": "0"}, "sink_batch_rows"),
    "sink ms negative": Case(("up",), {"RIPPLE_SINK_BATCH_MS": "-1"}, "sink_batch_ms"),
    # -- environment: choices, hosts, paths ------------------------------------------------
    "policy unknown": Case(("up",), {"RIPPLE_POLICY": "loudest_wins"}, "policy must be one of"),
    "model unknown": Case(("up",), {"RIPPLE_COMMISSION_MODEL": "vibes"}, "commission model"),
    "log level unknown": Case(("up",), {"RIPPLE_LOG_LEVEL": "loud"}, "log level"),
    "web host bad": Case(("up",), {"RIPPLE_WEB_HOST": "not a host"}, "RIPPLE_WEB_HOST"),
    # every creator's figures to anyone who can reach the port: a token or loopback
    "open API, sink": Case(("sink",), {**BROKER, "RIPPLE_WEB_HOST": "0.0.0.0"}, "set RIPPLE_API_TOKEN"),
    "open API, up": Case(("up",), {"RIPPLE_WEB_HOST": "::"}, "its API on :: would be open"),
    "open API, a public address": Case(("sink",), {**BROKER, "RIPPLE_WEB_HOST": "192.0.2.10"}, "RIPPLE_API_TOKEN"),
    "bootstrap no port": Case(("worker",), {"RIPPLE_BOOTSTRAP": "kafka"}, "HOST:PORT"),
    "bootstrap bad host": Case(("worker",), {"RIPPLE_BOOTSTRAP": "bad host:9092"}, "HOST:PORT"),
    "bootstrap port zero": Case(("sink",), {"RIPPLE_BOOTSTRAP": "kafka:0"}, "HOST:PORT"),
    "data dir is a file": Case(("up",), {"RIPPLE_DATA_DIR": "{file}"}, "not a directory"),
    "fraud rules missing": Case(("up",), {"RIPPLE_FRAUD_RULES": "{tmp}/none.json"}, "cannot read"),
    "fraud rules a folder": Case(("up",), {"RIPPLE_FRAUD_RULES": "{tmp}"}, "cannot read"),
    "fraud rules not json": Case(("up",), {"RIPPLE_FRAUD_RULES": "README.md"}, "not JSON"),
    "fraud rules binary": Case(("up",), {"RIPPLE_FRAUD_RULES": "{binary}"}, "not UTF-8"),
    "fraud rules a list": Case(("up",), {"RIPPLE_FRAUD_RULES": "{list}"}, "expected a JSON object"),
    # -- environment: ClickHouse DSN (the password never shows) -------------------------------
    "dsn scheme": Case(("migrate",), {"RIPPLE_CLICKHOUSE": f"mysql://u:{SECRET}@h"}, "chdb://, http://"),
    "dsn no host": Case(("migrate",), {"RIPPLE_CLICKHOUSE": "http://"}, "no host"),
    "dsn bad port": Case(("migrate",), {"RIPPLE_CLICKHOUSE": f"http://u:{SECRET}@h:port"}, "not a valid URL"),
    "dsn port range": Case(("migrate",), {"RIPPLE_CLICKHOUSE": f"https://u:{SECRET}@h:99999"}, "not a valid URL"),
    "dsn no verify": Case(("migrate",), {"RIPPLE_CLICKHOUSE": "https://h:8443/?verify=false"}, "verify=false"),
    "dsn secure flag": Case(("migrate",), {"RIPPLE_CLICKHOUSE": "http://h:8123/?secure=true"}, "scheme chooses"),
    "dsn chdb empty": Case(("migrate",), {"RIPPLE_CLICKHOUSE": "chdb://"}, "needs a path"),
    "ch ca without https": Case(
        ("migrate",), {"RIPPLE_CLICKHOUSE": "http://h:8123", "RIPPLE_CLICKHOUSE_CA_FILE": "{file}"}, "https://"
    ),
    "ch ca missing": Case(
        ("migrate",),
        {"RIPPLE_CLICKHOUSE": "https://h:8443", "RIPPLE_CLICKHOUSE_CA_FILE": "{tmp}/none.pem"},
        "not a file",
    ),
    "ch ca not pem": Case(
        ("migrate",), {"RIPPLE_CLICKHOUSE": "https://h:8443", "RIPPLE_CLICKHOUSE_CA_FILE": "README.md"}, "cannot load"
    ),
    # -- environment: API token -----------------------------------------------------------
    "token short": Case(("up",), {"RIPPLE_API_TOKEN": "s3cr3t"}, "at least 16"),
    "token with space": Case(("up",), {"RIPPLE_API_TOKEN": SECRET + " more"}, "without spaces"),
    "token and file": Case(("up",), {"RIPPLE_API_TOKEN": TOKEN, "RIPPLE_API_TOKEN_FILE": "{file}"}, "not both"),
    "token file missing": Case(("up",), {"RIPPLE_API_TOKEN_FILE": "{tmp}/none"}, "cannot read"),
    "token file empty": Case(("up",), {"RIPPLE_API_TOKEN_FILE": "{empty}"}, "is empty"),
    "token file lines": Case(("up",), {"RIPPLE_API_TOKEN_FILE": "{two_lines}"}, "one line"),
    # -- environment: Kafka security ------------------------------------------------------
    "protocol unknown": Case(("worker",), {**BROKER, "RIPPLE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of"),
    "sasl no user": Case(
        ("worker",), {**BROKER, **SASL, "RIPPLE_KAFKA_SASL_USERNAME": ""}, "needs RIPPLE_KAFKA_SASL_USERNAME"
    ),
    "sasl no password": Case(
        ("sink",), {**BROKER, **SASL, "RIPPLE_KAFKA_SASL_PASSWORD": ""}, "needs RIPPLE_KAFKA_SASL_PASSWORD"
    ),
    "sasl mechanism unknown": Case(
        ("worker",), {**BROKER, **SASL, "RIPPLE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "RIPPLE_KAFKA_SASL_MECHANISM"
    ),
    "user without sasl": Case(
        ("worker",), {**BROKER, "RIPPLE_KAFKA_SASL_USERNAME": "ripple"}, "use SASL_PLAINTEXT or SASL_SSL"
    ),
    "password without sasl": Case(
        ("simulate", "--out", "{tmp}/out"),
        {**BROKER, "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SSL", "RIPPLE_KAFKA_SASL_PASSWORD": SECRET},
        "use SASL_PLAINTEXT or SASL_SSL",
    ),
    "password file and value": Case(
        ("worker",), {**BROKER, **SASL, "RIPPLE_KAFKA_SASL_PASSWORD_FILE": "{file}"}, "not both"
    ),
    "password file missing": Case(
        ("worker",),
        {**BROKER, **SASL, "RIPPLE_KAFKA_SASL_PASSWORD": "", "RIPPLE_KAFKA_SASL_PASSWORD_FILE": "{tmp}/none"},
        "cannot read",
    ),
    "ca without tls": Case(("sink",), {**BROKER, "RIPPLE_KAFKA_SSL_CA_FILE": "{file}"}, "use SSL or SASL_SSL"),
    "ca missing": Case(
        ("sink",),
        {**BROKER, "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SSL", "RIPPLE_KAFKA_SSL_CA_FILE": "{tmp}/ca.pem"},
        "not a file",
    ),
    "ca not pem": Case(
        ("worker",), {**BROKER, **SASL, "RIPPLE_KAFKA_SSL_CA_FILE": "README.md"}, "RIPPLE_KAFKA_SSL_CA_FILE"
    ),
    "security on embedded broker": Case(("up",), {"RIPPLE_KAFKA_SECURITY_PROTOCOL": "SSL"}, "external broker"),
    # -- up --------------------------------------------------------------------------------
    "up web port": Case(("up", "--web-port", "99999"), {}, "99999"),
    "up web port text": Case(("up", "--web-port", "eighty"), {}, "not a port number"),
    "up bootstrap": Case(("up", "--bootstrap", "nohostport"), {}, "HOST:PORT"),
    "up clickhouse": Case(("up", "--clickhouse", f"ftp://u:{SECRET}@h"), {}, "chdb://"),
    "up partitions": Case(("up", "--partitions", "x"), {}, "invalid int value"),
    "up log level": Case(("up", "--log-level", "loud"), {}, "invalid choice"),
    "up demo rate": Case(("up", "--demo-rate", "-1"), {}, "negative"),
    "up demo rate nan": Case(("up", "--demo-rate", "nan"), {}, "finite"),
    "up data dir file": Case(("up", "--data-dir", "{file}"), {}, "not a directory"),
    "up unknown flag": Case(("up", "--turbo"), {}, "unrecognized arguments"),
    # -- worker and sink ----------------------------------------------------------------------
    "worker no bootstrap": Case(("worker",), {}, "--bootstrap"),
    "worker bootstrap port": Case(("worker", "--bootstrap", "localhost:abc"), {}, "HOST:PORT"),
    "worker no clickhouse flag": Case(("worker", "--clickhouse", "chdb://x"), BROKER, "unrecognized arguments"),
    "worker web port": Case(("worker", "--web-port", "-3"), BROKER, "not between 0 and 65535"),
    "sink no bootstrap": Case(("sink",), {}, "--bootstrap"),
    "sink clickhouse": Case(("sink", "--clickhouse", "mysql://x"), BROKER, "chdb://"),
    "sink partitions": Case(("sink", "--partitions", "0"), BROKER, "partitions"),
    # -- collect ---------------------------------------------------------------------------
    "collect no bootstrap": Case(("collect",), {}, "--bootstrap"),
    "collect port flag": Case(("collect", "--port", "99999"), BROKER, "99999"),
    "collect port text": Case(("collect", "--port", "http"), BROKER, "not a port number"),
    "collect bootstrap": Case(("collect", "--bootstrap", "nohostport"), {}, "HOST:PORT"),
    "collector port env": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_PORT": "70000"}, "collector port"),
    "collector port text": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_PORT": "x"}, "RIPPLE_COLLECTOR_PORT"),
    "collector host": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_HOST": "a host"}, "RIPPLE_COLLECTOR_HOST"),
    "collector salt short": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_SALT": "s3cr3t"}, "at least 16"),
    "collector salt space": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_SALT": SECRET + " more"}, "without spaces"),
    "collector salt and file": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_SALT": TOKEN, "RIPPLE_COLLECTOR_SALT_FILE": "{file}"}, "not both"
    ),
    "collector salt file missing": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_SALT_FILE": "{tmp}/none"}, "cannot read"
    ),
    "collector salt file lines": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_SALT_FILE": "{two_lines}"}, "one line"
    ),
    "collector origins": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_ORIGINS": "shop.example"}, "RIPPLE_COLLECTOR_ORIGINS"
    ),
    "collector origin path": Case(
        ("up",), {"RIPPLE_COLLECTOR_ORIGINS": "https://shop.example/cart"}, "RIPPLE_COLLECTOR_ORIGINS"
    ),
    "collector landing url": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_LANDING_URL": "javascript:alert(1)"}, "RIPPLE_COLLECTOR_LANDING_URL"
    ),
    "collector landing relative": Case(
        ("up",), {"RIPPLE_COLLECTOR_LANDING_URL": "/home"}, "RIPPLE_COLLECTOR_LANDING_URL"
    ),
    "collector ref param": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_REF_PARAM": "a b"}, "RIPPLE_COLLECTOR_REF_PARAM"
    ),
    "collector rate negative": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_RATE": "-1"}, "RIPPLE_COLLECTOR_RATE"),
    "collector burst zero": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_BURST": "0"}, "RIPPLE_COLLECTOR_BURST"),
    "collector body tiny": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_MAX_BODY_BYTES": "10"}, "RIPPLE_COLLECTOR_MAX_BODY_BYTES"
    ),
    "collector events zero": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_MAX_EVENTS": "0"}, "RIPPLE_COLLECTOR_MAX_EVENTS"
    ),
    "collector events over": Case(("up",), {"RIPPLE_COLLECTOR_MAX_EVENTS": "20000"}, "RIPPLE_COLLECTOR_MAX_EVENTS"),
    "collector linger": Case(
        ("collect",), {**BROKER, "RIPPLE_COLLECTOR_LINGER_MS": "5000"}, "RIPPLE_COLLECTOR_LINGER_MS"
    ),
    "collector proxies": Case(("collect",), {**BROKER, "RIPPLE_COLLECTOR_PROXIES": "-1"}, "RIPPLE_COLLECTOR_PROXIES"),
    "collect data dir file": Case(("collect", "--data-dir", "{file}"), BROKER, "not a directory"),
    "up collector port": Case(("up", "--collector-port", "99999"), {}, "99999"),
    # -- simulate ----------------------------------------------------------------------------
    "sim views negative": Case(("simulate", "--views", "-5", "--out", "{tmp}"), {}, "negative"),
    "sim creators text": Case(("simulate", "--creators", "many", "--out", "{tmp}"), {}, "not a number"),
    "sim seed text": Case(("simulate", "--seed", "x", "--out", "{tmp}"), {}, "invalid int value"),
    "sim start text": Case(("simulate", "--start", "yesterday", "--out", "{tmp}"), {}, "ISO 8601"),
    "sim start 1900": Case(("simulate", "--start", "1900-01-01", "--out", "{tmp}"), {}, "before 1970"),
    "sim days zero": Case(("simulate", "--days", "0", "--out", "{tmp}"), {}, "above 0"),
    "sim days inf": Case(("simulate", "--days", "inf", "--out", "{tmp}"), {}, "finite"),
    "sim rate nan": Case(("simulate", "--rate", "nan", "--out", "{tmp}"), {}, "finite"),
    "sim batch text": Case(("simulate", "--batch", "big", "--out", "{tmp}"), {}, "not a number"),
    "sim malformed share": Case(("simulate", "--malformed", "2", "--out", "{tmp}"), {}, "between 0 and 1"),
    "sim chain k text": Case(("simulate", "--chain-k", "super=lots", "--out", "{tmp}"), {}, "not a number"),
    "sim chain k class": Case(("simulate", "--chain-k", "mega=2", "--out", "{tmp}"), {}, "expected sub=K"),
    "sim chain k range": Case(("simulate", "--chain-k", "sub=11", "--out", "{tmp}"), {}, "between 0 and 10"),
    "sim inject": Case(("simulate", "--inject", "phishing", "--out", "{tmp}"), {}, "unknown fraud type"),
    "sim inject count": Case(("simulate", "--inject-count", "-1", "--out", "{tmp}"), {}, "negative"),
    "sim out is a file": Case(("simulate", "--out", "{file}"), {}, "not a directory"),
    "sim bootstrap": Case(("simulate", "--bootstrap", "kafka"), {}, "HOST:PORT"),
    "sim nothing to do": Case(("simulate", "--data-dir", "{tmp}"), {}, "nothing to do"),
    # -- evaluate ------------------------------------------------------------------------------
    "eval seeds text": Case(("evaluate", "--seeds", "one"), {}, "comma list of integers"),
    "eval seeds empty": Case(("evaluate", "--seeds", ","), {}, "at least one seed"),
    "eval seeds twice": Case(("evaluate", "--seeds", "1,1"), {}, "seeds must differ"),
    "eval seeds overlap": Case(("evaluate", "--seeds", "1,2", "--honest-seeds", "2,3"), {}, "must differ"),
    "eval inject": Case(("evaluate", "--inject", "phishing"), {}, "unknown fraud type"),
    "eval creators zero": Case(("evaluate", "--creators", "0"), {}, "at least 1"),
    "eval views zero": Case(("evaluate", "--views", "0"), {}, "at least 1"),
    "eval rate negative": Case(("evaluate", "--rate", "-1"), {}, "negative"),
    "eval json folder missing": Case(("evaluate", "--json", "{tmp}/no/report.json"), {}, "does not exist"),
    "eval json is a folder": Case(("evaluate", "--json", "{tmp}"), {}, "is a directory"),
    "eval data dir file": Case(("evaluate", "--data-dir", "{file}"), {}, "not a directory"),
    # -- bench ---------------------------------------------------------------------------------
    "bench input batch": Case(("bench", "--input-batch", "0"), {}, "at least 1"),
    "bench views text": Case(("bench", "--views", "many"), {}, "not a number"),
    "bench views zero": Case(("bench", "--views", "0"), {}, "at least 1"),
    "bench partitions": Case(("bench", "--partitions", "0"), {}, "partitions"),
    "bench json folder missing": Case(("bench", "--json", "{tmp}/no/bench.json"), {}, "does not exist"),
    "bench profile is a file": Case(("bench", "--profile", "{file}"), {}, "not a directory"),
    # -- migrate and the command itself ---------------------------------------------------------
    "migrate clickhouse": Case(("migrate", "--clickhouse", "clickhouse://h"), {}, "chdb://"),
    "migrate data dir file": Case(("migrate", "--data-dir", "{file}"), {}, "not a directory"),
    "no command": Case((), {}, "required"),
    "unknown command": Case(("nonsense",), {}, "invalid choice"),
}


def _fill(value: str, files: dict[str, Path]) -> str:
    for name, path in files.items():
        value = value.replace("{" + name + "}", str(path))
    return value


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_exits_2_with_one_line(case: Case, tmp_path: Path) -> None:
    files = {
        "tmp": tmp_path,
        "file": tmp_path / "a-file",
        "empty": tmp_path / "empty",
        "two_lines": tmp_path / "two-lines",
        "binary": tmp_path / "binary.json",
        "list": tmp_path / "list.json",
    }
    files["file"].write_text(TOKEN + "\n")
    files["empty"].write_text("\n")
    files["two_lines"].write_text(TOKEN + "\n" + TOKEN + "\n")
    files["binary"].write_bytes(bytes(range(128, 256)))
    files["list"].write_text("[1, 2]")
    # only this case's settings: none inherited from the shell running the tests
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
    env.update({k: _fill(v, files) for k, v in case.env.items()})
    result = subprocess.run(
        [sys.executable, "-m", "ripple", *(_fill(a, files) for a in case.args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert case.needle in lines[0]
    assert SECRET not in result.stderr + result.stdout
    assert TOKEN not in result.stderr + result.stdout


def test_security_variables_are_the_ones_read() -> None:
    """evaluate and bench drop these from their children; each is a documented setting."""
    security = (ROOT / "docs" / "security.md").read_text()
    for name in SECURITY_VARIABLES:
        assert name in security, f"{name} is not documented in docs/security.md"


def test_only_loopback_binds_serve_the_api_without_a_token() -> None:
    from ripple.checks import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.10", "10.0.0.1", "sink.internal", "fe80::1"]))
