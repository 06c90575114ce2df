"""``ripple evaluate``: how well the fraud and leakage rules do, measured on the real stack.

Simulated programs — some with every kind of fraud injected, some honest — are sent
through a fresh ``ripple up`` (embedded broker, worker, sink, chDB). Once everything is in
ClickHouse the alerts are compared with the simulator's labels, per rule:

* an alert is a *true positive* when its rule and subject (the referrer, the code, or the
  ip and referrer of a click flood) match an injected incident;
* precision = true positives / distinct subjects alerted, recall = incidents alerted /
  incidents;
* honest programs must raise nothing above ``info``;
* the money follows the verdicts: blocked orders and last-click credits equal the truth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ripple.broker import free_port
from ripple.config import SECURITY_VARIABLES
from ripple.simulator import SimConfig, generate, interleave, parse_inject, produce
from streams.fraud import RULE_SEVERITIES, load_config

#: targets at the default thresholds on the standard scenario
MIN_PRECISION = 0.90
MIN_RECALL = 0.95
#: the fraud rules scored (viral_chain is informational, not fraud)
RULES = tuple(dict.fromkeys(rule for rule, _ in RULE_SEVERITIES if rule != "viral_chain"))
ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Scenario:
    seeds: tuple[int, ...] = (1, 2)  # programs with every fraud type injected
    honest_seeds: tuple[int, ...] = (11, 12, 13)  # programs without any
    inject: tuple[str, ...] = ("all",)
    inject_count: int = 10
    creators: int = 40
    views: int = 4000
    days: float = 14.0
    start_ms: int = 1_767_225_600_000  # 2026-01-01
    #: messages per second sent: a storefront's pace keeps the topics close to event-time
    #: order (0: as fast as possible — a backlog, where a customer's place in a chain can be
    #: fixed before a restatement moves its first order; see docs/chains.md)
    rate: float = 3000.0


@dataclass
class RuleScore:
    rule: str
    incidents: int
    alerted: int
    true_positives: int
    missed: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.true_positives / self.alerted if self.alerted else 1.0

    @property
    def recall(self) -> float:
        caught = self.incidents - len(self.missed)
        return caught / self.incidents if self.incidents else 1.0

    @property
    def passed(self) -> bool:
        return self.precision >= MIN_PRECISION and self.recall >= MIN_RECALL


@dataclass
class Report:
    scenario: Scenario
    rules: list[RuleScore]
    honest_alerts: dict[str, int]  # severity -> alerts raised on honest programs
    honest_above_info: list[dict[str, Any]]
    blocked_orders: dict[str, Any]  # expected, found, mismatched (+ the first mismatched ids)
    last_click_mismatches: int
    events: int
    seconds: float

    @property
    def passed(self) -> bool:
        return (
            all(r.passed for r in self.rules)
            and not self.honest_above_info
            and self.blocked_orders["mismatched"] == self.blocked_orders["chain_placement"]
            and self.last_click_mismatches == 0
        )

    def table(self) -> str:
        lines = [
            f"{'rule':<18} {'incidents':>9} {'alerted':>8} {'true pos':>8} {'precision':>9} {'recall':>7}",
            "-" * 64,
        ]
        for r in self.rules:
            mark = "" if r.passed else "  below target"
            lines.append(
                f"{r.rule:<18} {r.incidents:>9} {r.alerted:>8} {r.true_positives:>8} "
                f"{r.precision:>9.3f} {r.recall:>7.3f}{mark}"
            )
        lines.append("-" * 64)
        honest = ", ".join(f"{k} {v}" for k, v in sorted(self.honest_alerts.items())) or "none"
        lines.append(f"honest programs {list(self.scenario.honest_seeds)}: alerts {honest}")
        b = self.blocked_orders
        lines.append(
            f"blocked orders: {b['found']} found, {b['expected']} expected, {b['mismatched']} mismatched"
            + (f" ({b['chain_placement']} by a chain placement)" if b["chain_placement"] else "")
            + f"; last-click mismatches {self.last_click_mismatches}"
        )
        lines.extend(f"  {example}" for example in b["examples"])
        lines.append(f"{self.events} events through the stack in {self.seconds:.0f} s")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.__dict__,
            "rules": [
                {
                    "rule": r.rule,
                    "incidents": r.incidents,
                    "alerted": r.alerted,
                    "true_positives": r.true_positives,
                    "precision": r.precision,
                    "recall": r.recall,
                    "missed": r.missed,
                    "false": r.false,
                }
                for r in self.rules
            ],
            "honest_alerts": self.honest_alerts,
            "honest_above_info": self.honest_above_info,
            "blocked_orders": self.blocked_orders,
            "last_click_mismatches": self.last_click_mismatches,
            "passed": self.passed,
        }


def programs(scenario: Scenario, rules: Path | None = None) -> list[tuple[SimConfig, bool]]:
    """One simulated program per seed; codes carry the seed so programs share one stack."""
    inject = parse_inject(",".join(scenario.inject))
    thresholds = load_config(rules) if rules else load_config()
    out = []
    for seed, injected in [*((s, True) for s in scenario.seeds), *((s, False) for s in scenario.honest_seeds)]:
        cfg = SimConfig(
            seed=seed,
            start_ms=scenario.start_ms,
            days=scenario.days,
            creators=scenario.creators,
            views=scenario.views,
            inject=inject if injected else (),
            inject_count=scenario.inject_count,
            code_tag=f"S{seed}",
            fraud=thresholds,
        )
        out.append((cfg, injected))
    return out


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local address we started
        return json.loads(resp.read())


def run(
    scenario: Scenario, data_dir: Path | None = None, say: Callable[[str], None] = print, rules: Path | None = None
) -> Report:
    """Simulate, run the stack, score. ``rules``: the thresholds file the stack runs with
    (RIPPLE_FRAUD_RULES), so the truth applies the same ones."""
    started = time.monotonic()
    sims = [(cfg, injected, generate(cfg)) for cfg, injected in programs(scenario, rules)]
    events = sum(len(ds.events) for _, _, ds in sims)
    say(f"simulated {len(sims)} programs, {events} events")
    with tempfile.TemporaryDirectory(prefix="ripple-evaluate-") as tmp:
        data = data_dir or Path(tmp) / "data"
        run_stack(data, sims, say, scenario.rate)
        report = score(data, sims, scenario)
    report.events = events
    report.seconds = time.monotonic() - started
    return report


def run_stack(
    data: Path, sims: list[tuple[SimConfig, bool, Any]], say: Callable[[str], None], rate: float = 0.0
) -> None:
    """Start ``ripple up`` on ``data``, send every program, wait until all of it is in
    ClickHouse, stop. The chDB files under ``data / "clickhouse"`` are then free to open."""
    env = dict(os.environ)
    for name in ("RIPPLE_WEB_PORT", "RIPPLE_BOOTSTRAP", "RIPPLE_CLICKHOUSE", *SECURITY_VARIABLES):
        env.pop(name, None)  # a stack of its own: embedded broker and chDB, its API open on loopback
    data.mkdir(parents=True, exist_ok=True)
    log = (data / "up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ripple", "up", "--data-dir", str(data), "--web-port", str(free_port())],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    try:
        runtime_file = data / "runtime.json"
        _wait(lambda: runtime_file.exists() or proc.poll() is not None, 90, "ripple up to start")
        if proc.poll() is not None:
            raise RuntimeError(f"ripple up exited with {proc.returncode}; see {data / 'up.log'}")
        runtime = json.loads(runtime_file.read_text())
        say(f"stack up: {runtime['web']}")
        for _cfg, _, ds in sims:
            produce(ds.reference, runtime["bootstrap"])
        # the programs run at the same time: one stream in event time, as a storefront sends it
        produce(interleave([ds.events for _, _, ds in sims]), runtime["bootstrap"], rate=rate)
        expected_orders = sum(ds.truth["counts"]["orders"] for _, _, ds in sims)
        say("sent; waiting for every event to reach ClickHouse")
        _wait_drained(runtime["web"], expected_orders, proc, say)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _wait_drained(web: str, expected_orders: int, proc: subprocess.Popen[bytes], say: Callable[[str], None]) -> None:
    """Every topic read to its end by the worker and the sink, for 5 s in a row."""
    quiet_since: float | None = None
    last_offsets: Any = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ripple up exited with {proc.returncode} while events were processed")
        health = get(f"{web}/healthz")
        totals = get(f"{web}/api/totals")
        lags = {**health.get("topics", {}), **{f"p:{k}": v for k, v in health.get("pipeline", {}).items()}}
        offsets = {k: v["committed"] for k, v in lags.items()}
        idle = all(v["lag"] == 0 for v in lags.values()) and totals.get("orders") == expected_orders
        if idle and offsets == last_offsets:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 5:
                return
        else:
            quiet_since = None
        last_offsets = offsets
        time.sleep(1)
    raise TimeoutError("the pipeline did not drain within 600 s")


def score(data: Path, sims: list[tuple[SimConfig, bool, Any]], scenario: Scenario) -> Report:
    from sinks.clickhouse import ClickHouse

    ch = ClickHouse(f"chdb://{data / 'clickhouse'}")
    try:
        alerts = ch.query_dicts("SELECT alert_id, rule, severity, referrer_id, code, evidence FROM ripple.alerts FINAL")
        rows = ch.query_dicts(
            "SELECT order_id, referrer_id, status, reasons FROM ripple.attributions FINAL "
            "WHERE model = 'last_click' AND credit > 0"
        )
        placed = dict(ch.query("SELECT node_id, parent_id FROM ripple.chain_nodes FINAL WHERE active = 1"))
    finally:
        ch.close()
    credited = {r["order_id"]: r for r in rows}
    subjects: dict[str, set[str]] = {}
    truth: dict[str, set[str]] = {rule: set() for rule in RULES}
    honest_alerts: dict[str, int] = {}
    above_info: list[dict[str, Any]] = []
    expected_blocked = found_blocked = mismatched = lc_mismatches = chain_placement = 0
    examples: list[str] = []
    for cfg, injected, ds in sims:
        mine = [a for a in alerts if _belongs(a, cfg)]
        if not injected:
            for a in mine:
                honest_alerts[a["severity"]] = honest_alerts.get(a["severity"], 0) + 1
                if a["severity"] != "info":
                    above_info.append(a)
        for a in mine:
            if a["rule"] in RULES:
                subjects.setdefault(a["rule"], set()).add(f"{cfg.seed}/{json.loads(a['evidence'])['subject']}")
        for incident in ds.truth.get("incidents", []):
            truth[incident["rule"]].add(f"{cfg.seed}/{incident['subject']}")
        want_blocked = ds.truth.get("blocked_orders", {})
        expected_blocked += len(want_blocked)
        for order_id, expected in ds.truth["last_click"].items():
            row = credited.get(order_id)
            if (row["referrer_id"] if row else None) != (expected["referrer_id"] if expected else None):
                lc_mismatches += 1
            blocked = row["reasons"][0] if row and row["status"] == "blocked" else None
            found_blocked += blocked is not None
            if blocked != want_blocked.get(order_id):
                mismatched += 1
                referrer = row["referrer_id"] if row else ""
                if (
                    referrer in ds.truth["chain_parents"]
                    and placed.get(referrer) != ds.truth["chain_parents"][referrer]
                ):
                    # a ring is judged against the referrer's ancestors: with the referrer in
                    # another place than the truth's, the verdict follows that place
                    chain_placement += 1
                examples.append(f"{order_id}: {blocked or 'not blocked'}, expected {want_blocked.get(order_id)}")
    scores = []
    for rule in RULES:
        alerted = subjects.get(rule, set())
        scores.append(
            RuleScore(
                rule,
                len(truth[rule]),
                len(alerted),
                len(alerted & truth[rule]),
                sorted(truth[rule] - alerted),
                sorted(alerted - truth[rule]),
            )
        )
    return Report(
        scenario,
        scores,
        honest_alerts,
        above_info,
        {
            "expected": expected_blocked,
            "found": found_blocked,
            "mismatched": mismatched,
            "chain_placement": chain_placement,
            "examples": examples[:20],
        },
        lc_mismatches,
        0,
        0.0,
    )


def _belongs(alert: dict[str, Any], cfg: SimConfig) -> bool:
    """Alerts of one program: its referrers' ids carry the program's prefix."""
    return bool(alert["referrer_id"].startswith(f"{cfg.prefix}-"))
