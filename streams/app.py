"""The Faust application: thin agents that decode, call the pure logic, and send results.

* ``visitors`` reads ``views``, ``clicks`` and ``orders`` (co-partitioned by visitor) and
  flood verdicts (``ripple-blocks``) in batches: attribution and per-click fraud rules.
* ``floods`` (clicks by ip and referrer), ``referrers`` (credits, notes and lineage claims:
  commissions, chains' nodes, leakage, refund rate, spikes), ``chains`` (per root),
  ``ledger`` (refunds and commission terms per order) and ``alerts`` (one alert per rule,
  subject and cool-down period) each own the state of their key.
* ``reference`` validates ``codes`` and ``creators`` so bad input on them reaches the
  dead-letter topic too; :class:`ReferenceReader` keeps every code and creator in memory
  on every worker (what a GlobalTable does, with an explicit "caught up" barrier).

Every batch collects what it sends in an ``Outbox``: one message per topic and partition,
state written once per key and batch, all of it handed to the producer when the batch ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import faust
import orjson

from ripple.metrics import WorkerMetrics
from ripple.partitioner import partition_of
from streams import attribution as attr
from streams import commission as comm
from streams import faust_fixes, faust_state, fraud, lineage, ordering
from streams import referrer as referrer_logic
from streams.agents import alerts as alert_agent_logic
from streams.agents import chains as chain_agent_logic
from streams.agents import floods as flood_agent_logic
from streams.batch import Outbox, StreamClock, held, keyed_records, keyed_updates
from streams.events import Rejected, decode, message_time
from streams.kafka import producer_config
from streams.ordered_input import OrderedInput
from streams.outbound import PRODUCER_TUNING, Outbound
from streams.reference import ReferenceData
from streams.reference_reader import ReferenceReader
from streams.settle import Settled
from streams.topics import COMPACTED_TOPICS, COPARTITIONED_TOPICS, INTERNAL_TOPICS

if TYPE_CHECKING:  # the settings are ripple's: streams never imports ripple.config
    from ripple.config import Settings

log = logging.getLogger("ripple.worker")

APP_ID = "ripple"
#: topics the worker's agents read (not changelogs, not the compacted reference topics)
STREAM_TOPICS = frozenset({*COPARTITIONED_TOPICS, "refunds", *INTERNAL_TOPICS})
#: how long a partition with records waiting may deliver nothing before it is read again
STUCK_S = 15.0
#: how often a task waiting for a lagging input checks whether its wait is over
IDLE_CHECK_S = 0.05


def create_app(settings: Settings) -> faust.App:
    assert settings.bootstrap, "the worker needs a broker address"
    faust_fixes.install(COMPACTED_TOPICS)
    faust_fixes.install_fetch_wait(settings.fetch_wait_ms)
    app = faust.App(
        APP_ID,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=settings.kafka.faust_credentials(),  # None: PLAINTEXT
        store="memory://",
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.partitions,
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        consumer_group_instance_id=settings.group_instance_id("worker"),  # a static member: see there
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_enabled=True,
        web_tables_enabled=False,  # /table/... would serve visitors' state to anyone who can reach the port
        web_router_enabled=False,  # /router/... (table_route) is not used; it lists the other workers
        producer_linger_ms=5,
        producer_compression_type="lz4",
        producer_max_batch_size=1_048_576,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        stream_wait_empty=False,
        topic_allow_declare=True,
    )
    metrics = WorkerMetrics()
    for rule, severity in fraud.RULE_SEVERITIES:  # every series exists from the start, at 0
        metrics.alerts.labels(rule, severity)
    rules = fraud.load_config(settings.fraud_rules) if settings.fraud_rules else fraud.load_config()
    reference = ReferenceData()
    reader = ReferenceReader(settings.bootstrap, reference, APP_ID, security=settings.kafka)
    app.service(reader)  # type: ignore[arg-type]  # an instance is accepted at run time
    faust_fixes.install_recovery_ends(reader.true_ends)
    windows = attr.Windows(
        click_ms=settings.click_window_ms,
        view_ms=settings.view_window_ms,
        max_lateness_ms=settings.max_lateness_ms,
        max_touches=settings.max_touches_per_visitor,
        half_life_ms=settings.half_life_ms,
        block_below_ms=rules.block_below_ms,
        flag_below_ms=rules.flag_below_ms,
        hold_ms=rules.block_hold_ms,
    )
    batch, within = settings.worker_batch, settings.worker_batch_ms / 1000
    max_idle_s = settings.max_task_idle_ms / 1000

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")

    def state_table(name: str) -> Any:
        return app.Table(
            name,
            default=None,
            key_type=bytes,  # keys travel raw in the changelog: the table derives its serializer from this
            schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
            partitions=settings.partitions,
        )

    # every topic exists before the worker starts (`ripple worker` creates what is missing)
    chains_topic = raw_topic("ripple-chains")
    clicks_by_ip_topic = raw_topic("ripple-clicks")
    alert_candidates_topic = raw_topic("ripple-alerts")
    deadletter_topic = raw_topic("deadletter")
    visitor_state = state_table("visitor_state")
    referrer_state = state_table("referrer_state")
    order_state = state_table("order_state")
    chain_state = state_table("chain_state")
    flood_state = state_table("flood_state")
    alert_state = state_table("alert_state")
    changelog_names = {
        id(table): table.changelog_topic.get_topic_name()
        for table in (visitor_state, referrer_state, order_state, chain_state, flood_state, alert_state)
    }

    processed: dict[tuple[str, int], int] = {}  # last offset handled per topic partition

    # Outputs and changelog records go through librdkafka (see streams.outbound); Faust
    # flushes its own producer before it commits offsets, and now this one too.
    outbound = Outbound(producer_config(settings.bootstrap, settings.kafka, PRODUCER_TUNING))
    faust_fixes.flush_before_commit(app, outbound.flush)

    def new_box() -> Outbox:
        return Outbox(settings.partitions, outbound, metrics, changelog_names, processed)

    async def dead_letter(topic: str, partition: int, offset: int, bad: Iterable[Rejected]) -> None:
        for r in bad:
            metrics.dead_letters.labels(topic).inc()
            await deadletter_topic.send(
                key=f"{topic}:{partition}:{offset}".encode(),
                value=r.raw,
                headers=[
                    ("error", r.error.encode()),
                    ("topic", topic.encode()),
                    ("partition", str(partition).encode()),
                    ("offset", str(offset).encode()),
                    ("index", str(r.index).encode()),
                ],
            )

    async def decode_message(msg: Any) -> list[dict[str, Any]]:
        """A message's valid events; the invalid ones go to the dead-letter topic."""
        metrics.messages_in.labels(msg.topic).inc()
        now_ms = message_time(msg.timestamp * 1000, int(time.time() * 1000))  # Faust: seconds
        good, bad = decode(msg.topic, msg.value, now_ms, settings.max_future_ms)
        if bad:
            await dead_letter(msg.topic, msg.partition, msg.offset, bad)
        metrics.events_in.labels(msg.topic).inc(len(good))
        return good

    async def decode_batch(events: list[Any], box: Outbox) -> list[tuple[str, int, dict[str, Any]]]:
        decoded: list[tuple[str, int, dict[str, Any]]] = []
        for ev in events:
            box.read(ev.message)
            decoded.extend((ev.message.topic, ev.message.partition, e) for e in await decode_message(ev.message))
        return decoded

    #: where each handler is, for ``kill -USR1``: (what it does, since when, events in its batch)
    stage: dict[str, tuple[str, float, int]] = {}

    async def guarded(handler: Any, events: list[Any], lock: asyncio.Lock | None = None) -> None:
        """Run one batch and send what it produced; on an unexpected error stop the process
        before anything is acked.

        Faust acks the events of an agent that raises and restarts it, which would lose
        the batch. Exiting instead leaves the batch uncommitted: the restarted worker
        reads it again (every output is idempotent). ``lock``: held from the first read of
        state to the last changelog record sent, when a timer changes the same table."""
        name = handler.__name__
        try:
            stage[name] = ("waiting for its lock", time.time(), len(events))
            async with lock or contextlib.nullcontext():
                box = new_box()
                stage[name] = ("handling", time.time(), len(events))
                await handler(events, box)
                stage[name] = ("flushing", time.time(), len(events))
                await box.flush()
            stage[name] = ("done; back in Faust's stream (ack, commit, next batch)", time.time(), len(events))
        except Exception:
            log.exception("unexpected error in a batch; exiting so it is read again after a restart")
            logging.shutdown()
            os._exit(70)

    visitor_clock = StreamClock(visitor_state, "visitors")
    order_clock = StreamClock(order_state, "orders")

    # -- visitors: views, clicks, orders (+ fraud verdicts on clicks) -> credits ---------
    # Each task's inputs are taken in event-time order (SPEC §3.5, streams.ordering); a
    # flood verdict counts at its click's time.
    visitors_in = OrderedInput(app, "visitors", (*COPARTITIONED_TOPICS, "ripple-blocks"), max_idle_s, metrics, reader)
    visitor_lock = asyncio.Lock()  # the agent and the timer that ends a task's wait

    @app.agent(raw_topic(*COPARTITIONED_TOPICS, "ripple-blocks"), name="visitors")
    async def visitor_agent(stream: Any) -> None:
        visitors_in.attach(stream)
        async for events in stream.noack_take(batch, within=within):
            await guarded(receive_visitor_batch, events, visitor_lock)

    async def receive_visitor_batch(events: list[Any], box: Outbox) -> None:
        for ev in events:
            msg = ev.message
            items: list[tuple[int, Any]]
            if msg.topic == "ripple-blocks":
                records = keyed_records(msg)
                items = [(v["ts"], (msg.topic, (k, v), 0.0, [msg.offset, i])) for i, (k, v) in enumerate(records)]
            else:  # Faust timestamps are seconds
                good = await decode_message(msg)
                items = [(e["ts"], (msg.topic, e, msg.timestamp, [msg.offset, i])) for i, e in enumerate(good)]
            for done in visitors_in.add(ev, items):
                box.finish(visitors_in, done)
        await drain_visitors(events, box)

    async def drain_visitors(events: list[Any], box: Outbox) -> None:
        await handle_visitor_items(visitors_in.take(), box)
        visitors_in.regulate()

    class VisitorOutputs:
        """What one batch of the visitor agent sends: one message per key and topic."""

        def __init__(self) -> None:
            self.credits: dict[str, list[dict[str, Any]]] = {}  # referrer -> rows and notes
            self.by_ip: dict[str, list[dict[str, Any]]] = {}  # ip|referrer -> clicks
            self.alerts: list[referrer_logic.Output] = []

        def credited(self, order: list[Any], result: attr.Result) -> list[dict[str, Any]]:
            code_owner = result.code_owner
            if code_owner is not None:
                domain = order[attr.O_DOMAIN] if len(order) > attr.O_DOMAIN else ""
                self.credits.setdefault(code_owner.referrer_id, []).append(
                    {
                        "type": "redemption",
                        "referrer_id": code_owner.referrer_id,
                        "code": order[attr.O_CODE],
                        "order_id": order[attr.O_ID],
                        "ts": order[attr.O_TS],
                        "touched": result.code_touched,
                        "coupon": fraud.coupon_site(domain, rules),
                        "domain": domain,
                    }
                )
            rows = attr.rows_for(order, result, reference, windows)
            for row in rows:
                self.credits.setdefault(row["referrer_id"], []).append(row)
                if row["model"] == settings.commission_model and "click_injection" in row["reasons"]:
                    self.alerts.append(injection_alert(order, row["referrer_id"], row["touch_event_id"], "warning"))
            for referrer_id, click_id, _ in result.injected:
                self.alerts.append(injection_alert(order, referrer_id, click_id, "high"))
            return rows

    def injection_alert(order: list[Any], referrer_id: str, click_id: str, severity: str) -> referrer_logic.Output:
        evidence = {"order_id": order[attr.O_ID], "click_event_id": click_id}
        return referrer_logic.alert("click_injection", severity, referrer_id, order[attr.O_TS], evidence, referrer_id)

    async def handle_visitor_items(taken: list[ordering.Taken], box: Outbox) -> None:
        """A task's events in event-time order: views, clicks and orders credit orders, a
        flood verdict on a click restates the orders it touched."""
        if not taken:
            return
        started = time.perf_counter()
        stage["handle_visitor_items"] = ("waiting for the reference data", time.time(), len(taken))
        await reader.ready()  # never credit with half-loaded codes (a worker just started)
        if any(
            not reference.knows(e.get("discount_code") if t == "orders" else e.get("ref"))
            and (t == "clicks" or e.get("discount_code"))
            for t, e, _, _ in (item.event for item in taken)
            if t != "ripple-blocks"
        ):
            stage["handle_visitor_items"] = ("reading new codes", time.time(), len(taken))
            await reader.sync()  # a code this worker has not seen yet may just have been written
            stage["handle_visitor_items"] = ("handling", time.time(), len(taken))
        touched: dict[str, tuple[int, attr.State]] = {}
        outputs = VisitorOutputs()
        now = time.time()
        for item in taken:
            for done in item.done:
                box.finish(visitors_in, done.token)
            topic, event, arrived, position = item.event
            partition = item.partition
            if visitor_clock.replayed(topic, partition, position):
                continue  # handled before a crash: its effect is in the restored state
            if topic == "ripple-blocks":  # a click found to be part of a flood: restate what it touched
                visitor, verdict = event
                state = held(touched, visitor_state, visitor) or attr.new_state()
                touched[visitor] = (partition, state)
                metrics.blocked_touches.labels(verdict["rule"]).inc()
                visitor_clock.advance(partition, topic, position)
                for order in attr.add_block(state, verdict["event_id"], verdict["ts"]):
                    result = attr.credit_order(state, order, reference, windows, settings.policy)
                    outputs.credited(order, result)
                    conflict = attr.conflict_row(order, result, settings.policy)
                    if conflict is not None:
                        box.add("conflicts", order[attr.O_ID], conflict)
                continue
            st = visitor_clock.get(partition)
            if attr.is_late(event["ts"], st, windows):
                metrics.late_events.labels(topic).inc()
                box.add(
                    "late_events",
                    event.get("event_id", ""),
                    {
                        "topic": topic,
                        "event_id": event["event_id"],
                        "ts": event["ts"],
                        "stream_time": st,
                        "lateness_ms": st - event["ts"],
                        "partition": partition,
                    },
                )
            visitor_clock.advance(partition, topic, position, event["ts"])
            if topic == "orders":
                metrics.attribution_latency.labels("arrival").observe(max(0.0, now - arrived))
                metrics.attribution_latency.labels("event").observe(max(0.0, now - event["ts"] / 1000))
            visitor = event.get("visitor_id")
            if visitor is None:
                continue  # an anonymous view: a fact for the creator, no visitor touch
            if topic == "clicks" and not click_checks(event, outputs):
                continue  # a bot: no touch at all
            state = held(touched, visitor_state, visitor) or attr.new_state()
            touched[visitor] = (partition, state)
            if topic == "orders":
                metrics.orders_attributed.inc()
            for order, result in attr.handle_event(topic, event, state, st, windows, reference, settings.policy, now):
                outputs.credited(order, result)
                conflict = attr.conflict_row(order, result, settings.policy)
                if conflict is not None:
                    box.add("conflicts", order[attr.O_ID], conflict)
        for referrer_id, rows in outputs.credits.items():
            for row in rows:
                box.add("ripple-credits", referrer_id, row)
        for key, clicks in outputs.by_ip.items():
            for click in clicks:
                box.add("ripple-clicks", key, click)
        box.emit(outputs.alerts)
        for visitor, (partition, state) in touched.items():
            # an order stays until no flood verdict on a touch before it can be on its way
            attr.expire(state, visitor_clock.get(partition), windows, reference.longest_override_ms, settled.before)
            box.put(visitor_state, partition, visitor, None if attr.is_empty(state) else state)
        visitor_clock.persist({item.partition for item in taken}, box)
        metrics.batch_seconds.observe(time.perf_counter() - started)

    def click_checks(event: dict[str, Any], outputs: VisitorOutputs) -> bool:
        """Per-click rules: False for a bot (no touch); else the click goes to the flood check."""
        owner = reference.resolve(event["ref"], event["ts"])
        if fraud.is_bot(event.get("user_agent"), rules):
            metrics.blocked_touches.labels("bot_click").inc()
            if owner is not None:
                evidence = {"click_event_id": event["event_id"], "user_agent": event.get("user_agent", "")[:200]}
                outputs.alerts.append(
                    referrer_logic.alert(
                        "bot_click", "warning", owner.referrer_id, event["ts"], evidence, owner.referrer_id
                    )
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

    # -- clicks per ip and referrer -> flood verdicts back to the visitors --------------
    @app.agent(clicks_by_ip_topic, name="floods")
    async def flood_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(handle_flood_batch, events)

    async def handle_flood_batch(events: list[Any], box: Outbox) -> None:
        flood_agent_logic.handle(keyed_updates(events, box), flood_state, box, rules)

    # -- alert candidates -> one alert per rule, subject and cool-down period ----------
    @app.agent(alert_candidates_topic, name="alerts")
    async def alert_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(handle_alert_batch, events)

    async def handle_alert_batch(events: list[Any], box: Outbox) -> None:
        for row in alert_agent_logic.handle(keyed_updates(events, box), alert_state, box, rules):
            metrics.alerts.labels(row["rule"], row["severity"]).inc()

    # -- referrers: credits and lineage claims -> attributions, terms, chain updates ----
    def plan_of(referrer_id: str) -> comm.Plan:
        return comm.plan_from(reference.plan(referrer_id))

    def identities_of(referrer_id: str) -> list[str]:
        creator = reference.creators.get(referrer_id)
        return lineage.creator_identities(creator) if creator else []

    def followers_of(referrer_id: str) -> int | None:
        creator = reference.creators.get(referrer_id)
        followers = creator.get("followers") if creator else None
        return int(followers) if isinstance(followers, int) else None

    ctx = referrer_logic.Context(plan_of, identities_of, settings.commission_model, rules, followers_of)

    @app.agent(raw_topic("ripple-credits", "ripple-lineage"), name="referrers")
    async def referrer_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(handle_referrer_batch, events, referrer_lock)

    async def handle_referrer_batch(events: list[Any], box: Outbox) -> None:
        # plans, creators' identities (self-referral) and followers come from the reference
        # data: a worker that just started must not book a credit before it has all of it
        await reader.ready()
        touched: dict[str, tuple[int, dict[str, Any]]] = {}
        now = time.time()
        for ev in events:
            msg = ev.message
            box.read(msg)
            for key, one in keyed_records(msg):
                state = held(touched, referrer_state, key) or referrer_logic.new_state()
                touched[key] = (msg.partition, state)
                if msg.topic == "ripple-lineage":
                    box.emit(referrer_logic.on_claim(state, one, now))
                else:
                    box.emit(referrer_logic.on_credit(state, one, ctx, now, settled.before))
                if "parked" in state:
                    parked[key] = msg.partition
        for key, (partition, state) in touched.items():
            box.put(referrer_state, partition, key, state)

    parked: dict[str, int] = {}  # referrers with credits waiting for their own claim -> partition
    parked_loaded = False
    # where a claim can still be on its way from: inputs, verdicts that restate, credits, claims
    upstream = {*COPARTITIONED_TOPICS, "ripple-clicks", "ripple-blocks", "ripple-credits", "ripple-lineage"}

    settled = Settled(reader, lambda: app.producer.flush(), upstream, processed)
    started_at = time.time()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def forget_buffered(sender: Any, *args: Any, **kwargs: Any) -> None:
        # the consumer reads every assigned partition again from its committed offset
        visitors_in.forget()
        ledger_in.forget()
        visitor_clock.forget()
        order_clock.forget()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def rescan_after_recovery(sender: Any, **kwargs: Any) -> None:
        # tables were just recovered for a new assignment: rebuild the in-memory indexes
        nonlocal parked_loaded
        parked_loaded = False
        pending_loaded.clear()
        visitor_clock.forget()
        order_clock.forget()

    # The referrer agent and the release timer change referrer_state; a flush waits for the
    # broker, so without this one's changelog record (a snapshot) could follow the other's.
    referrer_lock = asyncio.Lock()

    @app.timer(0.05)  # cheap: a round only compares offsets this worker already knows
    async def release_parked() -> None:
        if not await settled_now():
            return
        async with referrer_lock:
            box = new_box()
            release_settled(box)
            await box.flush()

    async def settled_now() -> bool:
        """True when the settled time moved and some credit is parked."""
        nonlocal parked_loaded
        if not reader.is_ready():  # releasing books credits, which needs the reference data
            return False
        if not parked_loaded:  # after a start: find parked credits in the recovered table
            parked_loaded = True
            for key, state in list(referrer_state.data.items()):
                if isinstance(state, dict) and "parked" in state:
                    parked.setdefault(key.decode(), -1)
        metrics.parked.set(len(parked))
        metrics.settled_lag.set(time.time() - (settled.before or started_at))
        # a customer's place is settled only once no claim can be on its way
        return await settled.advance() and bool(parked)

    def release_settled(box: Outbox) -> None:
        # customers with a place first: booking their credits sends claims to their friends;
        # one without a place may become a root only once no parked referrer (on any worker)
        # holds it — a hold ends after the claim it may bring (referrer.holds)
        states = {key: referrer_state.data.get(key.encode()) for key in parked}
        for key, partition in sorted(parked.items(), key=lambda kv: "lin" not in (states[kv[0]] or {})):
            state = states[key]
            if state is None or "parked" not in state:
                parked.pop(key, None)
                continue
            if "lin" not in state and referrer_logic.holds(state):
                continue
            outputs = referrer_logic.release(state, ctx, settled.before)
            if outputs or "parked" not in state:
                box.emit(outputs)
                parked.pop(key, None)
                p = partition if partition >= 0 else partition_of(key, settings.partitions)
                box.put(referrer_state, p, key, state)

    # -- chains: node and revenue updates per root -> chains rows, viral alerts ---------
    @app.agent(chains_topic, name="chains")
    async def chain_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(handle_chain_batch, events)

    async def handle_chain_batch(events: list[Any], box: Outbox) -> None:
        chain_agent_logic.handle(keyed_updates(events, box), chain_state, box)

    # -- orders: refunds + commission terms -> ledger ----------------------------------
    # Refunds and commission terms are taken in event-time order per task, as the visitors'
    # inputs are: the ledger's clock (commission holds) moves only as they are processed.
    ledger_in = OrderedInput(app, "ledger", ("refunds", "ripple-commissions"), max_idle_s, metrics, reader)
    ledger_lock = asyncio.Lock()

    @app.agent(raw_topic("refunds", "ripple-commissions"), name="ledger")
    async def ledger_agent(stream: Any) -> None:
        ledger_in.attach(stream)
        async for events in stream.noack_take(batch, within=within):
            await guarded(receive_ledger_batch, events, ledger_lock)

    async def receive_ledger_batch(events: list[Any], box: Outbox) -> None:
        for ev in events:
            msg = ev.message
            items: list[tuple[int, Any]]
            records = await decode_message(msg) if msg.topic == "refunds" else [v for _, v in keyed_records(msg)]
            items = [(r["ts"], (r, [msg.offset, i])) for i, r in enumerate(records)]
            for done in ledger_in.add(ev, items):
                box.finish(ledger_in, done)
        await drain_ledger(events, box)

    async def drain_ledger(events: list[Any], box: Outbox) -> None:
        await handle_ledger_items(ledger_in.take(), box)
        ledger_in.regulate()

    @app.task
    async def inputs_waiting() -> None:
        """Process what a task of either ordered agent may take once its wait for a lagging
        input is over (no batch may come meanwhile)."""
        ordered = ((visitors_in, visitor_lock, drain_visitors), (ledger_in, ledger_lock, drain_ledger))
        while not app.should_stop:
            await asyncio.sleep(IDLE_CHECK_S)
            for source, lock, drain in ordered:
                if source.has_buffered() and not lock.locked():
                    await guarded(drain, [], lock)

    async def handle_ledger_items(taken: list[ordering.Taken], box: Outbox) -> None:
        items = []
        for t in taken:
            for done in t.done:
                box.finish(ledger_in, done.token)
            item, position = t.event
            if not order_clock.replayed(t.topic, t.partition, position):
                items.append((t.topic, t.partition, item, position))
        touched: dict[str, tuple[int, dict[str, Any]]] = {}
        changed: set[str] = set()
        for topic, partition, item, position in items:
            order_id = item["order_id"]
            ledger = held(touched, order_state, order_id) or comm.new_ledger(partition)
            touched[order_id] = (partition, ledger)
            if topic == "refunds":
                if comm.ledger_add_refund(ledger, item):
                    changed.add(order_id)
            elif comm.ledger_set_commission(ledger, item):
                changed.add(order_id)
            order_clock.advance(partition, topic, position, item["ts"])
        for partition in {p for p, _ in touched.values()}:
            for order_id in pending_due(partition):
                ledger = held(touched, order_state, order_id)
                if ledger is None:
                    continue
                ledger["approved"] = True
                touched[order_id] = (partition, ledger)
                changed.add(order_id)
        for order_id in sorted(changed):
            partition, ledger = touched[order_id]
            if ledger["c"]:
                for e in comm.ledger_entries(order_id, ledger):
                    box.add("commission_ledger", e["entry_id"], e)
                end = comm.hold_end(ledger)
                if not ledger["approved"] and end is not None:
                    pending.setdefault(partition, {})[order_id] = end
                if ledger["r"]:  # the referrers' refund rates are kept at their keys
                    refund_ts = max(r[0] for r in ledger["r"].values())
                    for key, terms in ledger["c"].items():
                        referrer_id, _, kind = key.rpartition("|")
                        if kind == "commission" and terms[0] > 0:
                            note = {"type": "refund", "referrer_id": referrer_id, "order_id": order_id}
                            box.add("ripple-credits", referrer_id, {**note, "ts": refund_ts})
        for order_id, (partition, ledger) in touched.items():
            box.put(order_state, partition, order_id, ledger)
        order_clock.persist((t.partition for t in taken), box)

    pending: dict[int, dict[str, int]] = {}  # partition -> order_id -> hold end (event time)
    pending_loaded: set[int] = set()

    def pending_due(partition: int) -> list[str]:
        if partition not in pending_loaded:
            # after a start or a rebalance: rebuild the index from the recovered table
            pending_loaded.add(partition)
            for key, ledger in list(order_state.data.items()):
                if isinstance(ledger, dict) and ledger.get("p") == partition and not ledger.get("approved"):
                    end = comm.hold_end(ledger)
                    if end is not None:
                        pending.setdefault(partition, {})[key.decode()] = end
        now = order_clock.get(partition)
        due = [o for o, end in pending.get(partition, {}).items() if end <= now]
        for o in due:
            del pending[partition][o]
        return due

    # -- reference topics: validated for the dead-letter topic --------------------------
    @app.agent(raw_topic("codes", "creators"), name="reference")
    async def reference_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(decode_batch, events)

    @app.task
    async def dump_tasks_on_signal() -> None:
        """``kill -USR1`` a worker to log where every task waits (a stalled agent shows here)."""

        def awaits(coro: Any) -> list[str]:
            frames: list[str] = []
            while coro is not None and len(frames) < 40:
                for attr_name in ("cr_frame", "gi_frame", "ag_frame"):
                    frame = getattr(coro, attr_name, None)
                    if frame is not None:
                        code = frame.f_code
                        frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{frame.f_lineno}")
                        break
                nxt = None
                for attr_name in ("cr_await", "gi_yieldfrom", "ag_await"):
                    nxt = nxt or getattr(coro, attr_name, None)
                coro = nxt.get_coro() if isinstance(nxt, asyncio.Task) else nxt
            return frames

        def dump() -> None:
            now = time.time()
            for name, (label, since, n) in sorted(stage.items()):
                log.warning("agent %s: %s for %.1f s (batch of %d)", name, label, now - since, n)
            for task in asyncio.all_tasks():
                log.warning("task %s: %s", task.get_name(), " -> ".join(awaits(task.get_coro())) or "(done)")
            consumer: Any = app.consumer
            log.warning("paused: %s", sorted(map(str, faust_state.paused(consumer))))
            log.warning("active: %s", sorted(map(str, faust_state.active(consumer) or ())))
            log.warning("buffered: %s", sorted(map(str, faust_state.buffered(consumer))))
            log.warning("read offsets: %s", {str(tp): o for tp, o in faust_state.read_offsets(consumer).items()})
            log.warning("expected: %s", {str(tp): o for tp, o in faust_state.expected(consumer).items()})
            log.warning("processed: %s", dict(sorted(processed.items())))
            # Faust commits a partition only up to its first offset not acked
            acked = {str(tp): r for tp, r in faust_state.acked_ranges(consumer).items()}
            log.warning("acked, not yet committed (first, last, count): %s", acked)
            log.warning(
                "committed by this worker: %s", {str(tp): o for tp, o in faust_state.committed(consumer).items()}
            )
            log.warning("assignment: %s", sorted(map(str, consumer.assignment())))

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)

    stuck_since: dict[Any, tuple[int, float]] = {}  # partition -> (expected offset, since when)
    lost_since: dict[Any, tuple[int, int, float]] = {}  # partition -> (first unhandled, expected, since when)

    def unhandled_from(consumer: Any, tp: Any, want: int | None) -> int | None:
        """The first offset of ``tp`` that was delivered but is neither acknowledged by a
        handler, nor in a handler's hands, nor waiting in a stream's queue; None if none."""
        if want is None:
            return None
        committed = faust_state.committed(consumer).get(tp)
        first = committed if committed is not None else faust_state.base(consumer).get(tp)
        if first is None or first >= want:
            return None
        acked = faust_state.acked(consumer, tp)
        while first in acked:
            first += 1
        if first >= want:
            return None
        if faust_state.held_by_a_handler(consumer, tp):
            return None  # a handler has it
        if faust_state.queued(app, tp):
            return None  # waiting for its stream
        return int(first)

    @app.timer(5.0)
    async def unstick_partitions() -> None:
        """A watchdog for Faust's flow control: a partition with records waiting whose
        expected offset has not moved for ``STUCK_S`` is sought back to that offset and
        fetched again. Seen under rebalances and restarts: the fetcher idle while records
        of an assigned partition waited, never delivered (a partition left out of the
        fetch set, or records dropped while it was). Reading again from the expected
        offset repeats nothing: records behind it are dropped (streams.faust_fixes).
        Likewise a partition whose records were delivered but, for ``STUCK_S``, neither
        acknowledged nor held by a handler nor queued (``unhandled_from``) is read again
        from the first such record: outputs are idempotent, so a false alarm costs only work."""
        consumer: Any = app.consumer
        if app.in_recovery or not consumer.flow_active:
            stuck_since.clear()
            return
        expected = faust_state.expected(consumer)
        tps = [tp for tp in consumer.assignment() if tp.topic in STREAM_TOPICS and tp in expected]
        if not tps:
            return
        ends = await reader.end_offsets(tps)
        now = time.monotonic()
        for tp in tps:
            want = expected.get(tp)
            lost = unhandled_from(consumer, tp, want)
            if lost is not None and want is not None:
                # delivered, yet never reached a handler (dropped by Faust's stream, e.g.
                # while its flow was off) and no seek brought it back
                since = lost_since.get(tp)
                if since is None or since[:2] != (lost, want):
                    lost_since[tp] = (lost, want, now)
                elif now - since[2] >= STUCK_S:
                    log.warning("%s: offsets from %d were delivered but never handled; reading again", tp, lost)
                    metrics.unstuck.labels(tp.topic).inc()
                    await consumer.seek(tp, lost)
                    lost_since.pop(tp, None)
                    continue
            else:
                lost_since.pop(tp, None)
            if want is None or ends[tp] <= want or tp in faust_state.paused(consumer):
                stuck_since.pop(tp, None)
                continue
            seen = stuck_since.get(tp)
            if seen is None or seen[0] != want:
                stuck_since[tp] = (want, now)
            elif now - seen[1] >= STUCK_S:
                idle = now - seen[1]
                log.warning("%s: no record delivered from offset %d for %.0f s; reading it again", tp, want, idle)
                metrics.unstuck.labels(tp.topic).inc()
                faust_state.fetch(consumer, tp)
                await consumer.seek(tp, want)
                stuck_since[tp] = (want, now)

    @app.timer(5.0)
    async def sample_gauges() -> None:
        """Lag on this worker's partitions and the size of its state, for /metrics."""
        for name, table in (
            ("visitor_state", visitor_state),
            ("referrer_state", referrer_state),
            ("order_state", order_state),
            ("chain_state", chain_state),
            ("flood_state", flood_state),
            ("alert_state", alert_state),
        ):
            metrics.state_keys.labels(name).set(len(table.data))
            sample = list(itertools.islice(table.data.items(), 500))
            if sample:
                size = sum(len(k) + len(orjson.dumps(v)) for k, v in sample) / len(sample)
                metrics.state_bytes.labels(name).set(round(size * len(table.data)))
        tps = [tp for tp in app.consumer.assignment() if not tp.topic.endswith("-changelog")]
        if not tps:
            return
        lag: dict[str, int] = {}
        committed = faust_state.committed(app.consumer)
        for tp, high in (await app.consumer.highwaters(*tps)).items():
            done = processed.get((tp.topic, tp.partition))
            # before this worker has read from a partition: its group's committed offset
            behind = max(0, high - (done + 1 if done is not None else committed.get(tp) or 0))
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
        metrics.consumer_lag.clear()  # topics moved to another worker leave no stale value
        for topic, behind in lag.items():
            metrics.consumer_lag.labels(topic).set(behind)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # each task's stream time and wait as of this scrape
        metrics.stream_time_lag.clear()
        metrics.task_idle.clear()
        for name, (partitions, status) in task_status(app.consumer.assignment()).items():
            for p in partitions:
                metrics.task_idle.labels(name, str(p)).set(status[p]["idle_seconds"])
                if status[p]["stream_time"]:
                    metrics.stream_time_lag.labels(name, str(p)).set(status[p]["stream_time_lag_seconds"])
        body, content_type = metrics.render()
        return web.bytes(body, content_type=content_type)

    def task_status(tps: Iterable[Any]) -> dict[str, tuple[list[int], dict[int, dict[str, Any]]]]:
        """Per agent whose inputs are ordered: its tasks (partitions assigned here) and, for
        each, stream time, its lag behind the wall clock, and its wait for a lagging input."""
        now_ms = time.time() * 1000
        out = {}
        for source, first_topic, clock in ((visitors_in, "views", visitor_clock), (ledger_in, "refunds", order_clock)):
            partitions = sorted(tp.partition for tp in tps if tp.topic == first_topic)
            status = {}
            for p in partitions:
                st = clock.get(p)
                lag = round((now_ms - st) / 1000, 3) if st else None
                status[p] = {"stream_time": st, "stream_time_lag_seconds": lag, **source.status(p)}
            out[source.name] = (partitions, status)
        return out

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        tps = app.consumer.assignment()
        assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in tps)
        tasks = {name: {str(p): s for p, s in status.items()} for name, (_, status) in task_status(tps).items()}
        return web.json({"status": "ok", "assigned": assignment, "stream_time": visitor_clock.times, "tasks": tasks})

    return app
