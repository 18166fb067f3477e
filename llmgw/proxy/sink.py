"""What the request path needs from the client side, without Tornado: the request as parsed, and
the connection the answer goes to (the server's handler gives one of each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from llmgw.api import Endpoint
from llmgw.api.usage import AnswerStats
from llmgw.config import ModelConfig, Priority
from llmgw.upstream import UpstreamCall


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


class ClientSink(Protocol):
    """The client connection an answer is written to."""

    @property
    def gone(self) -> bool: ...

    @property
    def started(self) -> bool:
        """Bytes of the answer went out: its status can no longer change, nor the node that serves it."""

    def tie(self, call: UpstreamCall | None) -> None:
        """Abort ``call`` as soon as the client disconnects (None: nothing to abort any more)."""

    def start_response(self, status: int, headers: list[tuple[str, str]]) -> None: ...

    async def send(self, chunk: bytes) -> None:
        """Write and flush; raises ClientGone."""

    async def send_whole(self, body: bytes) -> None:
        """The whole answer, its length known: sent in one write, and the response is over."""


@dataclass(frozen=True)
class ProxyRequest:
    """A model request as the handler parsed and checked it."""

    endpoint: Endpoint
    path: str  # forwarded as it is: llama-server answers every route the gateway serves
    body: bytes
    data: dict[str, Any]
    model: ModelConfig
    requested: str  # the name the client used (a model name or an alias): answers carry it
    request_id: str
    stats: AnswerStats = field(default_factory=AnswerStats)  # tokens and tokens/s, read from the answer
    priority: Priority = Priority.INTERACTIVE  # its key's: its place when it waits for an engine
