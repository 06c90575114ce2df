"""Every topic Ripple reads or writes, by role: the one list the worker, the sink, the
collector, the simulator and the broker setup all name topics from. No imports: anything
may depend on it."""

INPUT_TOPICS = ("views", "clicks", "orders", "refunds", "codes", "creators")
#: Topics whose records are keyed by visitor and read together by one task.
COPARTITIONED_TOPICS = ("views", "clicks", "orders")
COMPACTED_TOPICS = ("codes", "creators")
OUTPUT_TOPICS = (
    "attributions",
    "commission_ledger",
    "conflicts",
    "late_events",
    "chain_nodes",
    "chains",
    "alerts",
    "deadletter",
)
#: Worker-to-worker topics: credits and lineage claims keyed by referrer, commission terms
#: keyed by order id, chain updates keyed by root.
INTERNAL_TOPICS = (
    "ripple-credits",
    "ripple-lineage",
    "ripple-commissions",
    "ripple-chains",
    "ripple-clicks",  # clicks keyed by ip and referrer, for the click-flood rule
    "ripple-blocks",  # fraud verdicts on clicks, back to the visitor's key
    "ripple-alerts",  # alert candidates keyed by rule and subject
)
