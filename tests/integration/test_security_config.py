"""Kafka and ClickHouse security settings: the one mapping onto every client, TLS that really
happens and verifies, and secrets that never show in a repr, a message or a log.

There is no secured Kafka broker here: the TLS tests run the real clients (librdkafka,
aiokafka, clickhouse-connect) against a loopback TLS server with a certificate from a test
CA, and check the handshake and the first request on the server's side. SASL is checked
through the mapping only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types.auth import CredentialsT

from ripple.broker import EmbeddedBroker
from ripple.config import load_settings
from sinks.clickhouse import redact_dsn
from streams.kafka import KafkaSecurity, Secret

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pa55-w0rd-never-shown"


@dataclass(frozen=True)
class Case:
    env: dict[str, str]
    confluent: dict[str, Any]
    aiokafka: dict[str, Any]  # without ssl_context, checked apart
    tls: bool
    faust: type[CredentialsT] | None


SASL = {"RIPPLE_KAFKA_SASL_USERNAME": "ripple", "RIPPLE_KAFKA_SASL_PASSWORD": PASSWORD}
VERIFY = {"enable.ssl.certificate.verification": True, "ssl.endpoint.identification.algorithm": "https"}

MAPPINGS = {
    # nothing set: plain Kafka, as the embedded broker speaks it
    "default": Case({}, {"security.protocol": "plaintext"}, {"security_protocol": "PLAINTEXT"}, False, None),
    # TLS against the system's CAs, names checked
    "ssl": Case(
        {"RIPPLE_KAFKA_SECURITY_PROTOCOL": "SSL"},
        {"security.protocol": "ssl", **VERIFY},
        {"security_protocol": "SSL"},
        True,
        faust.SSLCredentials,
    ),
    # lower case is accepted; the mechanism defaults to PLAIN
    "sasl plaintext": Case(
        {"RIPPLE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", **SASL},
        {"security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN", "sasl.username": "ripple",
         "sasl.password": PASSWORD},
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "ripple",
         "sasl_plain_password": PASSWORD},
        False,
        faust.SASLCredentials,
    ),
    # SCRAM over TLS with a CA file
    "sasl ssl scram": Case(
        {"RIPPLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RIPPLE_KAFKA_SASL_MECHANISM": "scram-sha-512",
         "RIPPLE_KAFKA_SSL_CA_FILE": "{ca}", **SASL},
        {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ripple",
         "sasl.password": PASSWORD, **VERIFY, "ssl.ca.location": "{ca}"},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "ripple",
         "sasl_plain_password": PASSWORD},
        True,
        faust.SASLCredentials,
    ),
}  # fmt: skip


# -- certificates -------------------------------------------------------------------------------
@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates: apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=Ripple test {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem", cwd=d)  # fmt: skip
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other.pem")


def _fill(value: str, pki: Pki) -> str:
    return value.replace("{ca}", str(pki.ca))


# -- the mapping -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(MAPPINGS.values()), ids=list(MAPPINGS))
def test_one_mapping_for_every_client(case: Case, pki: Pki) -> None:
    settings = load_settings({k: _fill(v, pki) for k, v in case.env.items()})
    kafka = settings.kafka
    assert kafka.confluent() == {k: _fill(v, pki) if isinstance(v, str) else v for k, v in case.confluent.items()}
    aio = kafka.aiokafka()
    context = aio.pop("ssl_context", None)
    assert aio == case.aiokafka
    credentials = kafka.faust_credentials()
    if case.faust is None:
        assert credentials is None
    else:
        assert isinstance(credentials, case.faust)
        assert credentials.protocol.value == settings.kafka_security_protocol
    faust_context = getattr(credentials, "context", None) or getattr(credentials, "ssl_context", None)
    for ctx in (context, faust_context):
        if not case.tls:
            assert ctx is None
            continue
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_the_worker_app_gets_the_credentials() -> None:
    # in a child process: create_app installs process-wide fixes to Faust
    code = """
