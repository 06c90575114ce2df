"""Settings: one frozen object, read from the environment and the command line.

No other module reads ``os.environ``. Every option has an environment variable
``RIPPLE_<NAME>``; command-line flags override the environment. Secrets (the API token,
the Kafka SASL password) come only from the environment or from a file named by
``RIPPLE_<NAME>_FILE``, never from a flag (flags show in ``ps``), and are held as
:class:`Secret`, whose ``repr`` hides the value.

Kafka security is mapped to client options in one place, :class:`streams.kafka.KafkaSecurity`:
librdkafka properties for confluent-kafka, keyword arguments for aiokafka, credentials for
Faust. This module depends on ``streams`` (the topic list, the Kafka layer, the engine's
choices it checks), never the other way round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sinks.clickhouse import redact_dsn
from streams.events import MAX_FUTURE_MS
from streams.fraud import FraudConfigError, load_config
from streams.kafka import KafkaSecurity, Secret
from streams.models import MODELS, POLICIES

DAY_MS = 86_400_000
MINUTE_MS = 60_000

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Variables that configure how Ripple reaches an external broker or guards its API. Commands
#: that start a stack of their own on an embedded broker (``evaluate``, ``bench``) drop them
#: from their children's environment.
SECURITY_VARIABLES = (
    "RIPPLE_API_TOKEN",
    "RIPPLE_API_TOKEN_FILE",
    "RIPPLE_KAFKA_SECURITY_PROTOCOL",
    "RIPPLE_KAFKA_SASL_MECHANISM",
    "RIPPLE_KAFKA_SASL_USERNAME",
    "RIPPLE_KAFKA_SASL_PASSWORD",
    "RIPPLE_KAFKA_SASL_PASSWORD_FILE",
    "RIPPLE_KAFKA_SSL_CA_FILE",
)
#: An API token: at least this many characters, printable ASCII without spaces.
API_TOKEN_MIN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


class ConfigError(ValueError):
    """A setting has a value Ripple cannot run with. The message is one line for the user."""


@dataclass(frozen=True, repr=False)
class Settings:
    data_dir: Path = Path(".ripple")
    bootstrap: str | None = None  # None: start the embedded broker
    clickhouse: str | None = None  # None: chdb://<data_dir>/clickhouse
    clickhouse_ca_file: Path | None = None  # CA bundle for an https:// ClickHouse (default: the system's)
    web_port: int | None = None  # None: the command's own default (up 8080, worker 6066, sink 8081)
    web_host: str = "127.0.0.1"
    api_token: Secret | None = None  # when set, /api/* needs "Authorization: Bearer <token>"
    partitions: int = 8
    log_level: str = "info"
    # Kafka security (see KafkaSecurity)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None  # None: PLAIN
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    kafka_ssl_ca_file: Path | None = None
    # attribution
    click_window_ms: int = 30 * DAY_MS
    view_window_ms: int = DAY_MS
    max_lateness_ms: int = 10 * MINUTE_MS
    # an event more than this ahead of its message's broker timestamp is a dead letter
    # (worker, sink and collector alike), never a clock (SPEC §3.5)
    max_future_ms: int = MAX_FUTURE_MS
    # a task waits for an input partition with records not fetched yet until they come;
    # every max_task_idle it has the consumer fetch it again, and after 60 x max_task_idle
    # it goes on without it (0: never waits; streams.ordering)
    max_task_idle_ms: int = 2000
    max_touches_per_visitor: int = 64
    half_life_ms: int = 7 * DAY_MS
    policy: str = "code_wins"
    commission_model: str = "last_click"
    fraud_rules: Path | None = None  # None: deploy/fraud/rules.json
    # worker batching
    worker_batch: int = 500
    worker_batch_ms: int = 50
    # how long a fetch of the worker's and the sink's consumers may wait at the broker for
    # records: Kafka answers once records arrive, the embedded broker only after the wait
    fetch_wait_ms: int = 50
    # sink batching
    sink_batch_rows: int = 50_000
    sink_batch_ms: int = 500
    # the HTTP collector for storefronts (ripple collect)
    collector_port: int | None = None  # None: 8090 (ripple up: 8090, or a free port when 8090 is taken)
    collector_host: str = "127.0.0.1"
    collector_salt: Secret | None = None  # None: generated once and kept in <data_dir>/collector-salt
    collector_origins: str = ""  # comma list of allowed browser origins, or * (the collector's own always is)
    collector_landing_url: str | None = None  # where /r/{code} sends a code without landing_url, or unknown codes
    collector_ref_param: str = "ref"  # the landing-page parameter the snippet reads a referral code from
    collector_rate: int = 50  # requests per second per client address (token bucket), 0: no limit
    collector_burst: int = 200
    collector_max_body_bytes: int = 1_048_576
    collector_max_events: int = 1000
    collector_linger_ms: int = 5
    collector_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For entries are trusted
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        values = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "clickhouse" and value is not None:
                value = redact_dsn(value)
            values.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(values)})"

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse:
            return self.clickhouse
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def clickhouse_display(self) -> str:
        """The DSN without its password, for messages."""
        return redact_dsn(self.clickhouse_dsn)

    @property
    def kafka(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism or "PLAIN",
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_ca_file=self.kafka_ssl_ca_file,
        )

    @property
    def runtime_file(self) -> Path:
        return self.data_dir / "runtime.json"

    def group_instance_id(self, role: str) -> str:
        """This process's static member id in its consumer group (KIP-345): one per role,
        host and data dir, the same for every start (give each process its own data dir).
        A restarted worker or sink takes its own place back at once instead of joining
        anew, and a stop does not leave the group (its partitions move on after the session
        timeout). It also keeps the embedded broker from waiting for good on a member that
        is gone: a process stopped while it joined could leave its group waiting for that
        member's sync forever. The embedded broker never expires a static member, so one
        that leads a generation and never comes back holds its group there; Kafka expires
        it after the session timeout."""
        where = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return f"ripple-{role}-{socket.gethostname()}-{where}"

    def with_web_port(self, default: int) -> Settings:
        """This command's web port: a flag or RIPPLE_WEB_PORT, else ``default``."""
        return self if self.web_port is not None else dataclasses.replace(self, web_port=default)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_INT_FIELDS = {f.name for f in dataclasses.fields(Settings) if f.type in ("int", int, "int | None")}
