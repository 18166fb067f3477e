"""A pool of gateways: what peers say of themselves (``state``), when one is trusted
(``breaker``), where a request goes (``routing``: pure), and the I/O that watches them and
sends them requests (``pool``)."""

from llmgw.peers.breaker import Breaker, BreakerState
from llmgw.peers.pool import PeerLink, PeerPool
from llmgw.peers.routing import (
    HOP_HEADER,
    SERVED_BY_HEADER,
    Candidate,
    Rank,
    Route,
    StickyTable,
    conversation_key,
    route,
)
from llmgw.peers.state import (
    LLMGW,
    OPENAI,
    ModelState,
    NodeState,
    Pool,
    Start,
    StateError,
    parse_model_list,
    parse_state,
)

__all__ = [
    "HOP_HEADER",
    "LLMGW",
    "OPENAI",
    "SERVED_BY_HEADER",
    "Breaker",
    "BreakerState",
    "Candidate",
    "ModelState",
    "NodeState",
    "PeerLink",
    "PeerPool",
    "Pool",
    "Rank",
    "Route",
    "Start",
    "StateError",
    "StickyTable",
    "conversation_key",
    "parse_model_list",
    "parse_state",
    "route",
]
