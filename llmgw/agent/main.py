"""``python -m llmgw agent --config agent.lua``: run the agent until SIGTERM or SIGINT.

It starts every configured ``ggml-rpc-server``, keeps them running, and answers ``GET /status``
on ``listen``. Stopping the agent stops its workers (and the process guard kills them if the
agent itself is killed), so a service manager that restarts the agent restarts them too.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys

from tornado import httpserver, netutil

from llmgw.agent import config as agent_config
from llmgw.agent.app import Agent, make_app
from llmgw.agent.host import find_build
from llmgw.agent.supervisor import Supervisor
from llmgw.config import ConfigError
from llmgw.runtime.guard import ProcessGuard

logger = logging.getLogger("llmgw.agent")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llmgw agent",
        description="Supervise ggml-rpc-server workers for llmgw gateways and report how they stand.",
    )
    parser.add_argument("-c", "--config", required=True, help="Lua file that sets agent = { ... }")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--check-config", action="store_true", help="validate the config, print a summary, exit")
    return parser.parse_args(argv)


async def serve(config: agent_config.AgentConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    guard = ProcessGuard()
    guard.start()
    build = await asyncio.to_thread(find_build, config.binary, config.environment)
    if build is not None:
        logger.info("llama.cpp build %s (ggml %s)", build.commit, build.ggml)
    for spec in config.workers:
        _warn_if_exposed(spec.host)
    supervisors = [Supervisor(config, spec, guard) for spec in config.workers]
    host, port = config.listen
    server = httpserver.HTTPServer(make_app(Agent(config, supervisors, build)))
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server.add_sockets(netutil.bind_sockets(port, address=host, family=family))
        for supervisor in supervisors:
            supervisor.start()
        logger.info("agent listening on %s:%d, %d worker(s)", host, port, len(supervisors))
        await stop.wait()
        logger.info("stopping")
    finally:
        server.stop()
        await asyncio.gather(*(supervisor.stop() for supervisor in supervisors))
        guard.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def _warn_if_exposed(host: str) -> None:
    """The RPC protocol has no authentication: a worker on every interface, or on a public address,
    lets anyone who reaches it run code on this host."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a host name: cannot tell
    if address.is_unspecified or not (address.is_private or address.is_loopback):
        logger.warning(
            "worker address %s: the RPC protocol has no authentication; bind workers to a private link's "
            "address (WireGuard, a VLAN) and firewall the port",
            host,
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    # A worker logs a line for every client connection (hundreds while a coordinator loads): its
    # output is kept for crash reports and only its warnings are logged; the agent logs the rest.
    logging.getLogger("llmgw.engine.output").setLevel(logging.WARNING)
    try:
        config = agent_config.load(args.config)
    except ConfigError as exc:
        print(f"llmgw agent: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"config {config.path}: OK")
        print(f"listen: {config.listen[0]}:{config.listen[1]}; binary: {config.binary}")
        for spec in config.workers:
            print(f"worker {spec.address}: {config.binary} {' '.join(config.args(spec))}")
        return 0
    try:
        return asyncio.run(serve(config))
    except OSError as exc:
        print(f"llmgw agent: cannot start: {exc}", file=sys.stderr)
        return 1
