"""The slot cache keys: ``slot_cache = { dir = "...", max_mb = 4096 }`` on the server (every
model's default) or on a model (its own; ``false`` turns the server's off for it)."""

from __future__ import annotations

import os

from llmgw.config.reader import Node
from llmgw.config.schema import ConfigError, SlotCache

_KEYS = frozenset({"dir", "max_mb"})
_WHAT = 'a table like { dir = "/var/cache/llmgw/slots", max_mb = 4096 }'


def slot_cache(node: Node, default: SlotCache | None) -> SlotCache | None:
    """The cache a server or model sets; ``default`` (the server's, for a model) fills the keys it
    leaves out. Absent: ``default``; ``false``: none."""
    if not node.exists():
        return default
    if node.kind == "boolean":
        if node.boolean():
            node.fail("must be a table of dir and max_mb, or false (true says nothing of where)")
        return None
    if node.kind != "table":
        node.expect(_WHAT)
    node.warn_unknown(node.label, _KEYS)
    dir_node = node.child("dir")
    if dir_node.exists():
        directory = os.path.abspath(dir_node.string())
    elif default is not None:
        directory = default.dir
    else:
        dir_node.fail("is required (the directory where slot files are kept)")
    max_node = node.child("max_mb")
    max_mb = max_node.positive_number() if max_node.exists() else (default.max_mb if default else SlotCache.max_mb)
    return SlotCache(directory, max_mb)


def check_shared_dirs(caches: list[tuple[str, SlotCache]]) -> None:
    """One directory is one budget: the models sharing it must agree on max_mb."""
    seen: dict[str, tuple[str, SlotCache]] = {}
    for place, cache in caches:
        first = seen.setdefault(cache.dir, (place, cache))
        if first[1].max_mb != cache.max_mb:
            raise ConfigError(
                f"{place}: slot_cache.max_mb is {cache.max_mb:g} but {first[0]}: slot_cache.max_mb is "
                f"{first[1].max_mb:g}, for the same directory {cache.dir} (one directory, one budget)"
            )