_STR_FIELDS = {
    "bootstrap",
    "clickhouse",
    "web_host",
    "log_level",
    "policy",
    "commission_model",
    "kafka_sasl_username",
    "collector_host",
    "collector_origins",
    "collector_landing_url",
    "collector_ref_param",
}
_UPPER_FIELDS = {"kafka_security_protocol", "kafka_sasl_mechanism"}  # read case-insensitively
_PATH_FIELDS = {"data_dir", "fraud_rules", "kafka_ssl_ca_file", "clickhouse_ca_file"}
_SECRET_FIELDS = {"api_token", "kafka_sasl_password", "collector_salt"}
_LOG_LEVELS = ("crit", "error", "warn", "info", "debug")
#: the largest integer any setting takes (ClickHouse and Kafka store times as signed 64-bit)
_INT_MAX = 2**62


def _variable(name: str) -> str:
    return f"RIPPLE_{name.upper()}"


def _read_secret(env: Mapping[str, str], name: str) -> Secret | None:
    """``RIPPLE_<NAME>`` or the first line of the file ``RIPPLE_<NAME>_FILE`` names."""
    var = _variable(name)
    value, path = env.get(var) or None, env.get(f"{var}_FILE") or None
    if value is not None and path is not None:
        raise ConfigError(f"set {var} or {var}_FILE, not both")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{var}_FILE: cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{var}_FILE: {path} is not UTF-8 text") from None
        value = text.strip()
        if not value:
            raise ConfigError(f"{var}_FILE: {path} is empty")
        if "\n" in value:
            raise ConfigError(f"{var}_FILE: {path} must hold the secret on one line")
    return Secret(value) if value is not None else None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``RIPPLE_*`` variables, then apply non-None ``overrides``.

    Raises :class:`ConfigError` with a one-line message on any invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in _INT_FIELDS:
        raw = env.get(_variable(name))
        if raw is not None and raw.strip() != "":
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"{_variable(name)}={raw!r} is not an integer") from None
            if abs(values[name]) > _INT_MAX:
                raise ConfigError(f"{_variable(name)}={raw!r} is out of range")
    for name in _STR_FIELDS:
        raw = env.get(_variable(name))
        if raw:
            values[name] = raw
    for name in _UPPER_FIELDS:
        raw = env.get(_variable(name))
        if raw:
            values[name] = raw.strip().upper()
    for name in _PATH_FIELDS:
        raw = env.get(_variable(name))
        if raw:
            values[name] = Path(raw)
    for name in _SECRET_FIELDS:
        secret = _read_secret(env, name)
        if secret is not None:
            values[name] = secret
    for key, value in overrides.items():
        if value is not None:
            values[key] = Path(value) if key in _PATH_FIELDS else value
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    positive = (
        "partitions",
        "click_window_ms",
        "view_window_ms",
        "max_touches_per_visitor",
        "half_life_ms",
        "worker_batch",
        "worker_batch_ms",
        "sink_batch_rows",
        "sink_batch_ms",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(s, name)}")
    check_ranges(s, (("fetch_wait_ms", 1, 10_000), ("max_task_idle_ms", 0, 600_000)))
    for name in ("max_lateness_ms", "max_future_ms"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must be zero or positive, got {getattr(s, name)}")
    if s.web_port is not None and not 0 <= s.web_port <= 65535:
        raise ConfigError(f"web port must be between 0 and 65535, got {s.web_port}")
    check_host(s.web_host, "web host (RIPPLE_WEB_HOST)")
    if s.partitions > 1024:
        raise ConfigError(f"partitions must be at most 1024, got {s.partitions}")
    if s.data_dir.exists() and not s.data_dir.is_dir():
        raise ConfigError(f"data dir {s.data_dir} exists and is not a directory")
    if s.bootstrap is not None:
        check_hostport(s.bootstrap, "bootstrap")
    if s.clickhouse is not None:
        check_clickhouse_dsn(s.clickhouse)
    if s.clickhouse_ca_file is not None:
        if not s.clickhouse_dsn.startswith("https://"):
            raise ConfigError("RIPPLE_CLICKHOUSE_CA_FILE is only used with an https:// ClickHouse DSN")
        check_ca_file(s.clickhouse_ca_file, "RIPPLE_CLICKHOUSE_CA_FILE")
    if s.policy not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {s.policy!r}")
    if s.commission_model not in MODELS:
        raise ConfigError(f"commission model must be one of {', '.join(MODELS)}, got {s.commission_model!r}")
    if s.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}")
    check_secret(s.api_token, API_TOKEN_MIN_LENGTH, "RIPPLE_API_TOKEN")
    validate_kafka_security(s)
    validate_collector(s)
    try:
        load_config(s.fraud_rules) if s.fraud_rules else load_config()
    except FraudConfigError as exc:
        raise ConfigError(f"fraud rules: {exc}") from None


