"""The one ClickHouse writer, through clickhouse-connect, for ``chdb://`` and ``http(s)://``.

Tables come only from the numbered DDL files in ``deploy/clickhouse`` (applied by
:func:`migrate`); this module never creates a table of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

log = logging.getLogger("ripple.sink")

DDL_DIR = Path(__file__).resolve().parent.parent / "deploy" / "clickhouse"
_DDL_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
#: a table name the sink inserts into (a name cannot be a query parameter: it is checked instead)
_TABLE = re.compile(r"[a-z_][a-z0-9_]*")


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (``http://user:***@host:8123``), for messages and logs."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<unparsable DSN>"


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse did not accept a write; the caller retries after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def connect(dsn: str, ca_file: Path | None = None) -> Client:
    """Open a client. ``chdb://PATH`` opens the embedded engine (one path per process);
    ``http(s)://[user[:password]@]host[:port]`` a server. ``https://`` always speaks TLS and
    verifies the server's certificate and name, against ``ca_file`` if given, else the
    system's CAs (clickhouse-connect by itself takes TLS from the port, not the scheme)."""
    if dsn.startswith("chdb://"):
        path = Path(dsn[len("chdb://") :])
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
    parsed = urlparse(dsn)
    if parsed.scheme == "http":
        return clickhouse_connect.get_client(dsn=dsn, interface="http", secure=False)
    if parsed.scheme == "https":
        ca = str(ca_file) if ca_file is not None else None
        return clickhouse_connect.get_client(dsn=dsn, interface="https", secure=True, verify=True, ca_cert=ca)
    raise ValueError(f"unsupported ClickHouse DSN {redact_dsn(dsn)!r}")


def ddl_files(directory: Path = DDL_DIR) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(directory.glob("*.sql")):
        m = _DDL_NAME.match(path.name)
        if not m:
            raise ValueError(f"DDL file {path.name} does not follow NNN_name.sql")
        files.append((int(m.group(1)), path))
    return files


def split_statements(sql: str) -> list[str]:
    """Split a DDL file on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


class ClickHouse:
    """Thread-safe wrapper: one client, one lock (chDB is one engine per process)."""

    def __init__(self, dsn: str, ca_file: Path | None = None) -> None:
        self.dsn = dsn
        self.client = connect(dsn, ca_file)
        self.lock = threading.Lock()
        # one insert context per table and columns: the column types are asked for once,
        # not before every insert (a DESCRIBE was ~12 % of the sink's insert time)
        self._contexts: dict[tuple[str, tuple[str, ...]], InsertContext] = {}

    def close(self) -> None:
        with self.lock:
            self.client.close()

    def migrate(self, directory: Path = DDL_DIR) -> list[str]:
        """Apply every DDL file not applied yet, in order. Returns the names applied."""
        applied: list[str] = []
        with self.lock:
            self.client.command("CREATE DATABASE IF NOT EXISTS ripple")
            self.client.command(
                "CREATE TABLE IF NOT EXISTS ripple.schema_migrations "
                "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
                "ENGINE = ReplacingMergeTree ORDER BY version"
            )
            done = {row[0] for row in self.client.query("SELECT version FROM ripple.schema_migrations").result_rows}
            for version, path in ddl_files(directory):
                if version in done:
                    continue
                for statement in split_statements(path.read_text()):
                    self.client.command(statement)
                self.client.insert("ripple.schema_migrations", [(version, path.name)], column_names=["version", "name"])
                applied.append(path.name)
        return applied

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> float:
        """Insert rows; returns the seconds it took. Raises :class:`ClickHouseUnavailable`."""
        if not _TABLE.fullmatch(table):
            raise ValueError(f"not a table name: {table!r}")
        started = time.perf_counter()
        try:
            with self.lock:
                key = (table, tuple(columns))
                context = self._contexts.get(key)
                if context is None:
                    context = self.client.create_insert_context(f"ripple.{table}", column_names=list(columns))
                    self._contexts[key] = context
                self.client.insert(data=rows, context=context)  # the client empties the context after
        except Exception as exc:
            raise ClickHouseUnavailable(f"insert into {table} failed: {exc}") from exc
        return time.perf_counter() - started

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.lock:
            return [tuple(r) for r in self.client.query(sql, parameters=parameters or {}).result_rows]

    def query_dicts(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            result = self.client.query(sql, parameters=parameters or {})
            return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
