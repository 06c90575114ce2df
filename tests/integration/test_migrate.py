"""DDL lives only in deploy/clickhouse and is applied once, in order, against chDB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sinks.clickhouse import DDL_DIR, ddl_files, split_statements

ROOT = Path(__file__).resolve().parents[2]
SPEC_TABLES = {"views", "clicks", "orders", "refunds", "codes", "creators", "attributions", "dead_letters"}


def test_ddl_files_are_numbered_and_contiguous() -> None:
    numbers = [n for n, _ in ddl_files()]
    assert numbers == list(range(1, len(numbers) + 1))


def test_every_statement_is_idempotent() -> None:
    for _, path in ddl_files():
        for statement in split_statements(path.read_text()):
            assert "IF NOT EXISTS" in statement or statement.startswith(("ALTER", "INSERT")), statement


def test_migrate_creates_the_spec_tables_once(tmp_path: Path) -> None:
    # chDB allows one engine per process: run each step in its own process, as an operator would
    dsn = f"chdb://{tmp_path / 'ch'}"
    first = subprocess.run(
        [sys.executable, "-m", "ripple", "migrate", "--clickhouse", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert first.returncode == 0, first.stderr
    assert f"applied {len(ddl_files())} migration(s)" in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "ripple", "migrate", "--clickhouse", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert again.returncode == 0 and "applied 0 migration(s)" in again.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; from sinks.clickhouse import ClickHouse; ch = ClickHouse(sys.argv[1]); "
                "print(' '.join(r[0] for r in ch.query('SELECT name FROM system.tables WHERE database = {d:String}', "
                "{'d': 'ripple'})))"
            ),
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert probe.returncode == 0, probe.stderr
    assert SPEC_TABLES <= set(probe.stdout.split())
    assert DDL_DIR.is_dir()