import json
from ripple.config import load_settings
from streams.app import create_app
app = create_app(load_settings())
c = app.conf.broker_credentials
print(json.dumps({"type": type(c).__name__, "user": c.username, "password": c.password,
                  "mechanism": c.mechanism.value, "protocol": c.protocol.value, "repr": repr(c),
                  "tables": app.conf.web_tables_enabled, "router": app.conf.web_router_enabled}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
    env.update(
        {
            "RIPPLE_BOOTSTRAP": "127.0.0.1:9",
            "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "RIPPLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            **SASL,
        }
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["type"] == "SASLCredentials"
    assert (found["user"], found["password"]) == ("ripple", PASSWORD)
    assert (found["mechanism"], found["protocol"]) == ("SCRAM-SHA-256", "SASL_PLAINTEXT")
    assert PASSWORD not in found["repr"]
    assert not found["tables"] and not found["router"]  # no state or topology over HTTP


# -- secrets in reprs and messages ------------------------------------------------------------------
def test_secrets_hide_in_reprs(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-" + "z" * 28 + "\n")
    settings = load_settings(
        {
            "RIPPLE_BOOTSTRAP": "kafka:9092",
            "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            **SASL,
            "RIPPLE_API_TOKEN_FILE": str(token_file),
            "RIPPLE_CLICKHOUSE": f"https://ripple:{PASSWORD}@clickhouse:8443/ripple",
        }
    )
    assert settings.api_token is not None and settings.api_token.get() == "tok-" + "z" * 28
    for text in (repr(settings), str(settings), repr(settings.kafka), settings.clickhouse_display):
        assert PASSWORD not in text and "z" * 28 not in text, text
    assert settings.clickhouse_display == "https://ripple:***@clickhouse:8443/ripple"
    assert repr(Secret("x" * 20)) == "Secret('**********')"
    assert Secret("abc").matches("abc") and not Secret("abc").matches("abd")
    assert redact_dsn("http://h:8123") == "http://h:8123"


@pytest.mark.parametrize("command", ["worker", "sink"])
def test_refused_credentials_stop_at_once_and_never_print_a_secret(command: str, tmp_path: Path) -> None:
    """The real commands against a broker that accepts no SASL login: librdkafka logs the failed
    handshake, the command stops with exit code 1 and one line of its own, and neither the Kafka
    password nor the ClickHouse password nor the API token shows anywhere."""
    token = "api-" + "t" * 28
    broker = EmbeddedBroker(tmp_path / "broker.log")
    broker.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
        env.update(
            {
                "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                **SASL,
                "RIPPLE_CLICKHOUSE": f"http://ripple:{PASSWORD}x@127.0.0.1:9",
                "RIPPLE_API_TOKEN": token,
                "RIPPLE_LOG_LEVEL": "debug",
                "RIPPLE_DATA_DIR": str(tmp_path / "data"),
            }
        )
        result = subprocess.run(
            [sys.executable, "-m", "ripple", command, "--bootstrap", broker.bootstrap],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    finally:
        broker.stop()
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith(f"ripple {command}: ")]
    assert len(ours) == 1 and "refused the connection" in ours[0] and "SASL" in ours[0], result.stderr[-2000:]
    for secret in (PASSWORD, token):
        assert secret not in result.stdout + result.stderr


# -- TLS on the wire -------------------------------------------------------------------------
@dataclass
class TlsServer:
    """Accepts TLS connections with the test certificate; records each handshake's outcome and
    the first bytes the client sent over it."""

    pki: Pki
    port: int = 0
    handshakes: list[str] = field(default_factory=list)  # "ok" or the error
    first_bytes: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> Iterator[TlsServer]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.cert, self.pki.key)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.settimeout(5)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        self.handshakes.append("ok")
                        self.first_bytes.append(tls.recv(64))
                except (ssl.SSLError, OSError) as exc:
                    self.handshakes.append(str(exc))
                finally:
                    conn.close()
                self.done.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(5)
            listener.close()

    def wait(self) -> None:
        assert self.done.wait(20), "no client connected"


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[TlsServer]:
    yield from TlsServer(pki).serve()


def _kafka_api_key(first: bytes) -> int:
    """A Kafka request starts with its size (int32) and its API key (int16)."""
    return int.from_bytes(first[4:6], "big")


@pytest.mark.parametrize("client", ["confluent", "aiokafka"])
def test_kafka_clients_speak_tls_and_verify_the_broker(client: str, tls_server: TlsServer, pki: Pki) -> None:
    security = KafkaSecurity(protocol="SSL", ssl_ca_file=pki.ca)
    bootstrap = f"127.0.0.1:{tls_server.port}"
    if client == "confluent":
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap, **security.confluent(), "log_level": 0})
        with pytest.raises(Exception):  # noqa: B017 - the server speaks TLS but no Kafka
            admin.list_topics(timeout=3)
    else:
        from aiokafka import AIOKafkaConsumer

        async def connect() -> None:
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **security.aiokafka())
            try:
                await consumer.start()
            finally:
                await consumer.stop()

        with pytest.raises(Exception):  # noqa: B017
            asyncio.run(connect())
    tls_server.wait()
    assert tls_server.handshakes[0] == "ok", tls_server.handshakes
    assert _kafka_api_key(tls_server.first_bytes[0]) == 18  # ApiVersions, over TLS


def test_kafka_tls_refuses_a_broker_its_ca_did_not_sign(tls_server: TlsServer, pki: Pki) -> None:
    from confluent_kafka.admin import AdminClient

    security = KafkaSecurity(protocol="SSL", ssl_ca_file=pki.other_ca)
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{tls_server.port}", **security.confluent(), "log_level": 0})
    with pytest.raises(Exception):  # noqa: B017
        admin.list_topics(timeout=3)
    tls_server.wait()
    assert tls_server.handshakes[0] != "ok"
    assert not tls_server.first_bytes


def _clickhouse_connect(dsn: str, ca: Path | None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from pathlib import Path; from sinks.clickhouse import connect; connect(sys.argv[1], "
    code += "Path(sys.argv[2]) if sys.argv[2] else None)"
    return subprocess.run(
        [sys.executable, "-c", code, dsn, str(ca or "")], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_clickhouse_https_means_tls_on_any_port(tls_server: TlsServer, pki: Pki) -> None:
    """clickhouse-connect alone takes TLS from the port (443, 8443): ``https://`` on another
    port must still be TLS, verified against the CA file, and carry the DSN's user."""
    result = _clickhouse_connect(f"https://ripple:{PASSWORD}@127.0.0.1:{tls_server.port}", pki.ca)
    assert result.returncode != 0  # no ClickHouse behind the TLS
    assert PASSWORD not in result.stderr
    tls_server.wait()
    assert tls_server.handshakes[0] == "ok", tls_server.handshakes
    assert tls_server.first_bytes[0].split(b" ")[0] in (b"GET", b"POST")  # HTTP, inside TLS


def test_clickhouse_https_refuses_an_unknown_ca(tls_server: TlsServer, pki: Pki) -> None:
    result = _clickhouse_connect(f"https://127.0.0.1:{tls_server.port}", pki.other_ca)
    assert result.returncode != 0
    tls_server.wait()
    assert tls_server.handshakes[0] != "ok"
    assert not tls_server.first_bytes
