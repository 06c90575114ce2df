"""The visitors agent's handler without a broker: a real, unstarted Faust table, a stream
clock in it and an Outbox whose producer is never flushed, at the default settings."""

from __future__ import annotations

from typing import Any

from agent_kit import box_for, make_table, rows

from ripple.config import Settings as RippleSettings
from streams import fraud
from streams.agents import visitors as visitor_agent
from streams.batch import StreamClock
from streams.metrics import WorkerMetrics
from streams.outbound import Outbound
from streams.records import Block
from streams.reference import ReferenceData

T0 = 1_767_225_600_000
MIN = 60_000
DEFAULTS = RippleSettings()
RULES = fraud.load_config()
WINDOWS = visitor_agent.windows_for(DEFAULTS, RULES)


class Kit:
    def __init__(self, outbound: Outbound) -> None:
        self.table = make_table("visitor_state")
        self.reference = ReferenceData()
        for code, owner in [("jane", "cr-jane"), ("JANE20", "cr-jane"), ("leo", "cr-leo")]:
            self.reference.apply(
                "codes", {"code": code, "referrer_id": owner, "referrer_type": "creator", "issued_ts": 0}
            )
        self.clock = StreamClock(self.table, "visitors")
        cfg = visitor_agent.Settings(WINDOWS, RULES, DEFAULTS.policy, DEFAULTS.commission_model)
        self.handler = visitor_agent.Visitors(self.table, self.clock, self.reference, cfg, WorkerMetrics())
        self.outbound = outbound
        self.offsets: dict[str, int] = {}

    def item(self, topic: str, event: Any, partition: int = 1) -> visitor_agent.Item:
        offset = self.offsets[topic] = self.offsets.get(topic, -1) + 1
        return visitor_agent.Item(topic, partition, event, 0.0, [offset, 0])

    def run(self, items: list[visitor_agent.Item]) -> Any:
        box = box_for(self.table, self.outbound)
        self.handler.handle(items, box, settled_before=0.0, now=T0 / 1000)
        return box


def click(i: int, ts: int, ref: str = "jane", visitor: str = "h:v1", ua: str = "Mozilla/5.0") -> dict[str, Any]:
    return {"event_id": f"c{i}", "ts": ts, "visitor_id": visitor, "ref": ref, "ip_hash": "h:ip1", "user_agent": ua}


def order(i: int, ts: int, visitor: str = "h:v1", code: str | None = None) -> dict[str, Any]:
    ev = {
        "event_id": f"o{i}",
        "ts": ts,
        "order_id": f"ord-{i}",
        "visitor_id": visitor,
        "customer_id": "h:c1",
        "amount_minor": 10_000,
        "currency": "USD",
    }
    if code:
        ev["discount_code"] = code
    return ev


def credits(box: Any, model: str = "last_click") -> dict[str, str]:
    """order id -> credited referrer under ``model`` (rows, not notes)."""
    return {r["order_id"]: r["referrer_id"] for r in rows(box, "ripple-credits") if r.get("model") == model}


def test_a_click_then_an_order_credits_the_clicked_creator_and_sends_the_click_to_the_flood_check(
    outbound: Outbound,
) -> None:
    kit = Kit(outbound)
    box = kit.run([kit.item("clicks", click(1, T0)), kit.item("orders", order(1, T0 + MIN))])
    assert credits(box) == {"ord-1": "cr-jane"}
    (by_ip,) = rows(box, "ripple-clicks")
    assert (by_ip["event_id"], by_ip["referrer_id"], by_ip["ip_hash"]) == ("c1", "cr-jane", "h:ip1")
    assert kit.clock.get(1) == T0 + MIN  # stream time is the highest ts handled
    assert kit.table.data[b"h:v1"].o  # the order stays restatable by a flood verdict


