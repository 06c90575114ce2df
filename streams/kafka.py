"""The Kafka layer every Ripple client shares: how a client authenticates and encrypts
(:class:`KafkaSecurity`, mapped once onto confluent-kafka, aiokafka and Faust) and the
librdkafka properties of every producer (:func:`producer_config`, each client's own tuning
on top), and the grouping of records into one JSON array per topic partition
(:class:`Arrays`). The producer the worker and the collector send with is
:class:`streams.producer.Producer` (apart, so that reading settings loads no Kafka client)."""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar


class Secret:
    """A password or token. Its value only through :meth:`get`; ``repr`` and ``str`` hide it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison with ``candidate``."""
        return hmac.compare_digest(self._value.encode(), candidate.encode())

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.matches(self._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of Ripple authenticates and encrypts: the one mapping of the
    ``RIPPLE_KAFKA_*`` settings onto confluent-kafka, aiokafka and Faust."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_file: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def confluent(self) -> dict[str, Any]:
        """librdkafka properties for a confluent-kafka Producer, Consumer or AdminClient."""
        config: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            assert self.sasl_username is not None and self.sasl_password is not None
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get()
        if self.tls:
            config["enable.ssl.certificate.verification"] = True
            config["ssl.endpoint.identification.algorithm"] = "https"  # the broker's name must match
            if self.ssl_ca_file is not None:
                config["ssl.ca.location"] = str(self.ssl_ca_file)
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (the CA file, else the system's CAs), or None without TLS."""
        if not self.tls:
            return None
        cafile = str(self.ssl_ca_file) if self.ssl_ca_file is not None else None
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (consumer, producer, admin)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            assert self.sasl_username is not None and self.sasl_password is not None
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get()
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials``: SASL or SSL credentials, or None for PLAINTEXT."""
        import faust

        if self.sasl:
            assert self.sasl_username is not None and self.sasl_password is not None
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get(),
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),  # None: SASL_PLAINTEXT, else SASL_SSL
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


PLAINTEXT = KafkaSecurity()


def producer_config(
    bootstrap: str, security: KafkaSecurity = PLAINTEXT, tuning: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """librdkafka properties of every Ripple producer, with its own ``tuning`` on top:
    idempotent (a retried send is written once, in order), every replica's ack, lz4, and
    keys placed with murmur2 as the workers compute partitions (librdkafka's default,
    CRC32, would break co-partitioning)."""
    return {
        "bootstrap.servers": bootstrap,
        **security.confluent(),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        **(tuning or {}),
    }


T = TypeVar("T")
#: (topic, partition)
Place = tuple[str, int]
_ONE: Place = ("", -1)


def _nothing(_: Any) -> int:
    return 0


def json_array(values: Iterable[bytes]) -> bytes:
    """JSON values, each already serialized, as one JSON array."""
    return b"[" + b",".join(values) + b"]"


class Arrays(Generic[T]):
    """Items grouped per topic partition, in the order they come, each group cut into runs:
    one run, one message (a JSON array), as the collector, the simulator and the worker
    send events and records. A run ends before an item whose ``size`` would take it over
    ``max_bytes`` (counting ``framing`` and the ``size`` and ``overhead`` of each item in
    it), or once it holds ``max_items``; an item over the limit goes alone. 0: no limit."""

    def __init__(
        self,
        *,
        max_bytes: int = 0,
        max_items: int = 0,
        size: Callable[[T], int] = _nothing,
        overhead: Callable[[T], int] = _nothing,
        framing: int = 0,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.size = size
        self.overhead = overhead
        self.framing = framing
        self.groups: dict[Place, list[list[T]]] = {}  # its runs, the last one open
        self._bytes: dict[Place, int] = {}  # of the open run

    def add(self, place: Place, item: T) -> bool:
        """Add ``item`` to its topic partition's open run; True once that run is full
        (``max_items``), for a sender that sends a run as soon as it is."""
        runs = self.groups.get(place)
        if runs is None:
            runs = self.groups[place] = [[]]
            total = self.framing
        else:
            total = self._bytes[place]
        run, n = runs[-1], self.size(item)
        if run and ((self.max_bytes and total + n > self.max_bytes) or (self.max_items and len(run) >= self.max_items)):
            run = []
            runs.append(run)
            total = self.framing
        run.append(item)
        self._bytes[place] = total + n + self.overhead(item)
        return bool(self.max_items) and len(run) >= self.max_items

    def pop(self, place: Place) -> list[list[T]]:
        """The runs of one topic partition (none if it has no items), taken out."""
        self._bytes.pop(place, None)
        return self.groups.pop(place, [])

    def drain(self) -> Iterator[tuple[Place, list[T]]]:
        """Every run, taken out: topic partitions in the order their first item came, each
        one's runs in order."""
        groups = self.groups
        self.groups, self._bytes = {}, {}
        for place, runs in groups.items():
            for run in runs:
                yield place, run

    def split(self, items: Iterable[T]) -> list[list[T]]:
        """``items`` of one topic partition, cut into runs."""
        for item in items:
            self.add(_ONE, item)
        return self.pop(_ONE)
