"""The collector's settings, errors, structured log lines and the salt of ``ip_hash``."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

from ripple.checks import COLLECTOR_SALT_MIN_LENGTH, ConfigError
from ripple.config import Settings
from streams.kafka import Secret

log = logging.getLogger("ripple.collector")

STATIC = Path(__file__).resolve().parent.parent / "static"
DEFAULT_PORT = 8090
SALT_FILE = "collector-salt"
#: how long a request waits for the broker's acknowledgement before answering 503
ACK_TIMEOUT_S = 15.0
#: how long /r/{code} waits for its click to be acknowledged before redirecting anyway
CLICK_ACK_TIMEOUT_S = 2.0
#: the visitor cookie lives about a year (browsers cap cookies at 400 days)
COOKIE_MAX_AGE = 365 * 86_400
ROUTES = {
    "/v1/events": "events",
    "/r/{code}": "redirect",
    "/ripple.js": "snippet",
    "/healthz": "healthz",
    "/metrics": "metrics",
}


def say(level: int, event: str, **fields: Any) -> None:
    """One ``event=... key=value`` log line."""
    if log.isEnabledFor(level):
        parts = [f"event={event}"] + [f"{k}={_logged(v)}" for k, v in fields.items()]
        log.log(level, " ".join(parts))


def _logged(value: Any) -> str:
    text = str(value)
    return orjson.dumps(text).decode() if not text or any(c in text for c in ' "=\n') else text


class CollectorError(RuntimeError):
    """The collector cannot start (a port in use, no topics); the message is one line."""


# -- the salt of ip_hash ----------------------------------------------------------------
def load_salt(settings: Settings) -> Secret:
    """``RIPPLE_COLLECTOR_SALT``, else the salt kept in ``<data-dir>/collector-salt``,
    created on first use, so hashes stay the same across restarts."""
    if settings.collector_salt is not None:
        return settings.collector_salt
    path = settings.data_dir / SALT_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the collector's salt {path}: {exc.strerror or exc}") from None
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        say(logging.INFO, "salt_created", path=path)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the collector's salt {path}: {exc}") from None
    if len(value) < COLLECTOR_SALT_MIN_LENGTH or "\n" in value:
        raise ConfigError(f"{path} must hold one line of at least {COLLECTOR_SALT_MIN_LENGTH} characters")
    return Secret(value)
