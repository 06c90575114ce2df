"""Viral referral chains (SPEC §4): one tree per root, kept incrementally. Pure logic.

State of a chain is a JSON-able dict::

    {"root": id, "parent": {node: parent}, "gen": {node: g}, "size": {node: subtree size},
     "n": nodes, "d": sum of depths, "w": sum of pairwise distances (Wiener index),
     "per_gen": [nodes in generation 0, 1, ...], "first_ts": [first node time per generation],
     "ts": [node times], "revenue": cascade revenue, "commission": cascade commission,
     "viral": bool, "crossings": number of times it became viral, "updated": ts}

Adding a leaf ``v`` under ``p`` changes the Wiener index by
``ΔW = D + n·(depth(p) + 1) − 2·Σ size(a)`` over the nodes ``a`` on the path from ``p`` up
to (not including) the root, where ``D`` is the sum of depths and ``n`` the number of nodes
before the insert — O(depth) per insert, no recomputation of the tree. Structural
virality (Goel et al. 2016) is the mean pairwise distance ``W / C(n, 2)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MAX_GROWTH_TIMES = 10_000  # node times kept for the hour/day growth counts


@dataclass(frozen=True)
class ViralRule:
    min_depth: int = 3
    min_k: float = 1.0
    consecutive: int = 2
    min_virality: float = 4.0
    min_nodes_for_virality: int = 50


def new_chain(root: str, ts: int) -> dict[str, Any]:
    return {
        "root": root,
        "parent": {},
        "gen": {root: 0},
        "size": {root: 1},
        "n": 1,
        "d": 0,
        "w": 0,
        "per_gen": [1],
        "first_ts": [ts],
        "ts": [ts],
        "revenue": 0,
        "commission": 0,
        "viral": False,
        "crossings": 0,
        "updated": ts,
    }


def add_node(chain: dict[str, Any], node: str, parent: str, ts: int) -> bool:
    """Insert ``node`` as a leaf under ``parent``; False if it is already in the tree."""
    gen: dict[str, int] = chain["gen"]
    if node in gen:
        return False
    if parent not in gen:
        raise KeyError(f"parent {parent!r} is not in the chain of {chain['root']!r}")
    sizes: dict[str, int] = chain["size"]
    parents: dict[str, str] = chain["parent"]
    n, d = chain["n"], chain["d"]
    depth_p = gen[parent]
    path_sizes = 0
    a = parent
    while a in parents:  # every node on the path but the root
        path_sizes += sizes[a]
        sizes[a] += 1
        a = parents[a]
    sizes[a] += 1  # the root
    chain["w"] += d + n * (depth_p + 1) - 2 * path_sizes
    g = depth_p + 1
    gen[node] = g
    parents[node] = parent
    sizes[node] = 1
    chain["n"] = n + 1
    chain["d"] = d + g
    if g == len(chain["per_gen"]):
        chain["per_gen"].append(0)
        chain["first_ts"].append(ts)
    chain["per_gen"][g] += 1
    chain["first_ts"][g] = min(chain["first_ts"][g], ts)
    times: list[int] = chain["ts"]
    times.append(ts)
    if len(times) > MAX_GROWTH_TIMES:
        del times[: len(times) - MAX_GROWTH_TIMES]
    chain["updated"] = max(chain["updated"], ts)
    return True


def remove_leaf(chain: dict[str, Any], node: str) -> bool:
    """Undo :func:`add_node` for a node without children; False if it has any."""
    sizes: dict[str, int] = chain["size"]
    if sizes.get(node) != 1 or node not in chain["parent"]:
        return False
    parents: dict[str, str] = chain["parent"]
    gen: dict[str, int] = chain["gen"]
    parent = parents.pop(node)
    g = gen.pop(node)
    del sizes[node]
    path_sizes = 0
    a = parent
    while a in parents:
        sizes[a] -= 1
        path_sizes += sizes[a]
        a = parents[a]
    sizes[a] -= 1
    n, d = chain["n"] - 1, chain["d"] - g
    chain["w"] -= d + n * g - 2 * path_sizes
    chain["n"], chain["d"] = n, d
    chain["per_gen"][g] -= 1
    while chain["per_gen"] and chain["per_gen"][-1] == 0:
        chain["per_gen"].pop()
        chain["first_ts"].pop()
    return True


def depth(chain: dict[str, Any]) -> int:
    return len(chain["per_gen"]) - 1


def structural_virality(chain: dict[str, Any]) -> float:
    n = chain["n"]
    return 0.0 if n < 2 else chain["w"] / (n * (n - 1) / 2)


def k_by_generation(chain: dict[str, Any]) -> list[float]:
    """K_g = nodes of generation g+1 / nodes of generation g, for every generation."""
    per_gen: list[int] = chain["per_gen"]
    return [(per_gen[g + 1] if g + 1 < len(per_gen) else 0) / per_gen[g] for g in range(len(per_gen))]


def is_viral(chain: dict[str, Any], rule: ViralRule = ViralRule()) -> bool:
    """SPEC §4: depth ≥ 3 and (K ≥ 1 for two consecutive customer generations, or
    structural virality ≥ 4 with ≥ 50 nodes). Generation 0 is the root alone, whose
    K is just its number of direct buyers, so the K test starts at generation 1."""
    if depth(chain) < rule.min_depth:
        return False
    ks = k_by_generation(chain)
    run = 0
    for g in range(1, len(ks)):
        run = run + 1 if ks[g] >= rule.min_k else 0
        if run >= rule.consecutive:
            return True
    return chain["n"] >= rule.min_nodes_for_virality and structural_virality(chain) >= rule.min_virality


def growth(chain: dict[str, Any], now: int) -> tuple[int, int]:
    """Nodes added in the hour and the day before ``now`` (event time)."""
    times: list[int] = chain["ts"]
    return sum(1 for t in times if now - HOUR_MS < t <= now), sum(1 for t in times if now - DAY_MS < t <= now)


def time_to_next_generation(chain: dict[str, Any]) -> list[int]:
    first: list[int] = chain["first_ts"]
    return [first[g + 1] - first[g] for g in range(len(first) - 1)]


def update_viral(chain: dict[str, Any], rule: ViralRule = ViralRule()) -> bool:
    """Refresh the flag; True when the chain has just crossed into viral (alert once)."""
    was = chain["viral"]
    chain["viral"] = is_viral(chain, rule)
    if chain["viral"] and not was:
        chain["crossings"] += 1
        return True
    return False


def summary(chain: dict[str, Any]) -> dict[str, Any]:
    """The ``chains`` row."""
    last_hour, last_day = growth(chain, chain["updated"])
    return {
        "root_id": chain["root"],
        "nodes": chain["n"],
        "depth": depth(chain),
        "nodes_by_generation": list(chain["per_gen"]),
        "k_by_generation": [round(k, 6) for k in k_by_generation(chain)],
        "structural_virality": structural_virality(chain),
        "viral": 1 if chain["viral"] else 0,
        "new_nodes_1h": last_hour,
        "new_nodes_24h": last_day,
        "time_to_next_generation_ms": time_to_next_generation(chain),
        "cascade_revenue_minor": chain["revenue"],
        "cascade_commission_minor": chain["commission"],
        "updated_ts": chain["updated"],
    }


def apply(
    chain: dict[str, Any] | None, msg: dict[str, Any], rule: ViralRule = ViralRule()
) -> tuple[dict[str, Any], bool]:
    """Apply one chain update (``root``, ``node`` or ``revenue``); True when it made the
    chain viral. A node whose parent has not arrived yet waits in ``orphans``."""
    if chain is None:
        chain = new_chain(msg["root_id"], msg["ts"])
        chain["orders"] = {}
        chain["orphans"] = {}
    kind = msg["type"]
    if kind == "node":
        chain["orphans"][msg["node_id"]] = [msg["parent_id"], msg["ts"]]
        _adopt(chain)
    elif kind == "remove":
        chain["orphans"].pop(msg["node_id"], None)
        if msg["node_id"] in chain["gen"] and msg["node_id"] != chain["root"]:
            remove_leaf(chain, msg["node_id"])
    elif kind == "revenue":
        key = f"{msg['order_id']}|{msg['referrer_id']}"
        old = chain["orders"].get(key, [0, 0])
        new = [msg["revenue_minor"], msg["commission_minor"]]
        chain["revenue"] += new[0] - old[0]
        chain["commission"] += new[1] - old[1]
        chain["orders"][key] = new
        chain["updated"] = max(chain["updated"], msg["ts"])
    return chain, update_viral(chain, rule)


def _adopt(chain: dict[str, Any]) -> None:
    orphans: dict[str, list[Any]] = chain["orphans"]
    progress = True
    while progress:
        progress = False
        for node, (parent, ts) in list(orphans.items()):
            if node in chain["gen"]:
                del orphans[node]
            elif parent in chain["gen"]:
                add_node(chain, node, parent, ts)
                del orphans[node]
                progress = True


# -- brute force, for tests and the simulator's ground truth ------------------------------
def brute_force_virality(parent: dict[str, str], root: str) -> float:
    """Mean pairwise shortest-path distance by BFS from every node (O(n²))."""
    adjacent: dict[str, list[str]] = {root: []}
    for child, p in parent.items():
        adjacent.setdefault(child, []).append(p)
        adjacent.setdefault(p, []).append(child)
    nodes = list(adjacent)
    n = len(nodes)
    if n < 2:
        return 0.0
    total = 0
    for source in nodes:
        seen = {source: 0}
        queue = deque([source])
        while queue:
            x = queue.popleft()
            for y in adjacent[x]:
                if y not in seen:
                    seen[y] = seen[x] + 1
                    queue.append(y)
        total += sum(seen.values())
    return total / 2 / (n * (n - 1) / 2)
