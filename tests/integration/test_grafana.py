"""The provisioned Grafana dashboards and datasources.

Static checks: every file parses, uses only the two provisioned datasources, has stable uids
and reads every ReplacingMergeTree table with FINAL. Integration: every ClickHouse panel runs,
with its macros and variables filled in as Grafana and the ClickHouse plugin would, against
chDB loaded with a simulated program through the whole stack; every Prometheus expression
passes ``promtool check rules``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sinks.clickhouse import ClickHouse

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"

CH_DS = {"type": "grafana-clickhouse-datasource", "uid": "ripple-clickhouse"}
PROM_DS = {"type": "prometheus", "uid": "ripple-prometheus"}
UIDS = {"ripple-creators", "ripple-attribution", "ripple-chains", "ripple-fraud", "ripple-pipeline"}
BUSINESS = UIDS - {"ripple-pipeline"}
MODELS = ["last_click", "first_click", "linear", "time_decay", "position_based"]
#: tables written with ReplacingMergeTree: every read needs FINAL (creator_daily does it itself)
REPLACING = {
    "views",
    "clicks",
    "orders",
    "refunds",
    "codes",
    "creators",
    "attributions",
    "commission_ledger",
    "conflicts",
    "late_events",
    "dead_letters",
    "chain_nodes",
    "chains",
    "alerts",
}
#: panels that must show rows for the simulated program (which has no conflicts, late events or viral chains)
KEY_PANELS = {
    ("ripple-creators", "Creator leaderboard"),
    ("ripple-creators", "Funnel: views → clicks → orders"),
    ("ripple-creators", "Ratios per tier"),
    ("ripple-creators", "Daily revenue and commission"),
    ("ripple-attribution", "Models side by side"),
    ("ripple-attribution", "Touch types by model"),
    ("ripple-chains", "Top chains"),
    ("ripple-chains", "K per generation of the largest chain"),
    ("ripple-chains", "Nodes added per day"),
    ("ripple-fraud", "Alerts over time by rule"),
    ("ripple-fraud", "Blocked orders by reason"),
    ("ripple-fraud", "Leaked codes"),
    ("ripple-fraud", "Latest alerts"),
    ("ripple-pipeline", "Dead letters by topic and error"),
}

SIM_START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z


# ------------------------------------------------------------------ loading


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows; rows themselves are left out."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def clickhouse_panels() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard uid, dashboard, panel) of every panel on the ClickHouse datasource."""
    return [
        (uid, d, p)
        for uid, d in load_dashboards().items()
        for p in panels_of(d)
        if p.get("datasource", {}).get("uid") == CH_DS["uid"]
    ]


def parse_yaml(text: str) -> Any:
    """The YAML subset of Grafana provisioning files: block mappings, block lists of scalars or
    mappings, plain or quoted scalars, comments. (PyYAML is not a dependency of the project.)"""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if stripped.strip():
            lines.append((len(stripped) - len(stripped.lstrip()), stripped.strip()))

    def scalar(value: str) -> Any:
        if value[:1] in "\"'":
            assert value[-1] == value[0], f"unterminated string {value!r}"
            return json.loads(value) if value[0] == '"' else value[1:-1].replace("''", "'")
        if value in ("true", "false"):
            return value == "true"
        if value in ("null", "~"):
            return None
        if re.fullmatch(r"-?\d+", value):
            return int(value)
        return value

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            items: list[Any] = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                item = lines[i][1][2:]
                if ":" in item and not item.startswith(("'", '"')):
                    # a mapping whose first key sits on the dash line
                    lines[i] = (indent + 2, item)
                    value, i = block(i, indent + 2)
                else:
                    value, i = scalar(item), i + 1
                items.append(value)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            key, sep, rest = lines[i][1].partition(":")
            assert sep, f"not a mapping line: {lines[i][1]!r}"
            assert key not in mapping, f"duplicate key {key!r}"
            rest = rest.strip()
            if rest:
                mapping[key], i = scalar(rest), i + 1
            elif i + 1 < len(lines) and lines[i + 1][0] > indent:
                mapping[key], i = block(i + 1, lines[i + 1][0])
            elif i + 1 < len(lines) and lines[i + 1][0] == indent and lines[i + 1][1].startswith("- "):
                mapping[key], i = block(i + 1, indent)
            else:
                mapping[key], i = None, i + 1
        return mapping, i

    result, end = block(0, lines[0][0])
    assert end == len(lines), f"unparsed YAML from line {lines[end][1]!r}"
    return result


