"""The peers as this gateway watches them: a breaker each, what each said last, and the tasks that
keep both current, all on the event loop with bounded timeouts.

Per peer, one task:

* checks ``GET /health`` every ``check_interval`` (``check_timeout`` each); a failed check is
  repeated at once until the breaker trips or a check passes, so a peer that went silent is
  tripped within ``Peering.trip_bound``;
* after each good check reads the peer's state: ``GET /api/state`` from an llmgw, else (a 404
  there) ``GET /v1/models`` from any OpenAI-compatible server;
* from an llmgw, also follows ``GET /events`` (another task): an engine or queue change there
  reads the state again at once, instead of an interval later.

Requests this gateway forwards report back (:meth:`PeerPool.failed`, :meth:`PeerPool.succeeded`):
connect errors, timeouts and 5xx answers count against the breaker too, and a failure has the
peer checked at once. When a breaker trips, the requests in flight to that peer are aborted: those
whose answer had not begun go to another node.

A peer's API key goes only into the Authorization header of requests to it: never into a log line,
a message or a view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmgw.config import PeerConfig, Peering
from llmgw.peers.breaker import Breaker, BreakerState
from llmgw.peers.routing import Candidate
from llmgw.peers.state import LLMGW, OPENAI, ModelState, NodeState, StateError, parse_model_list, parse_state
from llmgw.upstream import EngineHTTPClient, UpstreamCall, UpstreamError

logger = logging.getLogger(__name__)

_EVENTS_IDLE = 40.0  # an llmgw's /events sends a keep-alive every 15 s: silence this long is a broken stream
_EVENTS_RETRY = 5.0  # seconds before a /events stream that ended is followed again
_EVENTS_REFUSED = 300.0  # ... that was refused to our key (not an admin key on the peer)
_DEBOUNCE = 0.05  # events in a burst (an engine ready, the queue moving on) read the state once


@dataclass
class _Sent:
    """A request forwarded to a peer, while it runs."""

    model: str
    at: float  # loop time it was sent


class PeerLink:
    """One peer: its breaker, its last state, the requests in flight to it."""

    def __init__(self, config: PeerConfig, peering: Peering, clock: Callable[[], float]) -> None:
        self.config = config
        self.breaker = Breaker(peering.trip_after, peering.recover_after, peering.min_dwell, clock)
        self.state: NodeState | None = None
        self.state_at = 0.0  # loop time of the last good state read
        self.kind: str | None = None  # LLMGW or OPENAI, once it answered
        self.refused = False  # it refused our key (401/403): nothing is routed to it until it accepts it
        self.calls: set[UpstreamCall] = set()
        self.sent: list[_Sent] = []
        self.forwarded = 0  # requests sent to it
        self.failures = 0  # of which failed before their answer began, or checks that failed
        self.wake = asyncio.Event()  # check now (a failure), or read the state now (an event)
        self.check_now = False
        self.read_now = False
        self.task: asyncio.Task[None] | None = None
        self.events_task: asyncio.Task[None] | None = None
        self.events_after = 0.0  # loop time before which /events is not followed again (it just failed)

    @property
    def name(self) -> str:
        return self.config.name

    def headers(self) -> dict[str, str]:
        key = self.config.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def routes(self, requested: str) -> ModelState | None:
        """Its state of the model called ``requested``, if it lists it and the config lets it serve it."""
        if self.state is None or self.refused:
            return None
        model = self.state.model(requested)
        if model is None:
            return None
        allowed = self.config.models
        if allowed is not None and requested not in allowed and model.name not in allowed:
            return None
        return model

    def pending(self, model: str) -> int:
        """Requests of ``model`` sent to it since its state was read (the state counts the others)."""
        return sum(1 for sent in self.sent if sent.model == model and sent.at > self.state_at)

    def ours(self, model: str) -> int:
        """Requests of ``model`` this gateway sent it that still run."""
        return sum(1 for sent in self.sent if sent.model == model)

    def view(self) -> dict[str, Any]:
        """As /running, /api/state and the page show it: never the key."""
        state = self.state
        return {
            "name": self.name,
            "url": self.config.url,
            "kind": self.kind,
            "breaker": self.breaker.view(),
            "draining": state.draining if state is not None else False,
            "models": state.names() if state is not None and not self.refused else [],
            "loaded": [m.name for m in state.models if m.loaded] if state is not None else [],
            "in_flight": state.in_flight if state is not None else 0,
            "queued": state.queued if state is not None else 0,
            "sent": len(self.sent),
            "forwarded": self.forwarded,
            "failures": self.failures,
            "weight": self.config.weight,
            "key_refused": self.refused,
        }


class PeerPool:
    def __init__(
        self,
        peering: Peering,
        http: EngineHTTPClient,
        node_name: str,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        """``on_change``: told a peer's name and breaker state whenever it trips or recovers."""
        self.peering = peering
        self.http = http
        self.node_name = node_name
        self.on_change = on_change
        self.links: dict[str, PeerLink] = {}
        self._running = False
        self._sync()

    @staticmethod
    def _clock() -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self._running = True
        for link in self.links.values():
            self._watch(link)

    async def stop(self) -> None:
        self._running = False
        tasks = [t for link in self.links.values() for t in (link.task, link.events_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def configure(self, peering: Peering, node_name: str) -> None:
        """A reload: new peers are watched, removed ones forgotten (their requests in flight run on),
        peers whose url and key are unchanged keep their breaker and state."""
        self.peering = peering
        self.node_name = node_name
        self._sync()

    def _sync(self) -> None:
        wanted = {peer.name: peer for peer in self.peering.peers}
        for name in list(self.links):
            link = self.links[name]
            peer = wanted.get(name)
            if peer is None or (peer.url, peer.api_key) != (link.config.url, link.config.api_key):
                self._forget(self.links.pop(name))
        for name, peer in wanted.items():
            kept = self.links.get(name)
            if kept is not None:
                kept.config = peer  # models and weight take effect at once
                kept.breaker.trip_after = self.peering.trip_after
                kept.breaker.recover_after = self.peering.recover_after
                kept.breaker.min_dwell = self.peering.min_dwell
                continue
            link = self.links[name] = PeerLink(peer, self.peering, self._clock)
            if self._running:
                self._watch(link)

    def _forget(self, link: PeerLink) -> None:
        for task in (link.task, link.events_task):
            if task is not None:
                task.cancel()

    # ------------------------------------------------------------------ what routing reads

    def candidates(self, requested: str) -> list[Candidate]:
        found = []
        for link in self.links.values():
            model = link.routes(requested)
            if model is None:
                continue
            state = link.state
            assert state is not None
            found.append(
                Candidate(
                    node=link.name,
                    local=False,
                    model=model,
                    weight=link.config.weight,
                    pending=link.pending(model.name),
                    ours=link.ours(model.name),
                    available=link.breaker.allows,
                    draining=state.draining,
                )
            )
        return found

    def knows(self, requested: str) -> bool:
        """Some peer lists the model (whether it can serve now or not)."""
        return any(link.routes(requested) is not None for link in self.links.values())

    def serving(self) -> dict[str, list[tuple[str, ModelState]]]:
        """Model name -> the peers that could take a request for it now, with their state of it.
        Aliases a peer lists are names of their own here."""
        found: dict[str, list[tuple[str, ModelState]]] = {}
        for link in self.links.values():
            state = link.state
            if state is None or not link.breaker.allows or state.draining:
                continue
            for name in state.names():
                model = link.routes(name)
                if model is not None:
                    found.setdefault(name, []).append((link.name, model))
        return found

    def views(self) -> list[dict[str, Any]]:
        return [self.links[name].view() for name in sorted(self.links)]

    # ------------------------------------------------------------------ what forwarding reports

    @contextlib.contextmanager
    def sending(self, link: PeerLink, model: str, call: UpstreamCall) -> Iterator[None]:
        """A request to ``link`` while it runs: counted as pending, aborted if the peer trips."""
        sent = _Sent(model, self._clock())
        link.sent.append(sent)
        link.calls.add(call)
        link.forwarded += 1
        try:
            yield
        finally:
            link.sent.remove(sent)
            link.calls.discard(call)

    def failed(self, link: PeerLink, why: str) -> None:
        """A request failed on the peer's side (transport, timeout, 5xx): counts against it, and it is
        checked at once."""
        link.failures += 1
        self._failure(link, why)
        link.check_now = True
        link.wake.set()

    def succeeded(self, link: PeerLink) -> None:
        link.breaker.success(check=False)

    def stale(self, link: PeerLink) -> None:
        """The peer answered as if its state changed (it no longer has the model, it is busy): read it again."""
        link.read_now = True
        link.wake.set()

    def _failure(self, link: PeerLink, why: str) -> None:
        if not link.breaker.failure(why):
            return
        logger.warning(
            "peer %r tripped after %d failure(s) in a row (last: %s): nothing goes to it until it recovers",
            link.name,
            link.breaker.trip_after,
            why,
        )
        for call in list(link.calls):
            call.abort()  # answers not begun go to another node; begun ones end with an error event
        if self.on_change is not None:
            self.on_change(link.name, link.breaker.state)

    def _success(self, link: PeerLink) -> None:
        if link.breaker.success(check=True):
            logger.info("peer %r recovered: requests go to it again", link.name)
            if self.on_change is not None:
                self.on_change(link.name, link.breaker.state)

    # ------------------------------------------------------------------ watching one peer

    def _watch(self, link: PeerLink) -> None:
        link.task = asyncio.ensure_future(self._watch_loop(link))

    async def _watch_loop(self, link: PeerLink) -> None:
        loop = asyncio.get_running_loop()
        next_check = 0.0
        while True:
            try:
                link.wake.clear()  # what sets it from here on is seen below
                now = loop.time()
                if now >= next_check or link.check_now:
                    link.check_now = False
                    next_check = now + self.peering.check_interval  # a steady cadence
                    if await self._check(link):
                        await self._read_state(link)
                elif link.read_now:
                    link.read_now = False
                    await asyncio.sleep(_DEBOUNCE)
                    if link.breaker.allows:
                        await self._read_state(link)
                if link.breaker.suspect:
                    link.check_now = True  # a failure: checked again at once, tripped within trip_bound
                if link.check_now or link.read_now:
                    continue
                self._follow_events(link)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.wake.wait(), max(next_check - loop.time(), 0.0))
            except asyncio.CancelledError:
                raise
            except Exception:  # the watch never dies: a bug here must not leave a peer unwatched
                logger.exception("peer %r: watching it failed; trying again", link.name)
                await asyncio.sleep(self.peering.check_interval)

    async def _check(self, link: PeerLink) -> bool:
        timeout = self.peering.check_timeout
        try:
            reply = await self.http.json_exchange(link.config.url + "/health", timeout=timeout, headers=link.headers())
        except UpstreamError as exc:
            link.failures += 1
            self._failure(link, _short(exc))
            return False
        if reply.status != 200:
            link.failures += 1
            self._failure(link, f"/health answered {reply.status}")
            return False
        self._success(link)
        return True

    async def _read_state(self, link: PeerLink) -> bool:
        """Its state: /api/state from an llmgw, /v1/models from any other server. False when the
        peer did not answer (a failure, as a failed check would be)."""
        timeout = self.peering.check_timeout
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            if link.kind != OPENAI:
                reply = await self.http.json_exchange(
                    link.config.url + "/api/state", timeout=timeout, headers=link.headers()
                )
                if reply.status == 404:
                    link.kind = OPENAI
            if link.kind == OPENAI:
                reply = await self.http.json_exchange(
                    link.config.url + "/v1/models", timeout=timeout, headers=link.headers()
                )
        except UpstreamError as exc:
            link.failures += 1
            self._failure(link, _short(exc))
            return False
        if reply.status in (401, 403):
            if not link.refused:
                logger.warning("peer %r refused this gateway's api_key (%d): set its api_key", link.name, reply.status)
            link.refused = True
            return True
        link.refused = False
        if reply.status != 200:
            logger.warning("peer %r: reading its state answered %d", link.name, reply.status)
            return True
        try:
            if link.kind == OPENAI:
                state = parse_model_list(link.name, reply.data)
            else:
                state = parse_state(reply.data)
                link.kind = LLMGW
        except StateError as exc:
            logger.warning("peer %r: its state is not understood: %s", link.name, exc)
            return True
        link.state = state
        link.state_at = asked
        return True

    def _follow_events(self, link: PeerLink) -> None:
        """An llmgw peer's /events, followed while it is healthy: changes are read at once."""
        if (
            link.kind == LLMGW
            and link.breaker.allows
            and not link.refused
            and (link.events_task is None or link.events_task.done())
            and self._clock() >= link.events_after
        ):
            link.events_task = asyncio.ensure_future(self._events(link))

    async def _events(self, link: PeerLink) -> None:
        headers = {"Accept": "text/event-stream", **link.headers()}
        call = UpstreamCall(
            self.http,
            link.config.url + "/events?only=engine,queue,node",  # not every request's start and end
            None,
            headers,
            method="GET",
            connect_timeout=self.peering.check_timeout,
        )
        link.calls.add(call)  # a trip ends it too
        refused = False
        try:
            status, _ = await call.head(self.peering.check_timeout)
            if status != 200:
                refused = status in (401, 403)  # not an admin key there: the state is polled instead
                return
            async for chunk in call.chunks(_EVENTS_IDLE):
                if b"event: engine" in chunk or b"event: queue" in chunk or b"event: node" in chunk:
                    link.read_now = True
                    link.wake.set()
        except UpstreamError:
            pass  # the next good check follows it again
        finally:
            link.calls.discard(call)
            call.abort()
            # A stream that ends at once (a peer without /events, a refusal) is not asked again for a while.
            link.events_after = self._clock() + (_EVENTS_REFUSED if refused else _EVENTS_RETRY)


def _short(exc: Exception) -> str:
    """An error for a log line or a view: bounded (URLs in it carry no credentials: config refuses them)."""
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
