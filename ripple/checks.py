"""Every check of a setting, and :class:`ConfigError`, the one-line error a bad one raises
(exit code 2 on the command line). :func:`validate` checks a whole :class:`ripple.config.Settings`."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from sinks.clickhouse import redact_dsn
from streams.fraud import FraudConfigError, load_config
from streams.kafka import Secret
from streams.models import MODELS, POLICIES

if TYPE_CHECKING:
    from ripple.config import Settings

KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: An API token: at least this many characters, printable ASCII without spaces.
API_TOKEN_MIN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def variable(name: str) -> str:
    """The environment variable of a setting."""
    return f"RIPPLE_{name.upper()}"


class ConfigError(ValueError):
    """A setting has a value Ripple cannot run with. The message is one line for the user."""


_LOG_LEVELS = ("crit", "error", "warn", "info", "debug")


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
            raise ConfigError(f"{variable(name)} must be between {low} and {high}, got {value}")


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


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this host only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
