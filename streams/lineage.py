"""Customer-to-customer lineage, kept in each referrer's own state. Pure logic.

A referrer's state carries ``"lin"``: its place in a referral tree, fixed once set::

    {"root": root id, "gen": generation, "parent": parent id or "",
     "own": [its identity hashes], "anc": [identity hashes of its ancestors]}

* A creator is a root (generation 0) the first time it is credited.
* A customer becomes a node the first time one of its orders is credited under the
  commission model: the referrer sends a *claim* keyed by the customer, carrying the
  referrer's root, generation and identities, so the new node knows its root and
  generation at once. "First" is in event time; once the node has referred someone its
  parent is fixed forever.
* A customer who refers before being a node starts a tree of its own (generation 0).
* An order whose identity hashes meet those of an ancestor of its referrer is a
  ``referral_ring``; meeting the referrer's own is a ``self_referral``.

:func:`on_claim` is what happens at the customer's key when a claim, a retraction or a
parked referrer's hold arrives.
"""

from __future__ import annotations

from typing import Any

from streams.commission import next_seq

Output = tuple[str, str, dict[str, Any]]

IDENTITY_FIELDS = ("email_hash", "payment_hash", "device_id")


def order_identities(order: dict[str, Any]) -> list[str]:
    return sorted({str(order[f]) for f in IDENTITY_FIELDS if order.get(f)})


def creator_identities(creator: dict[str, Any]) -> list[str]:
    ids = {str(creator[f]) for f in ("email_hash", "payment_hash") if creator.get(f)}
    ids.update(str(d) for d in creator.get("device_ids") or ())
    return sorted(ids)


def ensure_lineage(state: dict[str, Any], referrer_id: str, own: list[str]) -> tuple[dict[str, Any], bool]:
    """The referrer's lineage, making it a root when it has none; True when it just became one."""
    lin = state.get("lin")
    if lin is not None:
        if own and not lin["own"]:
            lin["own"] = own
        return lin, False
    lin = {"root": referrer_id, "gen": 0, "parent": "", "own": own, "anc": []}
    state["lin"] = lin
    return lin, True


