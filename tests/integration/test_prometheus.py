"""Prometheus scrape config, alert rules and their unit tests, Alertmanager routing.

Runs the real tools: promtool (Debian package `prometheus`) and amtool (`prometheus-alertmanager`).
A missing tool fails the test with the package to install; nothing is skipped.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streams.fraud import RULE_SEVERITIES

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = PROM_DIR / "tests" / "ripple_test.yml"
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
METRICS_PY = ROOT / "streams" / "metrics.py"

SEVERITIES = {"critical", "warning", "info"}
RECEIVERS = {"critical": "pager", "warning": "chat", "info": "null"}

# The metric contract of streams/metrics.py: name -> (type, label names).
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "ripple_messages_in_total": ("Counter", ("topic",)),
    "ripple_events_in_total": ("Counter", ("topic",)),
    "ripple_dead_letters_total": ("Counter", ("topic",)),
    "ripple_late_events_total": ("Counter", ("topic",)),
    "ripple_orders_attributed_total": ("Counter", ()),
    "ripple_rows_out_total": ("Counter", ("topic",)),
    "ripple_alerts_total": ("Counter", ("rule", "severity")),
    "ripple_blocked_touches_total": ("Counter", ("rule",)),
    "ripple_batch_seconds": ("Histogram", ()),
    "ripple_attribution_latency_seconds": ("Histogram", ("clock",)),
    "ripple_consumer_lag": ("Gauge", ("topic",)),
    "ripple_state_keys": ("Gauge", ("table",)),
    "ripple_state_bytes": ("Gauge", ("table",)),
    "ripple_parked_referrers": ("Gauge", ()),
    "ripple_settled_lag_seconds": ("Gauge", ()),
    "ripple_sink_rows_total": ("Counter", ("table",)),
    "ripple_sink_batches_total": ("Counter", ("table",)),
    "ripple_sink_failures_total": ("Counter", ()),
    "ripple_sink_insert_seconds": ("Histogram", ()),
    "ripple_sink_batch_rows": ("Histogram", ()),
    "ripple_sink_backpressure": ("Gauge", ()),
    "ripple_sink_pending_rows": ("Gauge", ()),
    "ripple_sink_visible_seconds": ("Histogram", ()),
}
# label values the rules may match on
FRAUD_RULES = {rule for rule, _ in RULE_SEVERITIES}
LABEL_VALUES = {
    "rule": FRAUD_RULES,
    "severity": {"info", "warning", "high", "critical"},
    "clock": {"arrival", "event"},
    "job": {"ripple-worker", "ripple-sink"},
}
# PromQL words that look like metric names
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "absent",
    "absent_over_time",
    "histogram_quantile",
    "label_replace",
    "time",
    "vector",
    "le",
    "inf",
    "nan",
}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: install the Debian package `{package}` (apt-get install {package})")
    return path


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is not installed in the test environment: add `pyyaml` to the dev extras")
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in _yaml(path)["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


def test_rule_files_exist() -> None:
    assert RULE_FILES, "no rule file in deploy/prometheus/rules"
    assert RULE_TESTS.exists()


def test_promtool_check_config(tmp_path: Path) -> None:
    """Check the config with its rule files; rule_files point into the container, so check a copy."""
    promtool = _tool("promtool", "prometheus")
    text = PROM_CONFIG.read_text()
    container_glob = "/etc/prometheus/rules/*.yml"
    assert container_glob in text, "rule_files must load /etc/prometheus/rules/*.yml (mounted by docker-compose.yml)"
    copy = tmp_path / "prometheus.yml"
    copy.write_text(text.replace(container_glob, str(PROM_DIR / "rules" / "*.yml")))
    result = _run([promtool, "check", "config", str(copy)])
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        assert str(path) in result.stdout + result.stderr, f"{path.name} was not checked with the config"


def test_scrape_config_matches_the_stack() -> None:
    config = _yaml(PROM_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"prometheus", "ripple-worker", "ripple-sink"} <= set(jobs)
    worker = jobs["ripple-worker"]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    assert worker["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": 6066, "refresh_interval": "30s"}], (
        "workers are scaled: find them through Docker's DNS"
    )
    sink = jobs["ripple-sink"]
    assert sink.get("metrics_path", "/metrics") == "/metrics"
    assert sink["static_configs"] == [{"targets": ["sink:8081"]}]


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    result = _run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_tests_load_every_rule_file() -> None:
    tests = _yaml(RULE_TESTS)
    loaded = {(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]}
    assert loaded == {p.resolve() for p in RULE_FILES}


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {r["alert"] for r in _alert_rules()}
    fires: set[str] = set()
    silent: set[str] = set()
    for group in _yaml(RULE_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            name = case["alertname"]
            assert name in alerts, f"test case for unknown alert {name}"
            (fires if case.get("exp_alerts") else silent).add(name)
            for exp in case.get("exp_alerts") or []:
                annotations = exp.get("exp_annotations", {})
                assert {"summary", "runbook"} <= set(annotations), f"{name}: check the annotations, not only labels"
                assert exp.get("exp_labels", {}).get("severity") in SEVERITIES, name
    assert alerts - fires == set(), "alerts without a test case that fires"
    assert alerts - silent == set(), "alerts without a test case that expects no alert"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        runbook = annotations.get("runbook", "")
        steps = re.findall(r"^\s*\d+\. \S", runbook, flags=re.MULTILINE)
        assert len(steps) >= 3, f"{name}: the runbook needs numbered steps (what to check, how, what to do)"
        assert "`" in runbook, f"{name}: the runbook names no command or query"


def test_expected_alerts() -> None:
    """The alert set the on-call documentation refers to, with its severities."""
    severities = {r["alert"]: r["labels"]["severity"] for r in _alert_rules()}
    assert severities == {
        "RippleConsumerLagGrowing": "warning",
        "RippleIngestionStalled": "critical",
        "RippleDeadLetterRate": "warning",
        "RippleSinkFailing": "warning",
        "RippleSinkBackpressure": "critical",
        "RippleNoWorker": "critical",
        "RippleSinkDown": "critical",
        "RippleAttributionSlow": "warning",
        "RippleChainsNotSettling": "warning",
        "RippleFraudAlerts": "warning",
        "RippleCodeLeakage": "warning",
        "RippleConversionSpike": "warning",
        "RippleRefundRate": "warning",
        "RippleViralChain": "info",
    }


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_strings)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_ranges)
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    words = set(re.findall(r"(?<![\w$])[a-zA-Z_:][\w:]*", without_grouping))
    return {w for w in words if w.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", w)}


def _contract_name(metric: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = metric.removesuffix(suffix)
        if base != metric and CONTRACT.get(base, ("",))[0] == "Histogram":
            return base
    return metric


def test_rules_use_only_contract_metrics_and_labels() -> None:
    for rule in _alert_rules():
        expr = rule["expr"]
        for metric in _metric_names(expr):
            if metric == "up":
                continue
            assert _contract_name(metric) in CONTRACT, f"{rule['alert']}: {metric} is not in the metric contract"
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
            if label not in LABEL_VALUES:
                continue
            if op in ("=", "!="):
                options = [value]
            else:  # a regex: check plain alternatives such as "high|critical"
                options = value.split("|") if re.fullmatch(r"[\w|-]+", value) else []
            for option in options:
                assert option in LABEL_VALUES[label], f"{rule['alert']}: {label}={option!r} never occurs"


def _declared_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Metrics declared in streams/metrics.py: name -> (type, label names)."""
    declared: dict[str, tuple[str, tuple[str, ...]]] = {}
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("Counter", "Gauge", "Histogram") or not node.args:
            continue
        name = node.args[0]
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            continue
        labels: ast.expr | None = node.args[2] if len(node.args) > 2 else None
        for kw in node.keywords:
            if kw.arg == "labelnames":
                labels = kw.value
        names = tuple(ast.literal_eval(labels)) if labels is not None else ()
        declared[name.value] = (node.func.id, names)
    return declared


