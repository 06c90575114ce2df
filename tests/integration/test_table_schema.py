"""The worker's output rows, the sink's column lists and the ClickHouse DDL agree.

The tables are created in chDB from the numbered files in deploy/clickhouse, and their
columns read back from ``system.columns``. The rows are what the worker's own logic
builds from simulated traffic (every kind of injected fraud included): the pure
functions and agent handlers the Faust agents call, wired here in one process (no
broker, one task, credits settled at once). For every output table: each field of each
row is a column and is in the sink's column list (sinks/tables.py), each column without
a default is filled by each row, the sink's column list is the table's, and the rows go
into the table through the sink's own mapping.

Not reached here: the dead-letter records (built from headers inside the worker's app;
only the sink's side of them is checked) and the rows of the input topics, which the
sink maps with ``SPECS`` (checked against the DDL below; their JSON Schemas in schemas/
describe the input events, not output rows).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_kit import box_for, make_table, rows, unsent

from ripple.simulator import SimConfig, generate, parse_inject
from sinks.clickhouse import ClickHouse
from sinks.tables import DEAD_LETTER_COLUMNS, JSON_TABLES, SPECS, rows_for_message
from streams import attribution as attr
from streams import commission as comm
from streams import fraud, lineage
from streams import referrer as referrer_logic
from streams.agents import alerts as alert_agent
from streams.agents import chains as chain_agent
from streams.agents import referrers as referrer_agent
from streams.reference import ReferenceData
from streams.topics import OUTPUT_TOPICS

RULES = fraud.load_config()
W = attr.Windows(
    click_ms=30 * 86_400_000,
    view_ms=86_400_000,
    max_lateness_ms=600_000,
    block_below_ms=RULES.block_below_ms,
    flag_below_ms=RULES.flag_below_ms,
    hold_ms=RULES.block_hold_ms,
)
POLICY = "code_wins"
#: output topics whose records the sink stores one to one as rows (deadletter: headers)
ROW_TOPICS = tuple(t for t in OUTPUT_TOPICS if t != "deadletter")


@pytest.fixture(scope="module")
def ddl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouse, dict[str, dict[str, str]]]]:
    """chDB with the project's DDL applied; each table's columns with their default kind
    ('' when a row must fill it)."""
    ch = ClickHouse(f"chdb://{Path(tmp_path_factory.mktemp('schema')) / 'ch'}")
    try:
        ch.migrate()
        columns: dict[str, dict[str, str]] = {}
        for table, name, default_kind in ch.query(
            "SELECT c.table, c.name, c.default_kind FROM system.columns AS c "
            "INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table "
            "WHERE c.database = 'ripple' AND t.engine NOT LIKE '%View' AND c.table != 'schema_migrations'"
        ):
            columns.setdefault(table, {})[name] = default_kind
        yield ch, columns
    finally:
        ch.close()


def required(columns: dict[str, str]) -> set[str]:
    return {name for name, kind in columns.items() if not kind}


@pytest.fixture(scope="module")
def produced() -> dict[str, list[dict[str, Any]]]:
    """Every output row the worker's logic builds from a simulated program, by topic."""
    ds = generate(SimConfig(seed=7, views=1500, days=7.0, inject=parse_inject("all")))
    reference = ReferenceData()
    for m in ds.reference:
        assert m.event is not None
        reference.apply(m.topic, m.event)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in ROW_TOPICS}
    internal: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    claims: deque[tuple[str, str, dict[str, Any]]] = deque()

    def emit(outputs: list[referrer_logic.Output]) -> None:
        for topic, key, value in outputs:
            if topic in out:
                out[topic].append(value)
            elif topic == "ripple-lineage":
                claims.append((topic, key, value))
            else:
                internal.setdefault(topic, []).append((key, value))

    # the visitors agent: views, clicks and orders -> credits, conflicts, late events
    visitors: dict[str, attr.State] = {}
    refunds: list[dict[str, Any]] = []
    stream_time = 0
    credits: list[dict[str, Any]] = []
    for m in ds.events:
        event = m.event
        if event is None:
            continue  # malformed: the dead-letter topic's
        if m.topic == "refunds":
            refunds.append(event)
            continue
        if m.topic not in ("views", "clicks", "orders") or event.get("visitor_id") is None:
            continue
        stream_time = max(stream_time, event["ts"])
        state = visitors.setdefault(event["visitor_id"], attr.new_state())
        for order, result in attr.handle_event(m.topic, event, state, stream_time, W, reference, POLICY):
            credits.extend(attr.rows_for(order, result, reference, W))
            conflict = attr.conflict_row(order, result, POLICY)
            if conflict is not None:
                out["conflicts"].append(conflict)
                # the disagreement ends with a restatement: the retraction record
                ended = attr.conflict_row(order, dataclasses.replace(result, conflict=None), POLICY)
                assert ended is not None
                out["conflicts"].append(ended)
    late = ds.events[0].event
    assert late is not None
    out["late_events"].append(attr.late_row(ds.events[0].topic, late, late["ts"] + 2 * W.max_lateness_ms, 3))

    # the referrers agent: credits and lineage claims, parked credits released once settled
    ctx = referrer_agent.context(reference, "last_click", RULES)
    referrers: dict[str, dict[str, Any]] = {}
    claims.extend(("ripple-credits", r["referrer_id"], r) for r in credits)
    while claims:
        while claims:
            topic, key, value = claims.popleft()
            state = referrers.setdefault(key, referrer_logic.new_state())
            if topic == "ripple-lineage":
                emit(lineage.on_claim(state, value))
            else:
                emit(referrer_logic.on_credit(state, value, ctx))
        # then what is parked, placed customers first, as the worker releases it
        for state in sorted((s for s in referrers.values() if "parked" in s), key=lambda s: "lin" not in s):
            emit(referrer_logic.release(state, ctx))

    # the ledger agent: commission terms and refunds -> ledger entries
    ledgers: dict[str, dict[str, Any]] = {}
    for order_id, terms in internal.pop("ripple-commissions", []):
        comm.ledger_set_commission(ledgers.setdefault(order_id, comm.new_ledger(0)), terms)
    for refund in refunds:
        if refund["order_id"] in ledgers:
            comm.ledger_add_refund(ledgers[refund["order_id"]], refund)
    for i, (order_id, ledger) in enumerate(sorted(ledgers.items())):
        ledger["approved"] = i % 2 == 0
        out["commission_ledger"].extend(comm.ledger_entries(order_id, ledger))

    # the chains and alerts agents, through their handlers and an Outbox that never sends
    with unsent() as outbound:
        chain_state = make_table("chain_state")
        box = box_for(chain_state, outbound)
        chain_agent.handle([(0, k, v) for k, v in internal.pop("ripple-chains", [])], chain_state, box)
        out["chains"].extend(rows(box, "chains"))
        candidates = internal.pop("ripple-alerts", []) + keyed(box, "ripple-alerts")
        alert_state = make_table("alert_state")
        box = box_for(alert_state, outbound)
        alert_agent.handle([(0, k, v) for k, v in candidates], alert_state, box, RULES)
        out["alerts"].extend(rows(box, "alerts"))
    return out