def check_secret(secret: Secret | None, min_length: int, name: str) -> None:
    """A token or key: long enough, printable ASCII without spaces; its value is never
    part of the message."""
    if secret is None:
        return
    value = secret.get()
    if len(value) < min_length or not _TOKEN.fullmatch(value):
        raise ConfigError(
            f"{name} must be at least {min_length} printable ASCII characters "
            "without spaces (e.g. openssl rand -hex 32)"
        )


#: a salt of the collector's ip_hash: at least this many characters
COLLECTOR_SALT_MIN_LENGTH = 16
_PARAM = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_collector(s: Settings) -> None:
    if s.collector_port is not None and not 0 <= s.collector_port <= 65535:
        raise ConfigError(f"collector port must be between 0 and 65535, got {s.collector_port}")
    check_host(s.collector_host, "collector host (RIPPLE_COLLECTOR_HOST)")
    check_secret(s.collector_salt, COLLECTOR_SALT_MIN_LENGTH, "RIPPLE_COLLECTOR_SALT")
    collector_origins(s.collector_origins)
    if s.collector_landing_url is not None:
        check_web_url(s.collector_landing_url, "RIPPLE_COLLECTOR_LANDING_URL")
    if not _PARAM.fullmatch(s.collector_ref_param):
        raise ConfigError(
            "RIPPLE_COLLECTOR_REF_PARAM must be 1 to 64 letters, digits, '_', '.' or '-', "
            f"got {s.collector_ref_param!r}"
        )
    limits = (
        ("collector_rate", 0, 1_000_000),
        ("collector_burst", 1, 1_000_000),
        ("collector_max_body_bytes", 1024, 64 * 1024 * 1024),
        ("collector_max_events", 1, 10_000),
        ("collector_linger_ms", 0, 1000),
        ("collector_proxies", 0, 10),
    )
    check_ranges(s, limits)


def check_ranges(s: Settings, limits: Iterable[tuple[str, int, int]]) -> None:
    """Each named setting between its low and high bound, inclusive."""
    for name, low, high in limits:
        value = getattr(s, name)
        if not low <= value <= high:
            raise ConfigError(f"{_variable(name)} must be between {low} and {high}, got {value}")


def collector_origins(value: str) -> tuple[str, ...]:
    """The allowlist ``https://shop.example,https://www.shop.example`` (or ``*``) as
    normalized origins; raises :class:`ConfigError` on anything that is not an origin."""
    origins = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item == "*":
            origins.append(item)
            continue
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError:
            raise ConfigError(f"RIPPLE_COLLECTOR_ORIGINS: {item!r} is not an origin (bad port?)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                f"RIPPLE_COLLECTOR_ORIGINS: {item!r} is not an origin like https://shop.example[:port] (or *)"
            )
        if parts.query or parts.fragment or parts.username is not None:
            raise ConfigError(f"RIPPLE_COLLECTOR_ORIGINS: {item!r} is not an origin like https://shop.example[:port]")
        netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
        origins.append(f"{parts.scheme}://{netloc}")
    return tuple(origins)


