"""A model request on a node with peers: where it goes is decided first, then it is tried on each
node in that order until one begins to answer.

The decision is :func:`llmgw.peers.route` over this node's state of the model and each peer's.
Then, for each node in turn:

* **this node**: the local request path (an :class:`~llmgw.proxy.exchange.Exchange`), unchanged;
  if it fails before a byte reached the client (its engine failed to start, died, could not
  count), the next node gets the request;
* **a peer**: the request as the client sent it, with the peer's key, this node's name in the hop
  header and the request id, over the engine client's pooled, abortable calls. The peer counts,
  picks its variant and rewrites model names itself. A transport failure or a 5xx answer (and a
  401/403/404/408/429: the peer cannot take it) before the answer began hands the request to the
  next node; once the answer began it is relayed to its end, never retried.

Every answer carries ``X-Llmgw-Served-By``. When every node failed, the client gets the last
peer's own error answer (it is in the route's dialect), else the last error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from llmgw.api import Endpoint, ModelRewriter, engine_error_body
from llmgw.api.usage import AnswerStats
from llmgw.config import LiveConfig
from llmgw.errors import (
    EngineStartError,
    EngineStartTimeout,
    EngineUnavailable,
    GatewayError,
    NoNodeAvailable,
    PeerUnavailable,
    TokenCountError,
)
from llmgw.peers import HOP_HEADER, SERVED_BY_HEADER, Candidate, Route, StickyTable, route
from llmgw.peers.pool import PeerLink, PeerPool
from llmgw.peers.state import LLMGW
from llmgw.proxy.exchange import Proxy
from llmgw.proxy.node import LocalNode
from llmgw.proxy.relay import PassThrough, relay
from llmgw.proxy.sink import ClientSink, ProxyRequest
from llmgw.upstream import UpstreamCall, UpstreamError, relay_headers

logger = logging.getLogger(__name__)

# A peer that answers these cannot take the request now (busy, draining, confused, no longer has
# the model, refuses our key): the next node may.
_NEXT_NODE = frozenset({401, 403, 404, 408, 429})
_NOT_ITS_FAULT = frozenset({503})  # a 5xx that says "busy or draining", not "broken": no breaker count
# Local failures that another node may not share (its engine, its process), before any byte went out.
_LOCAL_NEXT = (EngineStartError, EngineStartTimeout, EngineUnavailable, TokenCountError)
_MAX_ERROR_BODY = 64 * 1024  # of a peer's error answer kept to relay if every node fails


@dataclass(frozen=True)
class PooledRequest:
    """A model request on a node with peers, before it is known where it goes."""

    name: str  # the model name (or alias) the client asked for
    endpoint: Endpoint
    path: str
    body: bytes  # as the client sent it (the model named): what a peer gets
    data: dict[str, Any]
    request_id: str
    stats: AnswerStats
    conversation: str | None  # the API key and prompt start, hashed (stickiness); None: no prompt
    local: ProxyRequest | None  # as this node serves it (its filters applied); None: only peers have it


def forwarded_body(data: dict[str, Any], raw: bytes, name: str) -> bytes:
    """The client's body, naming the model (a request that left it to this node's default names it)."""
    if data.get("model") == name:
        return raw
    return json.dumps({**data, "model": name}, ensure_ascii=False, separators=(",", ":")).encode()


class Router:
    """What every routed request shares: the local path, the peers, this node, the conversations."""

    def __init__(self, live: LiveConfig, proxy: Proxy, pool: PeerPool, node: LocalNode) -> None:
        self.live = live
        self.proxy = proxy
        self.pool = pool
        self.node = node
        self.sticky = StickyTable()

    @property
    def pooled(self) -> bool:
        """Peers are configured: requests are routed (else they go straight to the local path)."""
        return bool(self.live.current.server.peering.peers)

    async def forward(self, request: PooledRequest, sink: ClientSink) -> None:
        """Serve one request. Raises GatewayError only while nothing has been sent to the client."""
        await Routed(self, request, sink).run()

    def decide(self, request: PooledRequest, now: float) -> Route:
        candidates = self.pool.candidates(request.name)
        capability = request.endpoint.capability
        if request.local is not None:
            state = self.node.model_state(request.local.model, capability)
            candidates.append(Candidate(self.node.name, True, state))
        return route(
            candidates,
            capability=capability,
            sticky=self.sticky.get(request.conversation, now),
            spill=self.live.current.server.peering.spill_queue,
        )


class Routed:
    def __init__(self, router: Router, request: PooledRequest, sink: ClientSink) -> None:
        self.router = router
        self.request = request
        self.sink = sink
        self.error: GatewayError | None = None  # the last failure, raised if no node answers
        # The last peer's own error answer (status, headers, body, peer): relayed if no node answers.
        self.answer: tuple[int, Any, bytes, PeerLink] | None = None

    async def run(self) -> None:
        router, request = self.router, self.request
        loop = asyncio.get_running_loop()
        decided = router.decide(request, loop.time())
        if not decided.nodes:
            raise self._nobody()
        logger.debug(
            "[%s] model %r: nodes %s (%s)%s",
            request.request_id,
            request.name,
            ", ".join(decided.nodes),
            ", ".join(r.name.lower() for r in decided.ranks),
            " (its conversation)" if decided.sticky else "",
        )
        for node in decided.nodes:
            if self.sink.gone:
                return
            if node == router.node.name:
                served = await self._local()
            else:
                link = router.pool.links.get(node)
                served = link is not None and await self._peer(link)
            if served:
                router.sticky.put(request.conversation, node, loop.time())
                return
        if self.answer is not None:
            await self._relay_error(*self.answer)
            return
        assert self.error is not None
        raise self.error

    def _nobody(self) -> NoNodeAvailable:
        request, pool = self.request, self.router.pool
        states = ", ".join(
            f"{link.name} ({link.breaker.state.value}{', draining' if link.state and link.state.draining else ''})"
            for link in pool.links.values()
            if link.routes(request.name) is not None
        )
        return NoNodeAvailable(
            f"model {request.name!r} is served only by peers, and none can take a request now: {states}; try again",
            retry_after=self.router.live.current.server.peering.check_interval,
        )

    # ------------------------------------------------------------------ this node

    async def _local(self) -> bool:
        local = self.request.local
        assert local is not None
        try:
            await self.router.proxy.forward(local, self.sink)
        except _LOCAL_NEXT as exc:
            if self.sink.started or self.sink.gone:
                raise
            logger.warning(
                "[%s] model %r failed on this node before answering (%s): trying the next node",
                self.request.request_id,
                local.model.name,
                exc.message,
            )
            self.error, self.answer = exc, None
            return False
        return True

    # ------------------------------------------------------------------ a peer

    async def _peer(self, link: PeerLink) -> bool:
        """True once the peer's answer is relayed (or the client left); False: the next node's turn."""
        request, sink, router = self.request, self.sink, self.router
        pool, config = router.pool, router.live.current
        model = link.routes(request.name)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "X-Request-Id": request.request_id,
            HOP_HEADER: router.node.name,
            **link.headers(),
        }
        url = link.config.url + request.path
        call = UpstreamCall(pool.http, url, request.body, headers, connect_timeout=config.server.peering.check_timeout)
        active = router.proxy.active
        active.add(call)
        call.add_done_callback(active.discard)
        sink.tie(call)
        try:
            with pool.sending(link, model.name if model is not None else request.name, call):
                try:
                    # No bound on the head: a peer answering its checks is waited for (its own
                    # queue_timeout bounds that); one that stops answering them trips, which aborts this.
                    status, head = await call.head()
                except UpstreamError as exc:
                    if sink.gone:
                        return True
                    pool.failed(link, str(exc)[:200])
                    self.error, self.answer = PeerUnavailable(f"peer {link.name!r} failed: {exc}"), None
                    self._next(link, str(exc))
                    return False
                if status >= 500 or status in _NEXT_NODE:
                    body = await self._error_body(call)
                    if status >= 500 and status not in _NOT_ITS_FAULT:
                        pool.failed(link, f"answered {status}")
                    else:
                        pool.stale(link)
                    self.answer = (status, head, body, link)
                    self._next(link, f"answered {status}")
                    return False
                pool.succeeded(link)
                await self._relay(call, status, head, link)
                return True
        finally:
            sink.tie(None)
            call.abort()  # no-op when complete; closes the connection on any early exit

    def _next(self, link: PeerLink, why: str) -> None:
        logger.warning(
            "[%s] model %r: peer %r failed before answering (%s): trying the next node",
            self.request.request_id,
            self.request.name,
            link.name,
            why,
        )

    async def _relay(self, call: UpstreamCall, status: int, head: Any, link: PeerLink) -> None:
        request = self.request
        headers = _served_by(relay_headers(head), link.name)
        if status >= 400 and link.kind != LLMGW:
            # A plain server's error, in the route's dialect (as an engine's is).
            body = await self._error_body(call)
            self.sink.start_response(status, headers)
            await self.sink.send_whole(engine_error_body(request.endpoint.dialect, status, body))
            return
        await relay(
            call,
            self.sink,
            status,
            head.get("Content-Type", ""),
            headers,
            idle=self.router.live.current.server.timeouts.stream_idle,
            # Another llmgw answers with the name the client asked for already.
            rewriter=PassThrough() if link.kind == LLMGW else ModelRewriter(request.name),
            stats=request.stats,
            endpoint=request.endpoint,
            source=f"peer {link.name!r}",
        )

    async def _relay_error(self, status: int, head: Any, body: bytes, link: PeerLink) -> None:
        """Every node failed: the last peer's own answer (an llmgw's is in the route's dialect)."""
        headers = _served_by(relay_headers(head), link.name)
        if link.kind != LLMGW:
            body = engine_error_body(self.request.endpoint.dialect, status, body)
        self.sink.start_response(status, headers)
        await self.sink.send_whole(body)

    @staticmethod
    async def _error_body(call: UpstreamCall) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in call.chunks(30.0):
                parts.append(chunk)
                size += len(chunk)
                if size > _MAX_ERROR_BODY:
                    break
        except UpstreamError:
            pass
        return b"".join(parts)[:_MAX_ERROR_BODY]


def _served_by(headers: list[tuple[str, str]], node: str) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in headers if k.lower() != SERVED_BY_HEADER.lower()]
    return [*kept, (SERVED_BY_HEADER, node)]
