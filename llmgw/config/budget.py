"""Placement keys: the memory budget, the pools a variant uses and the memory it declares.

A budget is one number (a single pool, ``total``: the engine's RSS plus its GPU memory) or a
table of named pools (``{ gpu0 = 24000, gpu1 = 24000, ram = 64000 }``: ``gpuN`` is NVIDIA
device N's memory, ``ram`` the engine's RSS). A variant uses the pools its ``devices`` list
names (cascading from the model), else every pool of the budget.
"""

from __future__ import annotations

from llmgw.config.reader import POSITIVE_INT_RE, Node, quote

TOTAL_POOL = "total"

_BUDGET_WHAT = "a number of MiB or a table of pools like { gpu0 = 24000, gpu1 = 24000 }"


def memory_budget(node: Node) -> tuple[tuple[str, float], ...]:
    if not node.exists():
        return ()
    if node.kind == "number":
        return ((TOTAL_POOL, node.positive_number()),)
    if node.kind != "table":
        node.expect(_BUDGET_WHAT)
    pools: list[tuple[str, float]] = []
    for name in node.child_names():
        if POSITIVE_INT_RE.fullmatch(name):
            node.fail(f"must be {_BUDGET_WHAT}, but has the key [{name}]")
        pools.append((name, node.child(name).positive_number()))
    if not pools:
        node.fail(f"must be {_BUDGET_WHAT}, got an empty table")
    return tuple(sorted(pools))


def devices(node: Node, budget: tuple[tuple[str, float], ...]) -> tuple[str, ...] | None:
    """The pools named by a ``devices`` list, checked against the budget; None when absent."""
    if not node.exists():
        return None
    items = node.items("a list of memory pool names")
    if not items:
        node.fail("must not be an empty list")
    known = [pool for pool, _ in budget]
    if not budget or known == [TOTAL_POOL]:
        node.fail("needs server.memory_budget to be a table of pools (like { gpu0 = 24000, gpu1 = 24000 })")
    names: list[str] = []
    for item in items:
        name = item.string()
        if name not in known:
            item.fail(f"is not a pool of server.memory_budget (its pools: {', '.join(known)})")
        names.append(name)
    return tuple(dict.fromkeys(names))


def variant_pools(chosen: tuple[str, ...] | None, budget: tuple[tuple[str, float], ...]) -> tuple[str, ...]:
    if chosen is not None:
        return chosen
    return tuple(pool for pool, _ in budget)


def declared_memory(
    node: Node, pools: tuple[str, ...], budget: tuple[tuple[str, float], ...]
) -> tuple[tuple[str, float], ...] | None:
    """MiB per pool the variant declares (a number is split evenly over its pools); None: measure it."""
    if not node.exists():
        return None
    what = "a number of MiB (>= 0) or a table of MiB per pool"
    if node.kind == "number":
        value = node.numeric()
        if value is None or value < 0:
            node.expect(what)
        if not pools:
            return ((TOTAL_POOL, float(value)),)  # no budget: only shown, never enforced
        declared = tuple((pool, float(value) / len(pools)) for pool in pools)
    elif node.kind == "table":
        entries: list[tuple[str, float]] = []
        for name in node.child_names():
            if name not in pools:
                used = ", ".join(pools) or "none: server.memory_budget is not set"
                node.fail(f"names the pool {quote(name)}, which this variant does not use (its pools: {used})")
            value = node.child(name).numeric()
            if value is None or value < 0:
                node.child(name).expect("a number of MiB (>= 0)")
            entries.append((name, float(value)))
        declared = tuple(sorted(entries))
    else:
        node.expect(what)
    limits = dict(budget)
    for pool, mib in declared:
        if pool in limits and mib > limits[pool]:
            node.fail(
                f"declares {mib:g} MiB on {pool}, more than server.memory_budget allows there "
                f"({limits[pool]:g} MiB): the variant could never start"
            )
    return declared