def check_web_url(value: str, what: str) -> None:
    """An absolute http(s) URL with a host."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a valid URL (bad port?)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an absolute http:// or https:// URL, got {value!r}")


def validate_kafka_security(s: Settings) -> None:
    protocol = s.kafka_security_protocol
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(
            f"RIPPLE_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}, got {protocol!r}"
        )
    sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    if s.kafka_sasl_mechanism is not None and s.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
        raise ConfigError(
            f"RIPPLE_KAFKA_SASL_MECHANISM must be one of {', '.join(KAFKA_SASL_MECHANISMS)}, "
            f"got {s.kafka_sasl_mechanism!r}"
        )
    if sasl:
        if not s.kafka_sasl_username:
            raise ConfigError(f"RIPPLE_KAFKA_SECURITY_PROTOCOL={protocol} needs RIPPLE_KAFKA_SASL_USERNAME")
        if s.kafka_sasl_password is None:
            raise ConfigError(
                f"RIPPLE_KAFKA_SECURITY_PROTOCOL={protocol} needs RIPPLE_KAFKA_SASL_PASSWORD "
                "(or RIPPLE_KAFKA_SASL_PASSWORD_FILE)"
            )
    else:
        for name, value in (
            ("RIPPLE_KAFKA_SASL_MECHANISM", s.kafka_sasl_mechanism),
            ("RIPPLE_KAFKA_SASL_USERNAME", s.kafka_sasl_username),
            ("RIPPLE_KAFKA_SASL_PASSWORD", s.kafka_sasl_password),
        ):
            if value is not None:
                raise ConfigError(
                    f"{name} is set but RIPPLE_KAFKA_SECURITY_PROTOCOL is {protocol}: use SASL_PLAINTEXT or SASL_SSL"
                )
    if s.kafka_ssl_ca_file is not None:
        if protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(
                f"RIPPLE_KAFKA_SSL_CA_FILE is set but RIPPLE_KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
            )
        check_ca_file(s.kafka_ssl_ca_file, "RIPPLE_KAFKA_SSL_CA_FILE")


def check_ca_file(path: Path, what: str) -> None:
    """A readable PEM bundle of CA certificates."""
    if not path.is_file():
        raise ConfigError(f"{what}: {path} is not a file")
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a PEM CA bundle"
        raise ConfigError(f"{what}: cannot load {path}: {reason}") from None


def check_host(value: str, what: str) -> None:
    """An IP address or a host name."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ConfigError(f"{what} must be an IP address or a host name, got {value!r}")


def check_hostport(value: str, what: str) -> None:
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{what} must be HOST:PORT[,HOST:PORT...], got {value!r}")
        try:
            check_host(host, what)
        except ConfigError:
            raise ConfigError(f"{what} must be HOST:PORT[,HOST:PORT...], got {value!r}") from None


def check_clickhouse_dsn(dsn: str) -> None:
    """``chdb://PATH``, or ``http(s)://[user[:password]@]host[:port][/database]``. Messages
    never repeat the password."""
    shown = redact_dsn(dsn)
    if dsn.startswith("chdb://"):
        if not dsn[len("chdb://") :].strip():
            raise ConfigError("ClickHouse DSN chdb:// needs a path: chdb://PATH")
        return
    if not dsn.startswith(("http://", "https://")):
        raise ConfigError(f"ClickHouse DSN must start with chdb://, http:// or https://, got {shown!r}")
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError:
        raise ConfigError(f"ClickHouse DSN {shown!r} is not a valid URL (bad port?)") from None
    if not parts.hostname:
        raise ConfigError(f"ClickHouse DSN {shown!r} has no host")
    check_host(parts.hostname, "ClickHouse DSN host")
    if port == 0:
        raise ConfigError(f"ClickHouse DSN {shown!r}: port must be between 1 and 65535")
    options = {k.lower(): v for k, v in parse_qs(parts.query).items()}
    if "verify" in options and options["verify"][-1].lower() not in ("1", "true", "yes"):
        raise ConfigError(
            "ClickHouse DSN: verify=false is not allowed; give the server's CA in RIPPLE_CLICKHOUSE_CA_FILE"
        )
    for name in ("secure", "interface"):
        if name in options:
            raise ConfigError(f"ClickHouse DSN: the scheme chooses TLS; drop {name}= from {shown!r}")
