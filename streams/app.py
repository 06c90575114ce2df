"""The Faust application: builds the App, its topics and tables, and wires each agent's
stream to its handler. What the agents do lives in :mod:`streams.agents` (one module per
agent, plain handlers over explicit state and an Outbox); how a batch runs, is sent and is
acknowledged in :mod:`streams.batch`; event-time ordered inputs in
:mod:`streams.ordered_input`; the cross-worker settle protocol in :mod:`streams.settle`;
every Faust patch and read of Faust's private state in :mod:`streams.faust_fixes` and
:mod:`streams.faust_state`; the watchdog and ``kill -USR1`` dump in :mod:`streams.watchdog`;
``/metrics`` and ``/healthz`` in :mod:`streams.health`.

* ``visitors`` reads ``views``, ``clicks`` and ``orders`` (co-partitioned by visitor) and
  flood verdicts (``ripple-blocks``) in event-time order per task: attribution and
  per-click fraud rules.
* ``floods`` (clicks by ip and referrer), ``referrers`` (credits, notes and lineage claims:
  commissions, chains' nodes, leakage, refund rate, spikes), ``chains`` (per root),
  ``ledger`` (refunds and commission terms per order, in event-time order) and ``alerts``
  (one alert per rule, subject and cool-down period) each own the state of their key.
* ``reference`` validates ``codes`` and ``creators`` so bad input on them reaches the
  dead-letter topic too; :class:`ReferenceReader` keeps every code and creator in memory
  on every worker (what a GlobalTable does, with an explicit "caught up" barrier).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

import faust

from streams import faust_fixes, fraud, health, watchdog
from streams.agents import alerts as alert_agent_logic
from streams.agents import chains as chain_agent_logic
from streams.agents import floods as flood_agent_logic
from streams.agents import ledger as ledger_logic
from streams.agents import referrers as referrer_agent_logic
from streams.agents import visitors as visitor_logic
from streams.batch import Guard, Intake, Outbox, StreamClock, keyed_records, keyed_updates, topic_updates
from streams.kafka import producer_config
from streams.metrics import WorkerMetrics
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
    windows = visitor_logic.windows_for(settings, rules)
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

    intake = Intake(deadletter_topic.send, metrics, settings.max_future_ms)
    decode_message = intake.decode
    guarded = Guard(new_box)
    stage = guarded.stage

    visitor_clock = StreamClock(visitor_state, "visitors")
    order_clock = StreamClock(order_state, "orders")

    # -- visitors: views, clicks, orders (+ fraud verdicts on clicks) -> credits ---------
    # Each task's inputs are taken in event-time order (SPEC §3.5, streams.ordering); a
    # flood verdict counts at its click's time.
    visitors_in = OrderedInput(
        app,
        "visitors",
        (*COPARTITIONED_TOPICS, "ripple-blocks"),
        max_idle_s,
        metrics,
        reader,
        backlog_ms=settings.max_lateness_ms,
        idle_topics=COPARTITIONED_TOPICS,
    )
    visitor_lock = asyncio.Lock()  # the agent and the timer that ends a task's wait

    @app.agent(raw_topic(*COPARTITIONED_TOPICS, "ripple-blocks"), name="visitors")
    async def visitor_agent(stream: Any) -> None:
        visitors_in.attach(stream)
        async for events in stream.noack_take(batch, within=within):
            await guarded(receive_visitor_batch, events, visitor_lock)

    async def receive_visitor_batch(events: list[Any], box: Outbox) -> None:
        await visitors_in.receive(events, box, visitor_items)
        await drain_visitors(events, box)

    async def visitor_items(msg: Any) -> list[tuple[int, visitor_logic.Item]]:
        if msg.topic == visitor_logic.BLOCKS:
            return visitor_logic.verdict_items(msg, keyed_records(msg))
        return visitor_logic.event_items(msg, await decode_message(msg))

    async def drain_visitors(events: list[Any], box: Outbox) -> None:
        await handle_visitor_items(visitors_in.taken(box), box)
        visitors_in.regulate()

    visitors = visitor_logic.Visitors(
        visitor_state,
        visitor_clock,
        reference,
        visitor_logic.Settings(windows, rules, settings.policy, settings.commission_model),
        metrics,
    )

    async def handle_visitor_items(items: list[visitor_logic.Item], box: Outbox) -> None:
        """A task's events in event-time order (streams.agents.visitors)."""
        if not items:
            return
        started = time.perf_counter()
        guarded.mark("handle_visitor_items", "waiting for the reference data", len(items))
        await reader.ready()  # never credit with half-loaded codes (a worker just started)
        if visitors.unknown_codes(items):
            guarded.mark("handle_visitor_items", "reading new codes", len(items))
            await reader.sync()  # a code this worker has not seen yet may just have been written
        guarded.mark("handle_visitor_items", "handling", len(items))
        visitors.handle(items, box, settled.before)
        guarded.mark("handle_visitor_items", "handled; its batch flushes next", len(items))
        metrics.batch_seconds.observe(time.perf_counter() - started)

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
    referrers = referrer_agent_logic.Referrers(
        referrer_state,
        referrer_agent_logic.context(reference, settings.commission_model, rules),
        settings.partitions,
    )

    @app.agent(raw_topic("ripple-credits", referrer_agent_logic.CLAIMS), name="referrers")
    async def referrer_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(handle_referrer_batch, events, referrer_lock)

    async def handle_referrer_batch(events: list[Any], box: Outbox) -> None:
        # plans, creators' identities (self-referral) and followers come from the reference
        # data: a worker that just started must not book a credit before it has all of it
        await reader.ready()
        referrers.handle(topic_updates(events, box), box, settled.before)

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

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def take_new_assignment(sender: Any, *args: Any, **kwargs: Any) -> None:
        visitors_in.assigned()
        ledger_in.assigned()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def rescan_after_recovery(sender: Any, **kwargs: Any) -> None:
        # tables were just recovered for a new assignment: rebuild the in-memory indexes
        referrers.forget_parked()
        ledger.forget()
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
            referrers.release(box, settled.before)
            await box.flush()

    async def settled_now() -> bool:
        """True when the settled time moved and some credit is parked."""
        if not reader.is_ready():  # releasing books credits, which needs the reference data
            return False
        metrics.parked.set(referrers.load_parked())
        metrics.settled_lag.set(time.time() - (settled.before or started_at))
        # a customer's place is settled only once no claim can be on its way
        return await settled.advance() and bool(referrers.parked)

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
    ledger_in = OrderedInput(
        app,
        "ledger",
        (ledger_logic.REFUNDS, "ripple-commissions"),
        max_idle_s,
        metrics,
        reader,
        backlog_ms=settings.max_lateness_ms,
        idle_topics=(ledger_logic.REFUNDS,),
    )
    ledger_lock = asyncio.Lock()

    @app.agent(raw_topic("refunds", "ripple-commissions"), name="ledger")
    async def ledger_agent(stream: Any) -> None:
        ledger_in.attach(stream)
        async for events in stream.noack_take(batch, within=within):
            await guarded(receive_ledger_batch, events, ledger_lock)

    async def receive_ledger_batch(events: list[Any], box: Outbox) -> None:
        await ledger_in.receive(events, box, ledger_items)
        await drain_ledger(events, box)

    async def ledger_items(msg: Any) -> list[tuple[int, ledger_logic.Item]]:
        records = await decode_message(msg) if msg.topic == ledger_logic.REFUNDS else [v for _, v in keyed_records(msg)]
        return ledger_logic.items(msg, records)

    async def drain_ledger(events: list[Any], box: Outbox) -> None:
        ledger.handle(ledger_in.taken(box), box)
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

    ledger = ledger_logic.Ledger(order_state, order_clock)

    # -- reference topics: validated for the dead-letter topic --------------------------
    @app.agent(raw_topic("codes", "creators"), name="reference")
    async def reference_agent(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            await guarded(intake.decode_batch, events)

    @app.task
    async def dump_tasks_on_signal() -> None:
        """``kill -USR1`` a worker to log where every task waits (a stalled agent shows here)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, watchdog.dump, app, stage, processed)

    def reclaim(tp: Any, offset: int) -> None:
        visitors_in.reclaim(tp, offset)
        ledger_in.reclaim(tp, offset)

    unsticker = watchdog.Watchdog(app, STREAM_TOPICS, reader.end_offsets, metrics, reclaim)

    @app.timer(5.0)
    async def unstick_partitions() -> None:
        """Partitions Faust's flow control left undelivered or unhandled are read again
        (streams.watchdog)."""
        await unsticker.check()

    tables = {
        "visitor_state": visitor_state,
        "referrer_state": referrer_state,
        "order_state": order_state,
        "chain_state": chain_state,
        "flood_state": flood_state,
        "alert_state": alert_state,
    }
    ordered = ((visitors_in, "views", visitor_clock), (ledger_in, "refunds", order_clock))

    @app.timer(5.0)
    async def sample_gauges() -> None:
        """Lag on this worker's partitions and the size of its state, for /metrics."""
        health.sample_state(metrics, tables)
        await health.sample_lag(metrics, app.consumer, processed)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = health.render_metrics(metrics, health.task_status(app.consumer.assignment(), ordered))
        return web.bytes(body, content_type=content_type)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        tps = app.consumer.assignment()
        return web.json(health.health(tps, health.task_status(tps, ordered), visitor_clock.times))

    return app
