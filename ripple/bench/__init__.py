"""``ripple bench``: the performance contract (SPEC §7), measured in one run on one broker.

The bench starts its own embedded broker, sends one simulated program to it and measures,
one phase after the other so that they do not share the CPUs:

1. load — the program's reference and input events (E = messages of views, clicks, orders
   and refunds) are sent to the broker;
2. the ceiling — aiokafka reads the E input messages and decodes them with orjson, in this
   process;
3. the plain Faust baseline — ``python -m ripple.bench.faust_baseline``: one agent that only decodes,
   one event at a time;
4. Ripple end to end — ``ripple sink`` and ``ripple worker`` as subprocesses read the
   backlog; from the worker's first event to every topic read to its end and the
   attributions in ClickHouse; then the worker's peak RSS and state per visitor, and the
   sink's insert rate;
5. latency — live views, clicks and orders in the program's mix at half the end-to-end
   rate; the sink's histogram of
   the time from an attribution row's event time to it being queryable gives p50 and p99
   (bucket resolution);
6. chDB inserts — attribution rows through ``sinks.clickhouse.ClickHouse.insert``, in this
   process.

Figures are reported, never asserted: targets are printed beside them.
"""

from ripple.bench.figures import BenchConfig, BenchError
from ripple.bench.phases import run
from ripple.bench.probes import hot_spots

__all__ = ["BenchConfig", "BenchError", "hot_spots", "run"]
