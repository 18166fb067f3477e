"""The pool keys: this node's name, its ``peers`` (other gateways requests may go to) and how
they are watched.

``peers = { NAME = { url = "http://host:port", api_key = "...", models = {...}, weight = N } }``
in the server section; ``url`` is required, the rest optional. A peer's ``api_key`` is a secret:
no message ever quotes it.
"""

from __future__ import annotations

from llmgw.config.reader import POSITIVE_INT_RE, Node, base_url, quote
from llmgw.config.schema import NODE_NAME_RE, ConfigError, PeerConfig, Peering, default_node_name

_PEER_KEYS = frozenset({"url", "api_key", "models", "weight"})
POOL_KEYS = frozenset(
    {
        "node_name",
        "peers",
        "peer_check_interval",
        "peer_check_timeout",
        "peer_trip_after",
        "peer_recover_after",
        "peer_min_dwell",
        "spill_queue",
    }
)
_NAME_WHAT = "a name of letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)"
_PEERS_WHAT = 'a table of NAME = { url = "http://host:port", ... }'


def node_name(node: Node) -> str:
    if not node.exists():
        return default_node_name()
    name = node.string()
    if not NODE_NAME_RE.fullmatch(name):
        node.expect(_NAME_WHAT)
    return name


def _url(node: Node) -> str:
    """http://host:port, nothing else: the gateway's HTTP client speaks plain HTTP (put TLS in a
    tunnel such as WireGuard or SSH between boxes)."""
    text = node.string()
    if text.startswith("https://"):
        node.fail(f"is https ({quote(text)}): only http:// is spoken to peers (use a tunnel for TLS)")
    if "@" in text.partition("://")[2].partition("/")[0]:
        node.fail("must not hold credentials (put the peer's key in api_key)")
    return base_url(node, "an http:// URL with host and port like http://gpu-box:7777")


def _peer(node: Node, name: str) -> PeerConfig:
    node.table("a table with url (and api_key, models, weight)")
    node.warn_unknown(node.label, _PEER_KEYS)
    key_node = node.child("api_key")
    models_node = node.child("models")
    models: tuple[str, ...] | None = None
    if models_node.exists():
        items = models_node.items("a list of model names")
        if not items:
            models_node.fail("must not be empty (leave it out to route every model the peer lists)")
        models = tuple(dict.fromkeys(item.string() for item in items))
    weight_node = node.child("weight")
    return PeerConfig(
        name=name,
        url=_url(node.child("url")),
        api_key=key_node.string(secret=True) if key_node.exists() else None,
        models=models,
        weight=weight_node.positive_number() if weight_node.exists() else 1.0,
    )


def peering(server: Node, own_name: str) -> Peering:
    node = server.child("peers")
    peers: list[PeerConfig] = []
    if node.exists():
        node.table(_PEERS_WHAT)
        seen: dict[str, str] = {}
        for name in sorted(node.child_names()):
            if POSITIVE_INT_RE.fullmatch(name):
                node.fail(f"must be {_PEERS_WHAT}, but has the key [{name}] (a list, not names)")
            entry = node.child(name)
            if not NODE_NAME_RE.fullmatch(name):
                node.fail(f"has the peer name {quote(name)}, which is not {_NAME_WHAT}")
            if name == own_name:
                entry.fail(f"has this node's own name {quote(own_name)} (server.node_name): a peer is another node")
            peer = _peer(entry, name)
            if peer.url in seen:
                raise ConfigError(f"{entry.label}.url is the url of {seen[peer.url]} too ({peer.url})")
            seen[peer.url] = f"{node.label}.{name}"
            peers.append(peer)
    defaults = Peering()
    interval = server.get_seconds("peer_check_interval", defaults.check_interval)
    # Unset, the timeout is the default or the interval if that is shorter; set, it must fit in one.
    timeout = server.get_seconds("peer_check_timeout", min(defaults.check_timeout, interval))
    if timeout > interval:
        server.child("peer_check_timeout").fail(
            f"({timeout:g} s) is longer than server.peer_check_interval ({interval:g} s)"
        )
    return Peering(
        peers=tuple(peers),
        check_interval=interval,
        check_timeout=timeout,
        trip_after=server.get_int("peer_trip_after", 1, defaults.trip_after),
        recover_after=server.get_int("peer_recover_after", 1, defaults.recover_after),
        min_dwell=server.get_seconds("peer_min_dwell", defaults.min_dwell, allow_zero=True),
        spill_queue=server.get_int("spill_queue", 1, defaults.spill_queue),
    )