def claim_for(parent_id: str, parent_lin: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The claim a credited order's customer receives from its referrer."""
    return {
        "type": "claim",
        "node_id": row["customer_id"],
        "parent_id": parent_id,
        "root_id": parent_lin["root"],
        "generation": parent_lin["gen"] + 1,
        "anc": sorted(set(parent_lin["anc"]) | set(parent_lin["own"])),
        "own": row.get("identities") or [],
        "ts": row["ts"],
        "order_id": row["order_id"],
        "version": row["version"],
    }


def apply_claim(state: dict[str, Any], claim: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Make the customer a node under the claim's parent.

    The parent is the referrer of the customer's earliest credited order in event time
    (``ts``, then order id; a restated order's latest credit). Claims can arrive out of
    that order, so a better claim still moves the node as long as it has not referred
    anyone; once it has, its place is fixed forever. Every order's latest claim is kept,
    so a retracted one (:func:`retract_claim`) falls back to the next. Returns
    ``(node row, previous place)``, ``(None, None)`` when nothing changes; a node row
    with ``active`` 0 when the customer is a node no more.
    """
    claims: dict[str, Any] = state.setdefault("claims", {})
    held = claims.get(claim["order_id"])
    if held is not None and held["version"] > claim["version"]:
        return None, None
    if claim["version"] <= state.get("void", {}).get(_voided(claim), -1):
        return None, None  # retracted already: a replay of the claim, or it came late
    claims[claim["order_id"]] = {k: claim[k] for k in CLAIM_FIELDS}
    return _place(state, claim["node_id"], claim["ts"])


def retract_claim(
    state: dict[str, Any], retract: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The order behind a claim lost its credit from that parent (a fraud verdict or a
    restatement): the customer takes its place from its next credited order, or none.

    The retraction is remembered (``void``: order and parent → version), so that the same
    parent's claim of that order with no newer version, arriving after it, changes nothing:
    after a restart a referrer can send an order's claim again, behind its retraction. (A
    restatement to another referrer carries the retraction's version: it still counts.)"""
    void: dict[str, int] = state.setdefault("void", {})
    key = _voided(retract)
    void[key] = max(void.get(key, -1), retract["version"])
    claims: dict[str, Any] = state.get("claims", {})
    held = claims.get(retract["order_id"])
    if held is None or held["parent_id"] != retract["parent_id"] or held["version"] > retract["version"]:
        return None, None
    del claims[retract["order_id"]]
    return _place(state, retract["node_id"], retract["ts"])


def _voided(claim: dict[str, Any]) -> str:
    return f"{claim['order_id']}\x1f{claim['parent_id']}"


CLAIM_FIELDS = ("node_id", "parent_id", "root_id", "generation", "anc", "own", "ts", "order_id", "version")


def _rank(claim: dict[str, Any]) -> list[Any]:
    # earliest order first; for the same order, its latest restatement
    return [claim["ts"], claim.get("order_id", ""), -claim.get("version", 0)]


def _place(state: dict[str, Any], node_id: str, ts: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    lin = state.get("lin")
    if lin is not None and (lin.get("used") or lin["parent"] == ""):
        return None, None  # it has referred someone, or it is a root: fixed
    claims = state.get("claims", {})
    best = min(claims.values(), key=_rank) if claims else None
    previous = None if lin is None else {"root_id": lin["root"], "node_id": node_id}
    if best is None:
        if lin is None:
            return None, None
        del state["lin"]
        gone = {"node_id": node_id, "parent_id": "", "root_id": lin["root"], "generation": 0, "ts": ts, "active": 0}
        return gone, previous
    if lin is not None and lin.get("rank") == _rank(best) and lin["parent"] == best["parent_id"]:
        return None, None
    state["lin"] = {
        "root": best["root_id"],
        "gen": best["generation"],
        "parent": best["parent_id"],
        "own": best["own"],
        "anc": best["anc"],
        "rank": _rank(best),
        "used": False,
    }
    node = {
        "node_id": node_id,
        "parent_id": best["parent_id"],
        "root_id": best["root_id"],
        "generation": best["generation"],
        "ts": best["ts"],
        "active": 1,
    }
    return node, previous


def identity_match(lin: dict[str, Any], identities: list[str]) -> str | None:
    """``self_referral`` or ``referral_ring`` when the order's identities meet the lineage."""
    ids = set(identities)
    if not ids:
        return None
    if ids & set(lin["own"]):
        return "self_referral"
    if ids & set(lin["anc"]):
        return "referral_ring"
    return None


# -- a customer's key: claims, retractions and holds -------------------------------------
def holds(state: dict[str, Any]) -> bool:
    """True while a parked referrer may still send this customer a claim."""
    return bool(state.get("holds"))


def on_claim(state: dict[str, Any], claim: dict[str, Any], now_s: float = 0.0) -> list[Output]:
    """A claim to make this customer a node (or move it to an earlier parent), or the
    retraction of one whose order lost its credit, or a parked referrer's (un)hold.
    ``now_s``: when it was placed."""
    kind = claim.get("type")
    if kind in ("hold", "unhold"):
        held = state.setdefault("holds", {})
        if kind == "hold":
            held[claim["by"]] = 1
        else:
            held.pop(claim["by"], None)
        if not held:
            del state["holds"]
        return []
    if kind == "retract":
        node, previous = retract_claim(state, claim)
    else:
        node, previous = apply_claim(state, claim)
    if node is None:
        return []
    if "lin" in state:
        state["lin"]["placed"] = now_s
    version = next_seq(state)
    out: list[Output] = [("chain_nodes", node["node_id"], {**node, "version": version})]
    if previous is not None:
        out.append(("ripple-chains", previous["root_id"], {"type": "remove", **previous, "ts": claim["ts"]}))
    if node["active"]:
        out.append(("ripple-chains", node["root_id"], {"type": "node", **node}))
    return out