def test_contract_metrics_are_declared_in_streams_metrics() -> None:
    declared = _declared_metrics()
    missing = sorted(set(CONTRACT) - set(declared))
    assert not missing, f"streams/metrics.py does not declare {missing}"
    for name, (kind, labels) in CONTRACT.items():
        assert declared[name] == (kind, labels), f"{name}: declared {declared[name]}, the rules expect {(kind, labels)}"


def test_amtool_check_config() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = _run([amtool, "check-config", str(AM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("severity", sorted(RECEIVERS))
def test_alertmanager_routes_by_severity(severity: str) -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = _run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            "alertname=RippleTest",
            f"severity={severity}",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == RECEIVERS[severity]


def test_every_rule_severity_has_a_route() -> None:
    config = _yaml(AM_CONFIG)
    receivers = {r["name"]: r for r in config["receivers"]}
    routed = {}
    for route in config["route"]["routes"]:
        for matcher in route.get("matchers", []):
            m = re.fullmatch(r'severity="(\w+)"', matcher)
            if m:
                routed[m.group(1)] = route["receiver"]
    assert routed == RECEIVERS
    for name in ("pager", "chat"):
        urls = [c["url"] for c in receivers[name]["webhook_configs"]]
        assert urls and all(u.startswith(("http://", "https://")) for u in urls)
    assert set(receivers["null"]) == {"name"}, "the null receiver sends nothing"
    assert {"alertname", "rule"} <= set(config["route"]["group_by"])
