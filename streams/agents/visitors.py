"""The visitors agent: a task's views, clicks, orders and flood verdicts, taken in event-time
order (:mod:`streams.ordering`), become credits (to the referrers), clicks by ip (to the
floods agent), fraud alert candidates, late-event and conflict rows, and each visitor's new
state. :mod:`streams.attribution` decides; this module routes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams import attribution as attr
from streams import fraud
from streams import referrer as referrer_logic
from streams.batch import Outbox, StreamClock, held
from streams.metrics import WorkerMetrics
from streams.records import RetainedOrder
from streams.reference import ReferenceData

if TYPE_CHECKING:  # the settings are ripple's: streams never imports ripple.config
    from ripple.config import Settings as RippleSettings

#: the topic of flood verdicts, one of the agent's ordered inputs
BLOCKS = "ripple-blocks"


@dataclass
class Settings:
    """What the handler is told once: the windows, the rules and the model commissions use."""

    windows: attr.Windows
    rules: fraud.FraudConfig
    policy: str  # code_wins | click_wins | split (SPEC §3)
    commission_model: str


def windows_for(settings: RippleSettings, rules: fraud.FraudConfig) -> attr.Windows:
    """The attribution windows of the worker's settings and fraud rules."""
    return attr.Windows(
        click_ms=settings.click_window_ms,
        view_ms=settings.view_window_ms,
        max_lateness_ms=settings.max_lateness_ms,
        max_touches=settings.max_touches_per_visitor,
        half_life_ms=settings.half_life_ms,
        block_below_ms=rules.block_below_ms,
        flag_below_ms=rules.flag_below_ms,
        hold_ms=rules.block_hold_ms,
    )


class Outputs:
    """What one batch sends: one message per key and topic."""

    def __init__(self, reference: ReferenceData, cfg: Settings) -> None:
        self.reference = reference
        self.cfg = cfg
        self.credits: dict[str, list[dict[str, Any]]] = {}  # referrer -> rows and notes
        self.by_ip: dict[str, list[dict[str, Any]]] = {}  # ip|referrer -> clicks
        self.alerts: list[referrer_logic.Output] = []

    def credited(self, order: RetainedOrder, result: attr.Result) -> list[dict[str, Any]]:
        """An order's credit rows (and its redemption note to the code's owner)."""
        code_owner = result.code_owner
        if code_owner is not None:
            domain = order.domain
            self.credits.setdefault(code_owner.referrer_id, []).append(
                {
                    "type": "redemption",
                    "referrer_id": code_owner.referrer_id,
                    "code": order.code,
                    "order_id": order.order_id,
                    "ts": order.ts,
                    "touched": result.code_touched,
                    "coupon": fraud.coupon_site(domain, self.cfg.rules),
                    "domain": domain,
                }
            )
        rows = attr.rows_for(order, result, self.reference, self.cfg.windows)
        for row in rows:
            self.credits.setdefault(row["referrer_id"], []).append(row)
            if row["model"] == self.cfg.commission_model and "click_injection" in row["reasons"]:
                self.alerts.append(injection_alert(order, row["referrer_id"], row["touch_event_id"], "warning"))
        for referrer_id, click_id, _ in result.injected:
            self.alerts.append(injection_alert(order, referrer_id, click_id, "high"))
        return rows

    def send(self, box: Outbox) -> None:
        for referrer_id, rows in self.credits.items():
            for row in rows:
                box.add("ripple-credits", referrer_id, row)
        for key, clicks in self.by_ip.items():
            for click in clicks:
                box.add("ripple-clicks", key, click)
        box.emit(self.alerts)


def injection_alert(order: RetainedOrder, referrer_id: str, click_id: str, severity: str) -> referrer_logic.Output:
    evidence = {"order_id": order.order_id, "click_event_id": click_id}
    return referrer_logic.alert("click_injection", severity, referrer_id, order.ts, evidence, referrer_id)


@dataclass
class Item:
    """One event of the task, in event-time order: ``event`` is a decoded raw event, or
    ``(visitor, verdict)`` for a flood verdict; ``position`` is ``[offset, index]`` in its
    message and ``arrived`` the message's broker time (seconds; 0 for a verdict)."""

    topic: str
    partition: int
    event: Any
    arrived: float
    position: list[int]


def verdict_items(msg: Any, records: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, Item]]:
    """The ``(ts, item)`` events of a ``ripple-blocks`` message: a verdict counts at its click's time."""
    return [(v["ts"], Item(msg.topic, msg.partition, (k, v), 0.0, [msg.offset, i])) for i, (k, v) in enumerate(records)]


def event_items(msg: Any, events: list[dict[str, Any]]) -> list[tuple[int, Item]]:
    """The ``(ts, item)`` events of a raw input message (Faust's timestamps are seconds)."""
    return [(e["ts"], Item(msg.topic, msg.partition, e, msg.timestamp, [msg.offset, i])) for i, e in enumerate(events)]