def keyed(box: Any, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """The (key, record) pairs ``box`` would send to an internal topic."""
    return [(k, orjson.loads(v)) for (t, _), records in box.records.items() if t == topic for k, v in records]


def test_the_sinks_column_lists_are_the_tables_columns(ddl: tuple[ClickHouse, dict[str, dict[str, str]]]) -> None:
    _, tables = ddl
    lists = {
        **{spec.table: spec.columns for spec in SPECS.values()},
        **JSON_TABLES,
        "dead_letters": DEAD_LETTER_COLUMNS,
    }
    for table, columns in lists.items():
        assert table in tables, f"{table}: no CREATE TABLE in deploy/clickhouse"
        assert len(set(columns)) == len(columns), f"{table}: a column listed twice in sinks/tables.py"
        unknown = set(columns) - set(tables[table])
        assert not unknown, f"{table}: sinks/tables.py writes columns the DDL does not have: {sorted(unknown)}"
        unfilled = required(tables[table]) - set(columns)
        assert not unfilled, f"{table}: columns without a default the sink never writes: {sorted(unfilled)}"


@pytest.mark.parametrize("topic", ROW_TOPICS)
def test_every_row_the_worker_builds_fits_its_table(
    topic: str, produced: dict[str, list[dict[str, Any]]], ddl: tuple[ClickHouse, dict[str, dict[str, str]]]
) -> None:
    ch, tables = ddl
    built = produced[topic]
    assert built, f"the simulated program produced no {topic} row: the check would see nothing"
    columns, written = tables[topic], set(JSON_TABLES[topic])
    for row in built:
        extra = set(row) - set(columns)
        assert not extra, f"{topic}: fields that are no column of ripple.{topic}: {sorted(extra)} in {row}"
        dropped = set(row) - written
        assert not dropped, f"{topic}: fields the sink drops (not in JSON_TABLES): {sorted(dropped)} in {row}"
        missing = required(columns) - set(row)
        assert not missing, f"{topic}: columns without a default the row leaves empty: {sorted(missing)} in {row}"
    # and they go in through the sink's own mapping (the column types take the values)
    table, names, values = rows_for_message(topic, orjson.dumps(built), None, 0)
    ch.insert(table, values, names)