def test_a_code_order_sends_a_redemption_note_to_the_codes_owner(outbound: Outbound) -> None:
    kit = Kit(outbound)
    box = kit.run([kit.item("orders", order(1, T0, code="JANE20"))])
    (note,) = [r for r in rows(box, "ripple-credits") if r.get("type") == "redemption"]
    assert (note["referrer_id"], note["code"], note["order_id"], note["touched"]) == (
        "cr-jane",
        "jane20",  # codes are matched case-blind, kept in lower case
        "ord-1",
        False,
    )


def test_a_flood_verdict_on_the_click_restates_the_order_to_no_credit(outbound: Outbound) -> None:
    kit = Kit(outbound)
    first = kit.run([kit.item("clicks", click(1, T0)), kit.item("orders", order(1, T0 + MIN))])
    (credited,) = {r["version"] for r in rows(first, "ripple-credits") if r.get("credit") == 1.0}
    verdict = {"visitor_id": "h:v1", "event_id": "c1", "ts": T0, "rule": "click_flood"}
    box = kit.run([kit.item(visitor_agent.BLOCKS, ("h:v1", verdict))])
    restated = [r for r in rows(box, "ripple-credits") if r.get("order_id") == "ord-1"]
    assert {r["model"] for r in restated} == {"last_click", "first_click", "linear", "time_decay", "position_based"}
    assert {(r["credit"], r["revenue_minor"]) for r in restated} == {(0.0, 0)}
    assert {r["version"] for r in restated} == {credited + 1}  # a newer version replaces the credit
    assert kit.table.data[b"h:v1"].b == [Block("c1", T0)]


def test_an_event_older_than_max_lateness_is_a_late_event_row(outbound: Outbound) -> None:
    kit = Kit(outbound)
    kit.run([kit.item("orders", order(1, T0 + 60 * MIN, visitor="h:v2"))])
    box = kit.run([kit.item("clicks", click(2, T0))])
    (late,) = rows(box, "late_events")
    assert (late["topic"], late["event_id"], late["lateness_ms"]) == ("clicks", "c2", 60 * MIN)
    assert late["lateness_ms"] > DEFAULTS.max_lateness_ms


def test_a_bot_click_is_no_touch_and_raises_a_bot_alert_candidate(outbound: Outbound) -> None:
    kit = Kit(outbound)
    box = kit.run([kit.item("clicks", click(1, T0, ua="Googlebot/2.1")), kit.item("orders", order(1, T0 + MIN))])
    assert credits(box) == {}
    assert not rows(box, "ripple-clicks")
    (cand,) = rows(box, "ripple-alerts")
    assert (cand["rule"], cand["subject"]) == ("bot_click", "cr-jane")


def test_an_event_read_again_after_a_crash_is_skipped(outbound: Outbound) -> None:
    kit = Kit(outbound)
    first = kit.item("clicks", click(1, T0))
    kit.run([first, kit.item("orders", order(1, T0 + MIN))])
    box = kit.run([first])  # the same position: its effect is in the state already
    assert not rows(box, "ripple-clicks")
    assert not rows(box, "ripple-credits")


def test_codes_not_yet_read_are_noticed() -> None:
    ref = ReferenceData()
    ref.apply("codes", {"code": "jane", "referrer_id": "cr-jane", "referrer_type": "creator", "issued_ts": 0})
    cfg = visitor_agent.Settings(WINDOWS, RULES, DEFAULTS.policy, DEFAULTS.commission_model)
    handler = visitor_agent.Visitors(make_table("visitor_state"), None, ref, cfg, WorkerMetrics())  # type: ignore[arg-type]

    def it(topic: str, event: dict[str, Any]) -> visitor_agent.Item:
        return visitor_agent.Item(topic, 0, event, 0.0, [0, 0])

    assert not handler.unknown_codes([it("clicks", click(1, T0)), it("orders", order(1, T0))])
    assert handler.unknown_codes([it("clicks", click(1, T0, ref="new-link"))])
    assert handler.unknown_codes([it("orders", order(1, T0, code="NEW10"))])
