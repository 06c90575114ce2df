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
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ripple.checks import ConfigError, validate, variable
from sinks.clickhouse import redact_dsn
from streams.events import MAX_FUTURE_MS
from streams.kafka import KafkaSecurity, Secret

DAY_MS = 86_400_000
MINUTE_MS = 60_000

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
#: the largest integer any setting takes (ClickHouse and Kafka store times as signed 64-bit)
_INT_MAX = 2**62


def _read_secret(env: Mapping[str, str], name: str) -> Secret | None:
    """``RIPPLE_<NAME>`` or the first line of the file ``RIPPLE_<NAME>_FILE`` names."""
    var = variable(name)
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
        raw = env.get(variable(name))
        if raw is not None and raw.strip() != "":
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"{variable(name)}={raw!r} is not an integer") from None
            if abs(values[name]) > _INT_MAX:
                raise ConfigError(f"{variable(name)}={raw!r} is out of range")
    for name in _STR_FIELDS:
        raw = env.get(variable(name))
        if raw:
            values[name] = raw
    for name in _UPPER_FIELDS:
        raw = env.get(variable(name))
        if raw:
            values[name] = raw.strip().upper()
    for name in _PATH_FIELDS:
        raw = env.get(variable(name))
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