class Visitors:
    """The handler: ``table`` holds each visitor's state, ``clock`` each partition's stream
    time and handled positions; ``reference`` is the codes and creators in force."""

    def __init__(
        self,
        table: Any,
        clock: StreamClock,
        reference: ReferenceData,
        cfg: Settings,
        metrics: WorkerMetrics,
    ) -> None:
        self.table = table
        self.clock = clock
        self.reference = reference
        self.cfg = cfg
        self.metrics = metrics

    def unknown_codes(self, items: Iterable[Item]) -> bool:
        """Whether some click or order names a code or link not in the reference data (a
        code just written that this worker has not read yet)."""
        return any(
            not self.reference.knows(e.get("discount_code") if i.topic == "orders" else e.get("ref"))
            and (i.topic == "clicks" or e.get("discount_code"))
            for i in items
            if i.topic != BLOCKS
            for e in (i.event,)
        )

    def handle(self, items: Iterable[Item], box: Outbox, settled_before: float, now: float | None = None) -> None:
        """Apply ``items`` (in event-time order) through ``box``; an order is kept in its
        visitor's state until ``settled_before`` has passed its processing (no flood
        verdict on a touch before it can still be on its way)."""
        now = time.time() if now is None else now
        windows, clock, metrics = self.cfg.windows, self.clock, self.metrics
        touched: dict[str, tuple[int, attr.State]] = {}
        partitions: set[int] = set()
        outputs = Outputs(self.reference, self.cfg)
        for item in items:
            topic, event, partition, position = item.topic, item.event, item.partition, item.position
            partitions.add(partition)
            if clock.replayed(topic, partition, position):
                continue  # handled before a crash: its effect is in the restored state
            if topic == BLOCKS:  # a click found to be part of a flood: restate what it touched
                visitor, verdict = event
                state = held(touched, self.table, visitor) or attr.new_state()
                touched[visitor] = (partition, state)
                metrics.blocked_touches.labels(verdict["rule"]).inc()
                clock.advance(partition, topic, position)
                for order in attr.add_block(state, verdict["event_id"], verdict["ts"]):
                    result = attr.credit_order(state, order, self.reference, windows, self.cfg.policy)
                    self._credit(order, result, outputs, box)
                continue
            st = clock.get(partition)
            if attr.is_late(event["ts"], st, windows):
                metrics.late_events.labels(topic).inc()
                box.add("late_events", event.get("event_id", ""), attr.late_row(topic, event, st, partition))
            clock.advance(partition, topic, position, event["ts"])
            if topic == "orders":
                metrics.attribution_latency.labels("arrival").observe(max(0.0, now - item.arrived))
                metrics.attribution_latency.labels("event").observe(max(0.0, now - event["ts"] / 1000))
            visitor = event.get("visitor_id")
            if visitor is None:
                continue  # an anonymous view: a fact for the creator, no visitor touch
            if topic == "clicks" and not self.click_checks(event, outputs):
                continue  # a bot: no touch at all
            state = held(touched, self.table, visitor) or attr.new_state()
            touched[visitor] = (partition, state)
            if topic == "orders":
                metrics.orders_attributed.inc()
            for order, result in attr.handle_event(
                topic, event, state, st, windows, self.reference, self.cfg.policy, now
            ):
                self._credit(order, result, outputs, box)
        outputs.send(box)
        for visitor, (partition, state) in touched.items():
            attr.expire(state, clock.get(partition), windows, self.reference.longest_override_ms, settled_before)
            box.put(self.table, partition, visitor, None if attr.is_empty(state) else state)
        clock.persist(partitions, box)

    def _credit(self, order: RetainedOrder, result: attr.Result, outputs: Outputs, box: Outbox) -> None:
        outputs.credited(order, result)
        conflict = attr.conflict_row(order, result, self.cfg.policy)
        if conflict is not None:
            box.add("conflicts", order.order_id, conflict)

    def click_checks(self, event: dict[str, Any], outputs: Outputs) -> bool:
        """Per-click rules: False for a bot (no touch); else the click goes to the flood check."""
        rules = self.cfg.rules
        owner = self.reference.resolve(event["ref"], event["ts"])
        if fraud.is_bot(event.get("user_agent"), rules):
            self.metrics.blocked_touches.labels("bot_click").inc()
            if owner is not None:
                evidence = {"click_event_id": event["event_id"], "user_agent": event.get("user_agent", "")[:200]}
                referrer_id = owner.referrer_id
                outputs.alerts.append(
                    referrer_logic.alert("bot_click", "warning", referrer_id, event["ts"], evidence, referrer_id)
                )
            return False
        if owner is not None and event.get("ip_hash"):
            key = f"{event['ip_hash']}|{owner.referrer_id}"
            outputs.by_ip.setdefault(key, []).append(
                {
                    "ts": event["ts"],
                    "event_id": event["event_id"],
                    "visitor_id": event["visitor_id"],
                    "ip_hash": event["ip_hash"],
                    "referrer_id": owner.referrer_id,
                }
            )
        return True
