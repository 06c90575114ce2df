"""What ``ripple bench`` measures and how it reports it: settings, figures, targets, the table and the JSON."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
TOPICS = ("views", "clicks", "orders", "refunds")
DAY_MS = 86_400_000
FULL_VIEWS = 120_000
QUICK_VIEWS = 6_000
MICRO_BATCH = 50_000
FAUST_TIMEOUT = 300.0
#: the targets printed beside the figures (SPEC §7); never checked
TARGET_EVENTS_PER_S = 50_000
TARGET_P99_S = 2.0
TARGET_STATE_BYTES = 300
TARGET_SINK_ROWS_PER_S = 200_000


class BenchError(RuntimeError):
    """A phase could not be measured. The message is one line for the user."""


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    views: int = FULL_VIEWS
    partitions: int = 8
    latency_seconds: float = 20.0
    micro_rows: int = 200_000
    seed: int = 1
    days: float = 14.0
    inject_count: int = 2
    profile: Path | None = None  # py-spy profiles of the worker and the sink go here
    input_batch: int = 1  # events per input message (> 1: JSON arrays per partition, as the collector sends)

    @classmethod
    def make(
        cls, quick: bool, views: int | None, partitions: int, profile: Path | None = None, input_batch: int = 1
    ) -> BenchConfig:
        return cls(
            quick=quick,
            profile=profile,
            input_batch=input_batch,
            views=views if views is not None else QUICK_VIEWS if quick else FULL_VIEWS,
            partitions=partitions,
            latency_seconds=5.0 if quick else 20.0,
            micro_rows=50_000 if quick else 200_000,
        )


@dataclass
class Figures:
    input_events: int = 0
    reference_messages: int = 0
    load_seconds: float = 0.0
    raw_events: int = 0
    raw_seconds: float = 0.0
    faust_events: int = 0
    faust_seconds: float = 0.0
    ripple_seconds: float = 0.0
    ripple_startup_seconds: float = 0.0  # from starting the processes to the worker's first event
    ripple_inputs_seconds: float = 0.0  # from the worker's first event to every input topic read
    worker_peak_rss_bytes: int | None = None
    state_keys: float = 0.0
    state_bytes: float = 0.0
    sink_rows: float = 0.0
    sink_insert_seconds: float = 0.0
    attribution_rows: float = 0.0
    late_events: float = 0.0  # the worker's late events in the end-to-end phase (its input is on time)
    idle_timeouts: float = 0.0  # times a task went on without a lagging input (after 60 x max_task_idle)
    live_rate: float = 0.0  # events per second sent in the latency phase
    live_orders: int = 0
    latency_samples: float = 0.0
    latency_p50: float | None = None
    latency_p99: float | None = None
    micro_rows: int = 0
    micro_seconds: float = 0.0

    @staticmethod
    def rate(n: float, seconds: float) -> float | None:
        return n / seconds if seconds > 0 and n > 0 else None

    @property
    def raw_rate(self) -> float | None:
        return self.rate(self.raw_events, self.raw_seconds)

    @property
    def faust_rate(self) -> float | None:
        return self.rate(self.faust_events, self.faust_seconds)

    @property
    def ripple_rate(self) -> float | None:
        return self.rate(self.input_events, self.ripple_seconds)

    @property
    def state_per_visitor(self) -> float | None:
        return self.state_bytes / self.state_keys if self.state_keys > 0 else None

    @property
    def sink_rate(self) -> float | None:
        return self.rate(self.sink_rows, self.sink_insert_seconds)

    @property
    def micro_rate(self) -> float | None:
        return self.rate(self.micro_rows, self.micro_seconds)


# -- small helpers ---------------------------------------------------------------------


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}".replace(",", " ")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "n/a"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def table(cfg: BenchConfig, fig: Figures) -> str:
    mode = "quick" if cfg.quick else "full"
    py = ".".join(platform.python_version_tuple()[:2])
    header = (
        f"ripple bench ({mode}) — {num(fig.input_events)} input events, {cfg.partitions} partitions, "
        f"1 worker process, Python {py}, {os.cpu_count()} CPUs, "
        f"{'one event per message' if cfg.input_batch <= 1 else f'input in arrays of up to {cfg.input_batch} events'}"
    )
    rss = fig.worker_peak_rss_bytes / 2**20 if fig.worker_peak_rss_bytes else None
    p50, p99 = fig.latency_p50, fig.latency_p99
    rows = [
        ("raw aiokafka consume + decode (ceiling)", num(fig.raw_rate), "ev/s", ""),
        ("plain Faust agent, one event at a time", num(fig.faust_rate), "ev/s", ""),
        (
            "Ripple end to end (Kafka → ClickHouse)",
            num(fig.ripple_rate),
            "ev/s",
            f"≥ {num(TARGET_EVENTS_PER_S)}   ({_ratio(fig.ripple_rate, fig.raw_rate)} ceiling, "
            f"{_ratio(fig.ripple_rate, fig.faust_rate)} Faust)",
        ),
        (
            "  inputs all read / everything queryable after",
            f"{num(fig.ripple_inputs_seconds, 1)} / {num(fig.ripple_seconds, 1)}",
            "s",
            "(the rest: customers' chain places settling, the sink's last writes)",
        ),
        (
            "  late events / input waits timed out",
            f"{num(fig.late_events)} / {num(fig.idle_timeouts)}",
            "",
            "0 / 0   (default max_lateness 10 min: the program is on time per partition)",
        ),
        (
            "order → queryable p50 / p99 at 50 %",
            f"{num(p50, 2)} / {num(p99, 2)}",
            "s",
            f"≤ {TARGET_P99_S:g} s p99   (bucket resolution, {num(fig.latency_samples)} rows)",
        ),
        ("worker peak RSS", num(rss), "MiB", ""),
        ("state per active visitor", num(fig.state_per_visitor), "B", f"≤ {TARGET_STATE_BYTES} B"),
        (
            "sink rows while inserting (pipeline)",
            num(fig.sink_rate),
            "rows/s",
            f"≥ {num(TARGET_SINK_ROWS_PER_S)}",
        ),
        (
            f"sink inserts into chDB ({num(MICRO_BATCH)}-row batches)",
            num(fig.micro_rate),
            "rows/s",
            f"≥ {num(TARGET_SINK_ROWS_PER_S)}",
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    vwidth = max(len(r[1]) for r in rows)
    lines = [header, f"{'measure':<{width}}{'value':>{vwidth}} {'':<6}  target"]
    for name, value, unit, target in rows:
        lines.append(f"{name:<{width}}{value:>{vwidth}} {unit:<6}  {target}".rstrip())
    return "\n".join(lines)


def to_json(cfg: BenchConfig, fig: Figures) -> dict[str, Any]:
    def fmt(value: float | None, unit: str, **extra: Any) -> dict[str, Any]:
        return {"value": value, "unit": unit, **extra}

    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            **asdict(cfg),
            "profile": str(cfg.profile) if cfg.profile else None,
            "worker_processes": 1,
            "input_events": fig.input_events,
        },
        "figures": {
            "raw_consume_decode": fmt(fig.raw_rate, "events/s", events=fig.raw_events, seconds=fig.raw_seconds),
            "faust_baseline": fmt(fig.faust_rate, "events/s", events=fig.faust_events, seconds=fig.faust_seconds),
            "ripple_end_to_end": fmt(
                fig.ripple_rate,
                "events/s",
                events=fig.input_events,
                seconds=fig.ripple_seconds,
                startup_seconds=fig.ripple_startup_seconds,
                inputs_read_seconds=fig.ripple_inputs_seconds,
                target=TARGET_EVENTS_PER_S,
                share_of_ceiling=fig.ripple_rate / fig.raw_rate if fig.ripple_rate and fig.raw_rate else None,
                share_of_faust=fig.ripple_rate / fig.faust_rate if fig.ripple_rate and fig.faust_rate else None,
            ),
            "late_events": fmt(fig.late_events, "events", idle_timeouts=fig.idle_timeouts),
            "latency_p50": fmt(fig.latency_p50, "s", resolution="histogram bucket"),
            "latency_p99": fmt(fig.latency_p99, "s", resolution="histogram bucket", target=TARGET_P99_S),
            "latency_phase": {
                "rate": fig.live_rate,
                "rate_unit": "events/s",
                "seconds": cfg.latency_seconds,
                "orders": fig.live_orders,
                "rows_observed": fig.latency_samples,
            },
            "worker_peak_rss": fmt(fig.worker_peak_rss_bytes, "bytes"),
            "state_per_visitor": fmt(
                fig.state_per_visitor,
                "bytes",
                keys=fig.state_keys,
                state_bytes=fig.state_bytes,
                target=TARGET_STATE_BYTES,
            ),
            "sink_insert_rate": fmt(
                fig.sink_rate,
                "rows/s",
                rows=fig.sink_rows,
                insert_seconds=fig.sink_insert_seconds,
                attribution_rows=fig.attribution_rows,
                target=TARGET_SINK_ROWS_PER_S,
            ),
            "chdb_insert_rate": fmt(
                fig.micro_rate,
                "rows/s",
                rows=fig.micro_rows,
                seconds=fig.micro_seconds,
                batch_rows=MICRO_BATCH,
                target=TARGET_SINK_ROWS_PER_S,
            ),
        },
    }
