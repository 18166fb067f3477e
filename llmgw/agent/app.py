"""The agent's HTTP routes, for gateways and people:

* ``GET /status``: the llama.cpp build, free memory, and each worker: its state, pid, restarts,
  last exit, protocol version, devices, the clients holding it, the memory it uses;
* ``POST /restart`` (body ``{"port": 50052}``, or nothing for every worker): start a worker
  again now; a gateway asks for it when a coordinator of its own died without closing its
  connection and the worker waits on it;
* ``GET /health``: ``{"status": "ok"}``, without a key (for service managers).

With ``api_key`` set, the first two want ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any

from tornado import web

import llmgw
from llmgw.agent.config import AgentConfig
from llmgw.agent.host import Build, holders, memory
from llmgw.agent.supervisor import Supervisor
from llmgw.runtime.probe import SystemProbe

logger = logging.getLogger(__name__)


class Agent:
    """What the routes read: the config, the build, the supervisors."""

    def __init__(self, config: AgentConfig, supervisors: list[Supervisor], build: Build | None) -> None:
        self.config = config
        self.supervisors = supervisors
        self.build = build
        self.started = time.time()
        self.probe = SystemProbe()

    async def status(self) -> dict[str, Any]:
        workers = [await self._worker(supervisor) for supervisor in self.supervisors]
        return {
            "agent": {"version": llmgw.__version__, "pid": os.getpid(), "uptime": round(time.time() - self.started, 1)},
            "build": None if self.build is None else {"commit": self.build.commit, "ggml": self.build.ggml},
            "memory": await memory(),
            "workers": workers,
        }

    async def _worker(self, supervisor: Supervisor) -> dict[str, Any]:
        spec, pid = supervisor.spec, supervisor.pid
        usage = await self.probe.measure(pid) if pid is not None else None
        clients = holders(pid, spec.port)
        last = supervisor.last_exit
        return {
            "address": spec.address,
            "port": spec.port,
            "devices": list(spec.devices),
            "device_info": list(supervisor.device_info),
            "protocol": supervisor.protocol,
            # Dead but not yet noticed (its last output is being read): not running any more.
            "state": "restarting" if pid is None and supervisor.state.value == "running" else supervisor.state.value,
            "pid": pid,
            "since": supervisor.started_at,
            "restarts": supervisor.restarts,
            "next_start_at": supervisor.next_start_at,
            "last_exit": None
            if last is None
            else {"code": last.code, "at": last.at, "reason": last.reason, "output": last.output},
            "held": bool(clients),
            "clients": clients,
            "memory_mib": None if usage is None else round(usage.rss_mib + sum(usage.gpu_mib.values()), 1),
            "rss_mib": None if usage is None else round(usage.rss_mib, 1),
            "gpu_mib": None if usage is None else {str(i): mib for i, mib in usage.gpu_mib.items()},
        }

    def restart(self, port: int | None) -> list[str]:
        chosen = [s for s in self.supervisors if port is None or s.spec.port == port]
        for supervisor in chosen:
            supervisor.restart()
        return [supervisor.spec.address for supervisor in chosen]


class _Handler(web.RequestHandler):
    def initialize(self, agent: Agent) -> None:
        self.agent = agent

    def prepare(self) -> None:
        key = self.agent.config.api_key
        if key is None:
            return
        given = self.request.headers.get("Authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            self.set_status(401)
            self.set_header("WWW-Authenticate", "Bearer")
            self.write_json({"error": "a valid API key is required (Authorization: Bearer KEY)"})
            self.finish()

    def write_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.write_json({"error": self._reason})


class StatusHandler(_Handler):
    async def get(self) -> None:
        self.write_json(await self.agent.status())


class RestartHandler(_Handler):
    def post(self) -> None:
        port: int | None = None
        if self.request.body:
            try:
                data = json.loads(self.request.body)
            except ValueError:
                raise web.HTTPError(400, reason='the body must be JSON like {"port": 50052}') from None
            value = data.get("port") if isinstance(data, dict) else None
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise web.HTTPError(400, reason="'port' must be an integer")
            port = value
        restarted = self.agent.restart(port)
        if not restarted:
            raise web.HTTPError(404, reason=f"no worker on port {port}")
        self.write_json({"restarting": restarted})


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(b'{"status": "ok"}')


def make_app(agent: Agent) -> web.Application:
    return web.Application(
        [
            (r"/status", StatusHandler, {"agent": agent}),
            (r"/restart", RestartHandler, {"agent": agent}),
            (r"/health", HealthHandler),
        ],
        default_handler_class=_NotFound,
        default_handler_args={"agent": agent},
    )


class _NotFound(_Handler):
    def prepare(self) -> None:
        raise web.HTTPError(404, reason="not found (routes: GET /status, POST /restart, GET /health)")