# ------------------------------------------------------------------ Grafana's substitutions


def variable_values(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each template variable's default values (All expanded to every option)."""
    values: dict[str, list[str]] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var["current"]["value"]
        chosen = current if isinstance(current, list) else [current]
        if "$__all" in chosen:
            chosen = [o["value"] for o in var["options"] if o["value"] != "$__all"]
        values[var["name"]] = chosen
    return values


def render_sql(sql: str, variables: dict[str, list[str]], start: datetime, end: datetime, interval_s: int) -> str:
    """The query the ClickHouse plugin (4.x) sends: Grafana's variables (plugin format: a
    multi-value list becomes 'a','b'), then the plugin's macros, as in pkg/macros/macros.go."""

    def var(m: re.Match[str]) -> str:
        name, fmt = m.group("name") or m.group("plain"), m.group("fmt")
        assert name in variables, f"unknown variable ${name}"
        vals = variables[name]
        if fmt == "singlequote" or len(vals) > 1:
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
        assert fmt is None, f"unsupported variable format {fmt}"
        return vals[0]

    sql = re.sub(r"\$\{(?P<name>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<plain>(?!__)\w+)", var, sql)
    f_s, t_s = int(start.timestamp()), int(end.timestamp())
    f_ms, t_ms = f_s * 1000, t_s * 1000
    macros: list[tuple[str, Any]] = [
        (
            r"\$__timeFilter_ms\(([^()]+)\)",
            lambda c: f"{c} >= fromUnixTimestamp64Milli({f_ms}) AND {c} <= fromUnixTimestamp64Milli({t_ms})",
        ),
        (r"\$__timeFilter\(([^()]+)\)", lambda c: f"{c} >= toDateTime({f_s}) AND {c} <= toDateTime({t_s})"),
        (
            r"\$__dateFilter\(([^()]+)\)",
            lambda c: f"{c} >= toDate('{start:%Y-%m-%d}') AND {c} <= toDate('{end:%Y-%m-%d}')",
        ),
        (
            r"\$__timeInterval\(([^()]+)\)",
            lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {interval_s} second)",
        ),
        (r"\$__fromTime_ms\b", lambda _: f"fromUnixTimestamp64Milli({f_ms})"),
        (r"\$__toTime_ms\b", lambda _: f"fromUnixTimestamp64Milli({t_ms})"),
        (r"\$__fromTime\b", lambda _: f"toDateTime({f_s})"),
        (r"\$__toTime\b", lambda _: f"toDateTime({t_s})"),
        (r"\$__interval_s\b", lambda _: str(interval_s)),
    ]
    for pattern, fill in macros:
        sql = re.sub(pattern, lambda m, fill=fill: fill(m.group(1).strip() if m.groups() else ""), sql)
    assert "$" not in sql, f"unsubstituted macro or variable in {sql}"
    return sql


