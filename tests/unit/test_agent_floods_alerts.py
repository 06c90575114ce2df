"""The floods and alerts agents' handlers without a broker: real, unstarted Faust tables
and an Outbox whose producer is never flushed, at the default fraud rules."""

from __future__ import annotations

from typing import Any

from agent_kit import box_for, make_table, rows

from streams import fraud
from streams import referrer as referrer_logic
from streams.agents import alerts as alert_agent
from streams.agents import floods as flood_agent
from streams.outbound import Outbound

RULES = fraud.load_config()
KEY = "h:ip1|cr-jane"


def click(i: int, ts: int) -> dict[str, Any]:
    return {"ts": ts, "event_id": f"c{i}", "visitor_id": f"v{i}", "ip_hash": "h:ip1", "referrer_id": "cr-jane"}


def test_a_burst_over_the_limit_blocks_every_click_of_it_and_raises_one_candidate(outbound: Outbound) -> None:
    table = make_table("flood_state")
    n = RULES.flood_max_clicks + 1
    step = RULES.flood_window_ms // (2 * n)
    box = box_for(table, outbound)
    flood_agent.handle([(3, KEY, click(i, 1_000_000 + i * step)) for i in range(n)], table, box, RULES)
    verdicts = rows(box, "ripple-blocks")
    assert sorted(v["event_id"] for v in verdicts) == sorted(f"c{i}" for i in range(n))
    assert {v["rule"] for v in verdicts} == {"click_flood"}
    (cand,) = rows(box, "ripple-alerts")
    assert (cand["rule"], cand["severity"], cand["subject"]) == ("click_flood", "high", KEY)
    assert table.data[KEY.encode()]["f"]


def test_clicks_within_the_limit_block_nothing(outbound: Outbound) -> None:
    table = make_table("flood_state")
    box = box_for(table, outbound)
    n = RULES.flood_max_clicks
    flood_agent.handle([(3, KEY, click(i, 1_000_000 + i)) for i in range(n)], table, box, RULES)
    assert rows(box, "ripple-blocks") == [] and rows(box, "ripple-alerts") == []


def test_one_alert_per_rule_subject_and_period_a_higher_severity_rewrites_it(outbound: Outbound) -> None:
    table = make_table("alert_state")
    ts = 1_767_225_600_000

    def cand(severity: str, at: int) -> tuple[int, str, dict[str, Any]]:
        _, key, value = referrer_logic.alert("code_leak", severity, "JANE20", at, {"n": 1}, "cr-jane", "JANE20")
        return (1, key, value)

    box = box_for(table, outbound)
    candidates = [cand("warning", ts), cand("warning", ts + 1), cand("high", ts + 2)]
    admitted = alert_agent.handle(candidates, table, box, RULES)
    assert [a["severity"] for a in admitted] == ["warning", "high"]
    written = rows(box, "alerts")
    assert len({r["alert_id"] for r in written}) == 1  # the same alert, rewritten at a higher severity
