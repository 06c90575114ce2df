"""The Grafana dashboards' side of the read-side SQL. The dashboards in ``deploy/grafana/``
keep their ClickHouse queries in panel JSON, written with Grafana's template variables and
the ClickHouse plugin's macros; :func:`render_sql` turns such a query into the SQL the plugin
sends, so a panel can run against ClickHouse or chDB next to the web server's own queries
(:mod:`ripple.web.queries`) and be compared with them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

#: ``${name}``, ``${name:format}`` or ``$name``; ``$__…`` names are the plugin's macros
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<plain>(?!__)\w+)")


def default_variables(dashboard: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each template variable of a dashboard (its JSON model) with the values it has when the
    dashboard opens; a variable set to All has every one of its options."""
    values: dict[str, list[str]] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        current = var["current"]["value"]
        chosen = current if isinstance(current, list) else [current]
        if "$__all" in chosen:
            chosen = [o["value"] for o in var["options"] if o["value"] != "$__all"]
        values[var["name"]] = chosen
    return values


def render_sql(
    sql: str, variables: Mapping[str, Sequence[str]], start: datetime, end: datetime, interval_s: int
) -> str:
    """The query the ClickHouse plugin (4.x) sends for a panel's ``rawSql`` over the time range
    ``start``–``end`` (timezone-aware) at ``interval_s`` seconds per point: Grafana fills in
    the variables first (in the plugin's format a multi-value variable becomes ``'a','b'``),
    then the plugin its macros, as in its ``pkg/macros/macros.go``.

    Raises :class:`ValueError` for an unknown variable or format, or for a ``$`` left over
    (a macro this function does not know), rather than return SQL Grafana would never send."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")

    def variable(m: re.Match[str]) -> str:
        name, fmt = m.group("name") or m.group("plain"), m.group("fmt")
        if name not in variables:
            raise ValueError(f"unknown variable ${name}")
        vals = variables[name]
        if fmt == "singlequote" or len(vals) > 1:
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
        if fmt is not None:
            raise ValueError(f"unsupported variable format {fmt}")
        return vals[0]

    sql = _VARIABLE.sub(variable, sql)
    f_s, t_s = int(start.timestamp()), int(end.timestamp())
    f_ms, t_ms = f_s * 1000, t_s * 1000
    macros: list[tuple[str, Callable[[str], str]]] = [
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

        def expand(m: re.Match[str], fill: Callable[[str], str] = fill) -> str:
            return fill(m.group(1).strip() if m.groups() else "")

        sql = re.sub(pattern, expand, sql)
    if "$" in sql:
        raise ValueError(f"unsubstituted macro or variable in {sql}")
    return sql
