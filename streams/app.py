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
import time
from collections.abc import Awaitable, Callable
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
from streams.ordered_agent import Handle, Items, OrderedAgent, wake_while_running
from streams.ordered_input import OrderedInput
from streams.outbound import PRODUCER_TUNING, Outbound
from streams.records import StateCodec
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
Handler = Callable[[list[Any], Outbox], Awaitable[Any]]
STATE_TABLES = ("visitor_state", "referrer_state", "order_state", "chain_state", "flood_state", "alert_state")


def faust_app(settings: Settings) -> faust.App:
    return faust.App(
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


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    return app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")


def state_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of JSON state records (:mod:`streams.records`), kept in memory and restored
    from its changelog topic."""
    codec = StateCodec(name)
    table: Any = app.Table(
        name,
        default=None,
        key_type=bytes,  # keys travel raw in the changelog: the table derives its serializer from this
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer=codec),
        partitions=partitions,
    )
    # Faust derives the value serializer from value_type ("json") and gives it to the
    # changelog topic when the table is added, over the schema's: what recovery reads with
    table.value_serializer = codec
    table.changelog_topic.schema.update(value_serializer=codec)
    table.changelog_topic.value_serializer = codec  # Topic's attribute, not in TopicT
    return table


def create_app(settings: Settings) -> faust.App:
    assert settings.bootstrap, "the worker needs a broker address"
    faust_fixes.install(COMPACTED_TOPICS)
    faust_fixes.install_fetch_wait(settings.fetch_wait_ms)
    app = faust_app(settings)
    metrics = WorkerMetrics()
    for rule, severity in fraud.RULE_SEVERITIES:  # every series exists from the start, at 0
        metrics.alerts.labels(rule, severity)
    rules = fraud.load_config(settings.fraud_rules) if settings.fraud_rules else fraud.load_config()
    reference = ReferenceData()
    reader = ReferenceReader(settings.bootstrap, reference, APP_ID, security=settings.kafka)
    app.service(reader)  # type: ignore[arg-type]  # an instance is accepted at run time
    faust_fixes.install_recovery_ends(reader.true_ends)
    batch, within = settings.worker_batch, settings.worker_batch_ms / 1000
    max_idle_s = settings.max_task_idle_ms / 1000

    # every topic exists before the worker starts (`ripple worker` creates what is missing)
    tables = {name: state_table(app, name, settings.partitions) for name in STATE_TABLES}
    changelog_names = {id(table): table.changelog_topic.get_topic_name() for table in tables.values()}
    processed: dict[tuple[str, int], int] = {}  # last offset handled per topic partition

    # Outputs and changelog records go through librdkafka (see streams.outbound); Faust
    # flushes its own producer before it commits offsets, and now this one too.
    outbound = Outbound(producer_config(settings.bootstrap, settings.kafka, PRODUCER_TUNING))
    faust_fixes.flush_before_commit(app, outbound.flush)

    def new_box() -> Outbox:
        return Outbox(settings.partitions, outbound, metrics, changelog_names, processed)

    intake = Intake(raw_topic(app, "deadletter").send, metrics, settings.max_future_ms)
    guarded = Guard(new_box)
    visitor_clock = StreamClock(tables["visitor_state"], "visitors")
    order_clock = StreamClock(tables["order_state"], "orders")

    def agent(topics: tuple[str, ...], name: str, handler: Handler, lock: asyncio.Lock | None = None) -> None:
        @app.agent(raw_topic(app, *topics), name=name)
        async def take_batches(stream: Any) -> None:
            async for events in stream.take_events(batch, within=within):
                await guarded(handler, events, lock)

    def ordered_agent(
        name: str, topics: tuple[str, ...], idle_topics: tuple[str, ...], items: Items, handle: Handle
    ) -> OrderedAgent:
        """An agent whose tasks take their inputs in event-time order (SPEC §3.5,
        streams.ordering); in a backlog an empty ``idle_topics`` input is waited for."""
        source = OrderedInput(
            app, name, topics, max_idle_s, metrics, reader, backlog_ms=settings.max_lateness_ms, idle_topics=idle_topics
        )
        ordered = OrderedAgent(source, guarded, items, handle)

        @app.agent(raw_topic(app, *topics), name=name)
        async def take_in_order(stream: Any) -> None:
            await ordered.run(stream, batch, within)

        return ordered

    # -- visitors: views, clicks, orders (+ flood verdicts on clicks) -> credits ---------
    visitors = visitor_logic.Visitors(
        tables["visitor_state"],
        visitor_clock,
        reference,
        visitor_logic.Settings(
            visitor_logic.windows_for(settings, rules), rules, settings.policy, settings.commission_model
        ),
        metrics,
    )

    async def visitor_items(msg: Any) -> list[tuple[int, visitor_logic.Item]]:
        if msg.topic == visitor_logic.BLOCKS:  # a flood verdict counts at its click's time
            return visitor_logic.verdict_items(msg, keyed_records(msg))
        return visitor_logic.event_items(msg, await intake.decode(msg))

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

    visitors_in = ordered_agent(
        "visitors",
        (*COPARTITIONED_TOPICS, visitor_logic.BLOCKS),
        COPARTITIONED_TOPICS,
        visitor_items,
        handle_visitor_items,
    )

    # -- clicks per ip and referrer -> flood verdicts; alert candidates -> alerts -------
    async def handle_flood_batch(events: list[Any], box: Outbox) -> None:
        flood_agent_logic.handle(keyed_updates(events, box), tables["flood_state"], box, rules)

    async def handle_alert_batch(events: list[Any], box: Outbox) -> None:
        for row in alert_agent_logic.handle(keyed_updates(events, box), tables["alert_state"], box, rules):
            metrics.alerts.labels(row["rule"], row["severity"]).inc()

    agent(("ripple-clicks",), "floods", handle_flood_batch)
    agent(("ripple-alerts",), "alerts", handle_alert_batch)

    # -- referrers: credits and lineage claims -> attributions, terms, chain updates ----
    referrers = referrer_agent_logic.Referrers(
        tables["referrer_state"],
        referrer_agent_logic.context(reference, settings.commission_model, rules),
        settings.partitions,
    )
    # The referrer agent and the release timer change referrer_state; a flush waits for the
    # broker, so without this one's changelog record (a snapshot) could follow the other's.
    referrer_lock = asyncio.Lock()

    async def handle_referrer_batch(events: list[Any], box: Outbox) -> None:
        # plans, creators' identities (self-referral) and followers come from the reference
        # data: a worker that just started must not book a credit before it has all of it
        await reader.ready()
        referrers.handle(topic_updates(events, box), box, settled.before)

    agent(("ripple-credits", referrer_agent_logic.CLAIMS), "referrers", handle_referrer_batch, referrer_lock)

    # where a claim can still be on its way from: inputs, verdicts that restate, credits, claims
    upstream = {*COPARTITIONED_TOPICS, "ripple-clicks", "ripple-blocks", "ripple-credits", "ripple-lineage"}
    settled = Settled(reader, lambda: app.producer.flush(), upstream, processed)
    started_at = time.time()

    @app.timer(0.05)  # cheap: a round only compares offsets this worker already knows
    async def release_parked() -> None:
        if not reader.is_ready():  # releasing books credits, which needs the reference data
            return
        metrics.parked.set(referrers.load_parked())
        metrics.settled_lag.set(time.time() - (settled.before or started_at))
        # a customer's place is settled only once no claim can be on its way
        if not (await settled.advance() and referrers.parked):
            return
        async with referrer_lock:
            box = new_box()
            referrers.release(box, settled.before)
            await box.flush()

    # -- chains: node and revenue updates per root -> chains rows, viral alerts ---------
    async def handle_chain_batch(events: list[Any], box: Outbox) -> None:
        chain_agent_logic.handle(keyed_updates(events, box), tables["chain_state"], box)

    agent(("ripple-chains",), "chains", handle_chain_batch)

    # -- orders: refunds + commission terms -> ledger, in event-time order per task: the
    # ledger's clock (commission holds) moves only as they are processed ----------------
    ledger = ledger_logic.Ledger(tables["order_state"], order_clock)

    async def ledger_items(msg: Any) -> list[tuple[int, ledger_logic.Item]]:
        records = await intake.decode(msg) if msg.topic == ledger_logic.REFUNDS else [v for _, v in keyed_records(msg)]
        return ledger_logic.items(msg, records)

    async def handle_ledger_items(items: list[ledger_logic.Item], box: Outbox) -> None:
        ledger.handle(items, box)

    ledger_in = ordered_agent(
        "ledger",
        (ledger_logic.REFUNDS, "ripple-commissions"),
        (ledger_logic.REFUNDS,),
        ledger_items,
        handle_ledger_items,
    )
    ordered = (visitors_in, ledger_in)

    @app.task
    async def inputs_waiting() -> None:
        """Process what a task of either ordered agent may take once its wait for a lagging
        input is over (no batch may come meanwhile)."""
        await wake_while_running(ordered, lambda: not app.should_stop)

    # -- reference topics: validated for the dead-letter topic --------------------------
    agent(("codes", "creators"), "reference", intake.decode_batch)

    # -- rebalances: the consumer reads every assigned partition again from its committed
    # offset; tables recovered for a new assignment rebuild their in-memory indexes -----
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def forget_buffered(sender: Any, *args: Any, **kwargs: Any) -> None:
        for task in ordered:
            task.source.forget()
        visitor_clock.forget()
        order_clock.forget()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def take_new_assignment(sender: Any, *args: Any, **kwargs: Any) -> None:
        for task in ordered:
            task.source.assigned()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode passes signal= as a keyword
    async def rescan_after_recovery(sender: Any, **kwargs: Any) -> None:
        referrers.forget_parked()
        ledger.forget()
        visitor_clock.forget()
        order_clock.forget()

    # -- the watchdog, kill -USR1, /metrics and /healthz ---------------------------------
    def reclaim(tp: Any, offset: int) -> None:
        for task in ordered:
            task.source.reclaim(tp, offset)

    watchdog.serve(app, watchdog.Watchdog(app, STREAM_TOPICS, reader.end_offsets, metrics, reclaim), guarded, processed)

    by_task = [(visitors_in.source, "views", visitor_clock), (ledger_in.source, "refunds", order_clock)]
    health.serve(app, metrics, tables, by_task, processed, visitor_clock)
    return app
