"""11. A pool of gateways: what a peer adds, what a routing decision costs, where traffic goes.

* ``peer_latency``: gateway B serves model P (a fake engine, loaded); gateway A has no models and
  lists B as a peer. The same small request, alternating: to A (A forwards it to B) and straight
  to B. **Added** = A - B per repeat (median and p99), non-streamed and streamed (time to first
  text), on loopback. Also the cost of routing on a pooled node for a model it serves itself:
  gateway C (model L, B as a peer) against gateway D (model L, no peers), both loaded.
* ``routing_decision``: the pure decision as the request path makes it (the peers' candidates for
  a model, this node's, the conversation key and its sticky lookup, the ranking) timed in-process
  at 3 and at 30 peers, each peer listing 20 models.
* ``pool_sim``: 100 fake peers (in this process, each answering ``/health``, ``/api/state`` and
  chat requests: 2 slots, a queue beyond them, up to 2 models warm at a time, 1 warm at the start
  (so each model is warm on 5 nodes), a cold start costs ``cold_start`` s and evicts the least
  recently used), a gateway with all of them as peers and no models of its own, and clients
  sending requests for 20 models (popularity ~ 1/rank: the first model gets about a quarter of
  them, more than its 5 warm nodes' 10 slots hold at 40 clients) through it. It reports where
  requests went: served warm or after a cold start, the longest queue any node saw, how evenly
  nodes were used.

Targets: peer-added median <= 2 ms (issue 16, loopback); a decision at 30 peers <= 0.5 ms; in
the simulation at least 90 % of requests served warm and no node with more than ``spill_queue``
(2) requests waiting.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tornado import httpserver, netutil, web

from benchmarks.client import Response
from benchmarks.common import Ctx, Results, Target, chat, words
from benchmarks.harness import HOST, GatewayProc, ModelSpec, fake_engine, free_port
from benchmarks.stats import fmt, mid, ms, spread, summary, table, target
from llmgw.config import PeerConfig, Peering
from llmgw.peers import Candidate, ModelState, NodeState, PeerPool, Start, StickyTable, conversation_key, route

NAMES = ("peer_latency", "routing_decision", "pool_sim")
NEEDS_REAL: tuple[str, ...] = ()
PATH = "/v1/chat/completions"
TARGET_ADDED_MS = 2.0
TARGET_DECISION_MS = 0.5
TARGET_WARM = 0.9
SPILL = 2


@dataclass
class PeerLatencyParams:
    requests: int = 300  # per probe and path, per repeat
    repeats: int = 3


@dataclass
class DecisionParams:
    peers: tuple[int, ...] = (3, 30)
    iterations: int = 20000
    repeats: int = 5


@dataclass
class PoolSimParams:
    nodes: int = 100
    models: int = 20
    requests: int = 2000
    clients: int = 40
    service: float = 0.2  # seconds a request holds a slot (long: the nodes, not the gateway, are the bottleneck)
    cold_start: float = 0.3
    warm_per_node: int = 2  # models a node keeps warm at most
    warm_at_start: int = 1  # models each node has warm at the start (model i mod models on node i)
    slots: int = 2
    check_interval: float = 1.0


# --------------------------------------------------------------------------- 11a. peer latency


def _ok(resp: Response, stream: bool) -> float:
    if resp.status != 200:
        raise RuntimeError(f"request failed: {resp.status} {resp.body[:200]!r}")
    if stream:
        if resp.ttft is None:
            raise RuntimeError("stream without text")
        return resp.ttft
    return resp.total


async def _wait_peer(gw: GatewayProc, peer: str, model: str, timeout: float = 30.0) -> None:
    """Until ``gw`` sees ``peer`` healthy with ``model`` loaded."""
    deadline = time.monotonic() + timeout
    async with gw.connection() as conn:
        while time.monotonic() < deadline:
            running = (await conn.request("GET", "/running", timeout=10)).json()
            for view in running.get("peers", []):
                if view["name"] == peer and view["breaker"]["state"] == "closed" and model in view["loaded"]:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{peer} never showed {model} loaded")


async def run_peer_latency(ctx: Ctx, params: PeerLatencyParams) -> dict[str, Any]:
    work = ctx.workdir
    spec_p, spec_l, spec_l2 = (fake_engine(free_port(), 4096, n) for n in ("P", "L", "L"))
    b = GatewayProc(work, [ModelSpec("P", [spec_p])], name="gw-peer-b", node_name="b")
    peer = {"b": {"url": f"http://{HOST}:{b.port}"}}
    a = GatewayProc(
        work, [], name="gw-peer-a", profile=ctx.profile_path("peer_a"), node_name="a", peers=peer, peer_check_interval=1
    )
    c = GatewayProc(work, [ModelSpec("L", [spec_l])], name="gw-peer-c", node_name="c", peers=peer)
    d = GatewayProc(work, [ModelSpec("L", [spec_l2])], name="gw-peer-d", node_name="d")
    gateways = (b, a, c, d)
    small = chat("P", "Hello there, how are you?", max_tokens=8)
    local = chat("L", "Hello there, how are you?", max_tokens=8)
    repeats: list[dict[str, Any]] = []
    for gw in gateways:
        await gw.start()
    try:
        await b.load("P")
        await c.load("L")
        await d.load("L")
        await _wait_peer(a, "b", "P")
        conns = {
            ("peer", "via"): a.connection(),
            ("peer", "direct"): b.connection(),
            ("peer_ttft", "via"): a.connection(),
            ("peer_ttft", "direct"): b.connection(),
            ("local", "pooled"): c.connection(),
            ("local", "alone"): d.connection(),
        }
        bodies = {"peer": small, "peer_ttft": dict(small, stream=True), "local": local}

        async def probe(name: str, path: str) -> float:
            resp = await conns[(name, path)].request("POST", PATH, bodies[name], timeout=30)
            if name == "peer" and path == "via" and resp.headers.get("x-llmgw-served-by") != "b":
                raise RuntimeError(f"not served by the peer: {resp.headers}")
            return _ok(resp, name == "peer_ttft")

        try:
            for _ in range(20):
                for name, path in conns:
                    await probe(name, path)
            for r in range(params.repeats):
                ctx.log(f"peer_latency: repeat {r + 1}/{params.repeats}")
                samples: dict[tuple[str, str], list[float]] = {key: [] for key in conns}
                keys = list(conns)
                for i in range(params.requests):
                    k = i % len(keys)
                    for name, path in keys[k:] + keys[:k]:
                        samples[(name, path)].append(await probe(name, path))
                repeats.append({f"{n}/{p}": summary([ms(x) for x in v], 4) for (n, p), v in samples.items()})
            # The forwarding gateway's CPU per request: a block of requests through it alone.
            proc = psutil.Process(a.proc.pid)
            c0 = proc.cpu_times()
            for _ in range(params.requests):
                await probe("peer", "via")
            c1 = proc.cpu_times()
            cpu = (c1.user + c1.system - c0.user - c0.system) / params.requests
        finally:
            for conn in conns.values():
                await conn.close()
    finally:
        for gw in gateways:
            await gw.stop()
    result: dict[str, Any] = {
        "requests_per_repeat": params.requests,
        "repeats": params.repeats,
        "probes": {},
        "forwarding_cpu_ms_per_request": round(cpu * 1000, 4),
    }
    for key in repeats[0]:
        result["probes"][key] = {stat: spread([rep[key][stat] for rep in repeats], 4) for stat in ("median", "p99")}
    for name, (via, direct) in {
        "peer": ("via", "direct"),
        "peer_ttft": ("via", "direct"),
        "local": ("pooled", "alone"),
    }.items():
        result[f"added_{name}_ms"] = {
            stat: spread([rep[f"{name}/{via}"][stat] - rep[f"{name}/{direct}"][stat] for rep in repeats], 4)
            for stat in ("median", "p99")
        }
    result["all_ok"] = True
    return result


# --------------------------------------------------------------------------- 11b. the decision


def _pool(n: int, rng: random.Random) -> PeerPool:
    peering = Peering(peers=tuple(PeerConfig(f"p{i}", f"http://10.0.{i // 200}.{i % 200 + 1}:7777") for i in range(n)))
    pool = PeerPool(peering, None, "me")  # type: ignore[arg-type]  # never started: no I/O
    for i, link in enumerate(pool.links.values()):
        models = tuple(
            ModelState(
                f"m{k}",
                contexts=(4096, 32768),
                loaded=(i + k) % 4 == 0,
                context=4096,
                slots=4,
                in_flight=rng.randint(0, 5),
                queued=rng.randint(0, 2),
                start=rng.choice(list(Start)),
            )
            for k in range(20)
        )
        link.state = NodeState(node=link.name, models=models)
        link.kind = "llmgw"
    return pool


def run_decision(ctx: Ctx, params: DecisionParams) -> dict[str, Any]:
    rng = random.Random(16)
    result: dict[str, Any] = {"iterations": params.iterations, "repeats": params.repeats, "peers": {}}
    body = {"model": "m7", "messages": [{"role": "system", "content": words(200)}, {"role": "user", "content": "hi"}]}
    local = ModelState("m7", loaded=False, start=Start.FITS)
    for n in params.peers:
        pool = _pool(n, rng)
        sticky = StickyTable()
        per_call: list[float] = []
        for _ in range(params.repeats):
            t0 = time.perf_counter()
            for i in range(params.iterations):
                key = conversation_key("client-key", body)
                candidates = pool.candidates("m7")
                candidates.append(Candidate("me", True, local))
                decided = route(candidates, capability="chat", sticky=sticky.get(key, i), spill=SPILL)
                sticky.put(key, decided.nodes[0], i)
            per_call.append((time.perf_counter() - t0) / params.iterations)
        result["peers"][str(n)] = {"decision_us": spread([x * 1e6 for x in per_call], 2)}
        ctx.log(f"routing_decision: {n} peers: {fmt(result['peers'][str(n)]['decision_us'], 1)} us")
    result["all_ok"] = True
    return result


# --------------------------------------------------------------------------- 11c. 100 nodes


@dataclass
class SimNode:
    """A fake peer: slots, a queue beyond them, a few models warm, cold starts that evict."""

    name: str
    params: PoolSimParams
    warm: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    port: int = 0  # the OS picks one at start()
    in_flight: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    queued: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    served: int = 0
    served_warm: int = 0
    cold_starts: int = 0
    max_waiting: int = 0
    starting: set[str] = field(default_factory=set)
    server: httpserver.HTTPServer | None = None

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.params.slots)

    def state(self) -> dict[str, Any]:
        busy = {m for m, n in self.in_flight.items() if n} | {m for m, n in self.queued.items() if n}
        full = len(self.warm) >= self.params.warm_per_node
        idle_warm = [m for m in self.warm if m not in busy]
        start = "fits" if not full else "evicts" if idle_warm else "waits"
        return {
            "llmgw": "sim",
            "node": self.name,
            "draining": False,
            "models": [
                {
                    "name": f"m{k}",
                    "contexts": [4096],
                    "loaded": f"m{k}" in self.warm,
                    "loading": f"m{k}" in self.starting,
                    "slots": self.params.slots,
                    "in_flight": self.in_flight[f"m{k}"],
                    "queued": self.queued[f"m{k}"],
                    "start": start,
                }
                for k in range(self.params.models)
            ],
        }

    async def serve(self, model: str) -> None:
        was_warm = model in self.warm
        self.queued[model] += 1
        if sum(self.in_flight.values()) >= self.params.slots:  # every slot taken: it waits
            self.max_waiting = max(self.max_waiting, sum(self.queued.values()))
        async with self.slots:
            self.queued[model] -= 1
            self.in_flight[model] += 1
            try:
                if model not in self.warm:
                    self.starting.add(model)
                    await asyncio.sleep(self.params.cold_start)
                    self.starting.discard(model)
                    if model not in self.warm:
                        self.cold_starts += 1
                        self.warm[model] = None
                        while len(self.warm) > self.params.warm_per_node:
                            self.warm.popitem(last=False)
                self.warm.move_to_end(model)
                await asyncio.sleep(self.params.service)
            finally:
                self.in_flight[model] -= 1
        self.served += 1
        self.served_warm += was_warm

    def start(self) -> None:
        app = web.Application([(r"/.*", _SimHandler, {"node": self})], log_function=lambda handler: None)
        self.server = httpserver.HTTPServer(app)
        sockets = netutil.bind_sockets(0, HOST)  # a port of its own, no race with anyone's
        self.port = sockets[0].getsockname()[1]
        self.server.add_sockets(sockets)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()


class _SimHandler(web.RequestHandler):
    def initialize(self, node: SimNode) -> None:
        self.node = node

    def get(self) -> None:
        if self.request.path == "/health":
            self.finish({"status": "ok"})
        elif self.request.path == "/api/state":
            self.finish(self.node.state())
        else:
            self.set_status(404)
            self.finish({"error": {"message": "no route", "type": "invalid_request_error"}})

    async def post(self) -> None:
        data = json.loads(self.request.body)
        model = data["model"]
        await self.node.serve(model)
        self.finish({"object": "chat.completion", "model": model, "choices": [], "usage": {}})


async def run_pool_sim(ctx: Ctx, params: PoolSimParams) -> dict[str, Any]:
    rng = random.Random(100)
    nodes = [SimNode(f"n{i:03d}", params) for i in range(params.nodes)]
    models = [f"m{k}" for k in range(params.models)]
    for i, node in enumerate(nodes):  # at first each model is warm on nodes / models * warm_at_start nodes
        for j in range(params.warm_at_start):
            node.warm[models[(i * params.warm_at_start + j) % params.models]] = None
        node.start()
    peers = {node.name: {"url": f"http://{HOST}:{node.port}"} for node in nodes}
    gw = GatewayProc(
        ctx.workdir,
        [],
        name="gw-pool-sim",
        node_name="front",
        peers=peers,
        peer_check_interval=params.check_interval,
        queue_timeout=60,
    )
    popularity = [1 / (k + 1) for k in range(params.models)]
    plan = rng.choices(models, popularity, k=params.requests)
    served_by: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    latencies: list[float] = []
    await gw.start()
    try:
        await _wait_pool(gw, params.nodes)
        t0 = time.perf_counter()
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        for i, model in enumerate(plan):
            queue.put_nowait((i, model))

        async def client() -> None:
            async with gw.connection() as conn:
                while not queue.empty():
                    i, model = queue.get_nowait()
                    resp = await conn.request("POST", PATH, chat(model, f"conversation {i}", max_tokens=4), timeout=60)
                    if resp.status != 200:
                        failures.append(f"{resp.status} {resp.body[:120]!r}")
                        continue
                    latencies.append(resp.total)
                    served_by[resp.headers.get("x-llmgw-served-by", "?")] += 1

        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(params.clients))), 600)
        wall = time.perf_counter() - t0
    finally:
        await gw.stop()
        for node in nodes:
            await node.stop()
    served = [node.served for node in nodes]
    total = sum(served)
    used = [n for n in served if n]
    result = {
        "nodes": params.nodes,
        "models": params.models,
        "requests": params.requests,
        "clients": params.clients,
        "failed": len(failures),
        "failures": failures[:5],
        "warm_ratio": round(sum(node.served_warm for node in nodes) / max(total, 1), 4),
        "cold_starts": sum(node.cold_starts for node in nodes),
        "max_waiting": max(node.max_waiting for node in nodes),
        "nodes_used": len(used),
        "per_node_max": max(served),
        "per_node_mean_used": round(total / max(len(used), 1), 2),
        "latency_ms": summary([ms(x) for x in latencies], 2),
        "requests_per_s": round(total / wall, 1),
        "all_ok": not failures and total == params.requests,
    }
    ctx.log(
        f"pool_sim: warm {result['warm_ratio']:.1%}, {result['cold_starts']} cold starts, longest queue "
        f"{result['max_waiting']}, {len(used)} nodes used, at most {max(served)} requests on one"
    )
    return result


async def _wait_pool(gw: GatewayProc, nodes: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with gw.connection() as conn:
        while time.monotonic() < deadline:
            running = (await conn.request("GET", "/running", timeout=10)).json()
            ready = [p for p in running.get("peers", []) if p["breaker"]["state"] == "closed" and p["models"]]
            if len(ready) == nodes:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway never saw every simulated node")


# --------------------------------------------------------------------------- the module interface


async def run(ctx: Ctx, name: str, params: Any) -> dict[str, Any]:
    if name == "peer_latency":
        return await run_peer_latency(ctx, params)
    if name == "routing_decision":
        return run_decision(ctx, params)
    return await run_pool_sim(ctx, params)


def targets(results: Results) -> list[Target]:
    rows = []
    if "peer_latency" in results:
        added = results["peer_latency"]["added_peer_ms"]["median"]
        value = mid(added)
        rows.append(
            target(
                "11. peers",
                f"added median of a request served by a peer, loopback <= {TARGET_ADDED_MS:g} ms",
                value,
                value is not None and value <= TARGET_ADDED_MS,
                f"{fmt(added, 2)} ms",
            )
        )
    if "routing_decision" in results:
        at30 = results["routing_decision"]["peers"].get("30")
        if at30 is not None:
            value = mid(at30["decision_us"])
            rows.append(
                target(
                    "11. peers",
                    f"routing decision at 30 peers <= {TARGET_DECISION_MS:g} ms",
                    value / 1000 if value is not None else None,
                    value is not None and value / 1000 <= TARGET_DECISION_MS,
                    f"{fmt(at30['decision_us'], 1)} us",
                )
            )
    if "pool_sim" in results:
        sim = results["pool_sim"]
        rows.append(
            target(
                "11. peers",
                f"{sim['nodes']}-node simulation: >= {TARGET_WARM:.0%} of requests served warm",
                sim["warm_ratio"],
                sim["warm_ratio"] >= TARGET_WARM,
                f"{sim['warm_ratio']:.1%}",
            )
        )
        rows.append(
            target(
                "11. peers",
                f"{sim['nodes']}-node simulation: no node with more than {SPILL} waiting",
                sim["max_waiting"],
                sim["max_waiting"] <= SPILL,
                str(sim["max_waiting"]),
            )
        )
    return rows


def section(results: Results) -> str:
    parts = ["## 11. A pool of gateways\n"]
    if "peer_latency" in results:
        pl = results["peer_latency"]
        p = pl["probes"]
        rows = []
        for name, via, direct, label in (
            ("peer", "via", "direct", "small request: via a peer vs straight to the peer"),
            ("peer_ttft", "via", "direct", "streamed, time to first text: via a peer vs straight"),
            ("local", "pooled", "alone", "a local model on a node with peers vs one without"),
        ):
            a = pl[f"added_{name}_ms"]
            rows.append(
                [
                    label,
                    fmt(p[f"{name}/{direct}"]["median"], 3),
                    fmt(p[f"{name}/{via}"]["median"], 3),
                    f"**{fmt(a['median'], 3)}**",
                    fmt(a["p99"], 3),
                ]
            )
        parts.append(
            f"Loopback, fake engines loaded, {pl['requests_per_repeat']} requests per probe and path per repeat, "
            f"{pl['repeats']} repeats (median [min, max] over repeats). The forwarding gateway spends "
            f"{pl['forwarding_cpu_ms_per_request']:.2f} ms of CPU per request it sends to a peer.\n\n"
            + table(["probe", "direct median ms", "through median ms", "added median ms", "added p99 ms"], rows)
        )
    if "routing_decision" in results:
        rd = results["routing_decision"]
        rows = [[n, fmt(v["decision_us"], 1)] for n, v in rd["peers"].items()]
        parts.append(
            f"\nThe routing decision in-process (peers' candidates, conversation key and sticky lookup, "
            f"ranking; 20 models per peer), {rd['iterations']} decisions x {rd['repeats']} repeats:\n\n"
            + table(["peers", "us per decision"], rows)
        )
    if "pool_sim" in results:
        sim = results["pool_sim"]
        parts.append(
            f"\n{sim['nodes']} simulated nodes behind one gateway, {sim['models']} models (popularity ~ 1/rank), "
            f"{sim['requests']} requests from {sim['clients']} clients: **{sim['warm_ratio']:.1%} served warm**, "
            f"{sim['cold_starts']} cold starts, longest queue at any node **{sim['max_waiting']}**, "
            f"{sim['nodes_used']} nodes used, at most {sim['per_node_max']} requests on one node "
            f"(mean {sim['per_node_mean_used']} over the nodes used), latency {fmt(sim['latency_ms'], 1)} ms, "
            f"{sim['requests_per_s']} requests/s, {sim['failed']} failed.\n"
        )
    return "\n".join(parts)


def headlines(results: Results) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if "peer_latency" in results:
        out["peer_added_ms"] = mid(results["peer_latency"]["added_peer_ms"]["median"])
        out["peer_local_added_ms"] = mid(results["peer_latency"]["added_local_ms"]["median"])
    if "routing_decision" in results:
        for n, v in results["routing_decision"]["peers"].items():
            out[f"routing_decision_{n}_us"] = mid(v["decision_us"])
    if "pool_sim" in results:
        out["pool_sim_warm_ratio"] = results["pool_sim"]["warm_ratio"]
        out["pool_sim_max_waiting"] = results["pool_sim"]["max_waiting"]
    return out


def plot(results: Results, path: Path) -> bool:
    return False


def blockers(results: Results, row: Target) -> str:
    return ""