def render_promql(expr: str) -> str:
    for name, value in (("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


# ------------------------------------------------------------------ static checks


def test_dashboard_files_and_uids() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == UIDS
    for name, d in dashboards.items():
        text = (DASHBOARDS / f"{name}.json").read_text()
        assert "__inputs" not in text and "${DS_" not in text, name
        assert d["uid"] == name
        assert d["schemaVersion"] == 39
        assert d["title"] and d["description"], name
        assert "id" not in d or d["id"] is None, f"{name}: a provisioned dashboard carries no database id"
        if name in BUSINESS:
            assert d["time"]["from"] == "now-30d", name
    assert len({d["title"] for d in dashboards.values()}) == len(dashboards)


def test_panels_use_the_provisioned_datasources() -> None:
    for uid, d in load_dashboards().items():
        panels = panels_of(d)
        assert panels, uid
        assert len({p["id"] for p in panels}) == len(panels), f"{uid}: panel ids repeat"
        for p in panels:
            where = f"{uid} / {p.get('title')}"
            assert p.get("title") and p.get("description"), where
            assert p["datasource"] in (CH_DS, PROM_DS), where
            assert p["targets"], where
            for t in p["targets"]:
                assert t.get("datasource", p["datasource"]) == p["datasource"], where
                if p["datasource"] == CH_DS:
                    assert t["editorType"] == "sql" and t["format"] in (0, 1), where
                    assert t["rawSql"].strip(), where
                else:
                    assert t["expr"].strip(), where


def test_clickhouse_panels_read_with_final() -> None:
    for uid, d, p in clickhouse_panels():
        variables = variable_values(d)
        for t in p["targets"]:
            sql = t["rawSql"]
            for name in re.findall(r"\$\{?(\w+)", sql):
                assert name.startswith("__") or name in variables, f"{uid} / {p['title']}: ${name} is not defined"
            for m in re.finditer(r"\bripple\.(\w+)((?:\s+AS\s+\w+)?\s+FINAL\b)?", sql):
                table, final = m.group(1), m.group(2)
                if table in REPLACING:
                    assert final, f"{uid} / {p['title']}: ripple.{table} read without FINAL"
            if "chain_nodes" in sql or "conflicts" in sql:
                assert "active = 1" in sql, f"{uid} / {p['title']}: inactive rows must be left out"


def test_model_variable() -> None:
    for uid, d in load_dashboards().items():
        uses_model = any("model}" in t.get("rawSql", "") for p in panels_of(d) for t in p["targets"])
        variables = {v["name"]: v for v in d["templating"]["list"]}
        if uses_model:
            var = variables["model"]
            assert var["type"] == "custom" and var["query"].split(",") == MODELS, uid
            assert var["current"]["value"] == "last_click", uid


def test_provisioning_files() -> None:
    datasources = parse_yaml((PROVISIONING / "datasources" / "datasources.yml").read_text())
    try:  # PyYAML, where installed, must read the files the same way
        import yaml

        for path in PROVISIONING.glob("*/*.yml"):
            assert yaml.safe_load(path.read_text()) == parse_yaml(path.read_text()), path
    except ImportError:
        pass
    assert datasources["apiVersion"] == 1
    by_uid = {ds["uid"]: ds for ds in datasources["datasources"]}
    assert set(by_uid) == {CH_DS["uid"], PROM_DS["uid"]}
    ch = by_uid[CH_DS["uid"]]
    assert ch["type"] == CH_DS["type"]
    assert ch["jsonData"]["host"] == "clickhouse" and ch["jsonData"]["port"] == 9000
    assert ch["jsonData"]["protocol"] == "native" and ch["jsonData"]["username"] == "grafana"
    assert ch["jsonData"]["defaultDatabase"] == "ripple"
    assert ch["secureJsonData"]["password"] == "$GRAFANA_CLICKHOUSE_PASSWORD"
    prom = by_uid[PROM_DS["uid"]]
    assert prom["type"] == PROM_DS["type"] and prom["url"] == "http://prometheus:9090"
    assert sum(bool(ds.get("isDefault")) for ds in by_uid.values()) <= 1

    providers = parse_yaml((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_parse_yaml_subset() -> None:
    text = "a: 1\nb:\n  - x: 'y' # note\n    z: true\n  - w: \"v\"\nc:\n  d: e\nlist:\n- 1\n- two\n"
    assert parse_yaml(text) == {"a": 1, "b": [{"x": "y", "z": True}, {"w": "v"}], "c": {"d": "e"}, "list": [1, "two"]}


def test_render_sql() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    sql = "SELECT $__timeInterval(ts) FROM t WHERE m = '${model}' AND r IN (${rule:singlequote}) AND $__timeFilter(ts)"
    out = render_sql(sql, {"model": ["linear"], "rule": ["a", "b"]}, start, end, 60)
    assert out == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 60 second) FROM t WHERE m = 'linear' "
        "AND r IN ('a','b') AND ts >= toDateTime(1767225600) AND ts <= toDateTime(1767312000)"
    )
    assert render_sql("$__dateFilter(day)", {}, start, end, 60) == (
        "day >= toDate('2026-01-01') AND day <= toDate('2026-01-02')"
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_prometheus_expressions_parse(tmp_path: Path) -> None:
    exprs = [
        (f"{uid} / {p['title']}", render_promql(t["expr"]))
        for uid, d in load_dashboards().items()
        for p in panels_of(d)
        if p["datasource"] == PROM_DS
        for t in p["targets"]
    ]
    assert exprs
    rules = "groups:\n  - name: grafana_panels\n    rules:\n" + "".join(
        f"      - record: grafana:panel_{i}\n        expr: {json.dumps(expr)}\n" for i, (_, expr) in enumerate(exprs)
    )
    path = tmp_path / "panels.rules.yml"
    path.write_text(rules)
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ panels against simulated data


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouse, datetime, datetime]]:
    """chDB filled through the whole stack (broker, worker, sink) with a simulated program
    that includes every kind of injected fraud."""
    from ripple.bench import evaluate
    from ripple.simulator import SimConfig, generate, parse_inject

    data_dir = Path(tmp_path_factory.mktemp("grafana"))
    cfg = SimConfig(seed=5, start_ms=SIM_START_MS, views=3000, inject=parse_inject("all"))
    ds = generate(cfg)
    evaluate.run_stack(data_dir, [(cfg, True, ds)], say=print)
    ch = ClickHouse(f"chdb://{data_dir / 'clickhouse'}")
    # dead letters carry their arrival time (now): the range runs from the program's start to past now
    start = datetime.fromtimestamp(SIM_START_MS / 1000, tz=UTC)
    end = max(datetime.fromtimestamp(time.time(), tz=UTC), start + timedelta(days=cfg.days)) + timedelta(days=1)
    try:
        yield ch, start, end
    finally:
        ch.close()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("uid", "title"), [(uid, p["title"]) for uid, _, p in clickhouse_panels()], ids=lambda v: str(v)
)
def test_clickhouse_panel_runs(loaded: tuple[ClickHouse, datetime, datetime], uid: str, title: str) -> None:
    ch, start, end = loaded
    [(dashboard, panel)] = [(d, p) for u, d, p in clickhouse_panels() if u == uid and p["title"] == title]
    variables = variable_values(dashboard)
    for target in panel["targets"]:
        sql = render_sql(target["rawSql"], variables, start, end, interval_s=3600)
        rows = ch.query(sql)
        if (uid, title) in KEY_PANELS:
            assert rows, f"{uid} / {title}: no rows"
            assert any(v not in (None, 0, "", []) for v in rows[0]), f"{uid} / {title}: only empty values {rows[0]}"
        if target["format"] == 0 and rows:
            assert isinstance(rows[0][0], datetime), f"{uid} / {title}: a time series starts with its time column"
            times = [r[0] for r in rows]
            assert times == sorted(times), f"{uid} / {title}: a time series must be ordered by time"


@pytest.mark.integration
def test_every_model_gives_a_leaderboard(loaded: tuple[ClickHouse, datetime, datetime]) -> None:
    ch, start, end = loaded
    [(dashboard, panel)] = [
        (d, p) for u, d, p in clickhouse_panels() if (u, p["title"]) == ("ripple-creators", "Creator leaderboard")
    ]
    for model in MODELS:
        variables = {**variable_values(dashboard), "model": [model]}
        rows = ch.query(render_sql(panel["targets"][0]["rawSql"], variables, start, end, 3600))
        assert rows and all(r[0] for r in rows), model
