"""Settings: one frozen object, read from the environment and the command line.

No other module reads ``os.environ``. Every option has an environment variable
``RIPPLE_<NAME>``; command-line flags override the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.fraud import FraudConfigError, load_config
from streams.models import MODELS, POLICIES

INPUT_TOPICS = ("views", "clicks", "orders", "refunds", "codes", "creators")
#: Topics whose records are keyed by visitor and read together by one task.
COPARTITIONED_TOPICS = ("views", "clicks", "orders")
COMPACTED_TOPICS = ("codes", "creators")
OUTPUT_TOPICS = (
    "attributions",
    "commission_ledger",
    "conflicts",
    "late_events",
    "chain_nodes",
    "chains",
    "alerts",
    "deadletter",
)
#: Worker-to-worker topics: credits and lineage claims keyed by referrer, commission terms
#: keyed by order id, chain updates keyed by root.
INTERNAL_TOPICS = (
    "ripple-credits",
    "ripple-lineage",
    "ripple-commissions",
    "ripple-chains",
    "ripple-clicks",  # clicks keyed by ip and referrer, for the click-flood rule
    "ripple-blocks",  # fraud verdicts on clicks, back to the visitor's key
    "ripple-alerts",  # alert candidates keyed by rule and subject
)


DAY_MS = 86_400_000
MINUTE_MS = 60_000


class ConfigError(ValueError):
    """A setting has a value Ripple cannot run with. The message is one line for the user."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".ripple")
    bootstrap: str | None = None  # None: start the embedded broker
    clickhouse: str | None = None  # None: chdb://<data_dir>/clickhouse
    web_port: int | None = None  # None: the command's own default (up 8080, worker 6066, sink 8081)
    web_host: str = "127.0.0.1"
    partitions: int = 8
    log_level: str = "info"
    # attribution
    click_window_ms: int = 30 * DAY_MS
    view_window_ms: int = DAY_MS
    max_lateness_ms: int = 10 * MINUTE_MS
    max_future_ms: int = DAY_MS
    max_touches_per_visitor: int = 64
    half_life_ms: int = 7 * DAY_MS
    policy: str = "code_wins"
    commission_model: str = "last_click"
    fraud_rules: Path | None = None  # None: deploy/fraud/rules.json
    # worker batching
    worker_batch: int = 500
    worker_batch_ms: int = 50
    # sink batching
    sink_batch_rows: int = 50_000
    sink_batch_ms: int = 500
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse:
            return self.clickhouse
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def runtime_file(self) -> Path:
        return self.data_dir / "runtime.json"

    def with_web_port(self, default: int) -> Settings:
        """This command's web port: a flag or RIPPLE_WEB_PORT, else ``default``."""
        return self if self.web_port is not None else dataclasses.replace(self, web_port=default)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_INT_FIELDS = {f.name for f in dataclasses.fields(Settings) if f.type in ("int", int, "int | None")}
_STR_FIELDS = {"bootstrap", "clickhouse", "web_host", "log_level", "policy", "commission_model"}
_LOG_LEVELS = ("crit", "error", "warn", "info", "debug")


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``RIPPLE_*`` variables, then apply non-None ``overrides``.

    Raises :class:`ConfigError` with a one-line message on any invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in _INT_FIELDS:
        raw = env.get(f"RIPPLE_{name.upper()}")
        if raw is not None and raw != "":
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"RIPPLE_{name.upper()}={raw!r} is not an integer") from None
    for name in _STR_FIELDS:
        raw = env.get(f"RIPPLE_{name.upper()}")
        if raw:
            values[name] = raw
    for name in ("data_dir", "fraud_rules"):
        if env.get(f"RIPPLE_{name.upper()}"):
            values[name] = Path(env[f"RIPPLE_{name.upper()}"])
    for key, value in overrides.items():
        if value is not None:
            values[key] = Path(value) if key in ("data_dir", "fraud_rules") else value
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
    if s.max_lateness_ms < 0:
        raise ConfigError(f"max_lateness_ms must be zero or positive, got {s.max_lateness_ms}")
    if s.web_port is not None and not 0 <= s.web_port <= 65535:
        raise ConfigError(f"web port must be between 0 and 65535, got {s.web_port}")
    if s.partitions > 1024:
        raise ConfigError(f"partitions must be at most 1024, got {s.partitions}")
    if s.bootstrap is not None:
        check_hostport(s.bootstrap, "bootstrap")
    if s.clickhouse is not None and not s.clickhouse.startswith(("chdb://", "http://", "https://")):
        raise ConfigError(f"ClickHouse DSN must start with chdb://, http:// or https://, got {s.clickhouse!r}")
    if s.policy not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {s.policy!r}")
    if s.commission_model not in MODELS:
        raise ConfigError(f"commission model must be one of {', '.join(MODELS)}, got {s.commission_model!r}")
    if s.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}")
    try:
        load_config(s.fraud_rules) if s.fraud_rules else load_config()
    except FraudConfigError as exc:
        raise ConfigError(f"fraud rules: {exc}") from None


def check_hostport(value: str, what: str) -> None:
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{what} must be HOST:PORT[,HOST:PORT...], got {value!r}")
