"""Entry point: ``python -m llmgw --config config.lua``; ``python -m llmgw ps``: what a gateway has loaded;
``python -m llmgw agent --config agent.lua``: on a host lending its devices to gateways over RPC.

A launch reads the configuration and opens its listening sockets first, then imports the rest
(Tornado, the services: most of the start-up time): clients that connect meanwhile are served
once the gateway is up instead of being refused. Subcommands import only what they use.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmgw.config import Config

logger = logging.getLogger("llmgw")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llmgw",
        description=__doc__,
        epilog="python -m llmgw ps --help: what a running gateway has loaded; "
        "python -m llmgw agent --help: on a host lending its devices over llama.cpp RPC",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", help="Lua configuration file")
    source.add_argument(
        "--demo", action="store_true", help="built-in demo: real llama-server + gemma-3 270M (needs llmgw[real])"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--check-config", action="store_true", help="validate the config, print a summary, exit")
    return parser.parse_args(argv)


async def serve(config_path: str, config: Config, sockets: list[socket.socket]) -> int:
    import asyncio
    import signal

    from llmgw.config import ConfigError, ConfigLoader
    from llmgw.server import GatewayServer

    gateway = GatewayServer(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            new_config = await asyncio.to_thread(ConfigLoader(config_path).load)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running config: %s", exc)
            return
        await gateway.reload(new_config)

    def on_hup() -> None:
        logger.info("SIGHUP: reloading %s", config_path)
        task = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_stop(signame: str) -> None:
        logger.info("%s: shutting down", signame)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await gateway.start(sockets)
        logger.info("llmgw ready: %d model(s): %s", len(config.models), ", ".join(config.model_names()))
        await stop.wait()
    finally:
        await gateway.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    logger.info("llmgw stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["ps"]:  # a subcommand of its own: the gateway's own options stay as they were
        from llmgw import ps

        return ps.main(given[1:])
    if given[:1] == ["agent"]:  # on a host lending its devices over RPC; imported only then
        from llmgw.agent.main import main as agent_main

        return agent_main(given[1:])
    args = parse_args(argv)
    if args.demo:
        from llmgw.demo import DemoUnavailable, demo_config_path, demo_environment

        try:
            os.environ.update(demo_environment())
        except DemoUnavailable as exc:
            print(f"llmgw: {exc}", file=sys.stderr)
            return 2
        args.config = demo_config_path()
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # The format shows no caller, thread or process: skip finding them for every record (the
    # logging HOWTO's own advice); each request logs an access line and the engine's output.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    from llmgw import listen
    from llmgw.config import ConfigError, ConfigLoader

    try:
        config = ConfigLoader(args.config).load()
    except ConfigError as exc:
        print(f"llmgw: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(config.summary())
        return 0
    try:
        sockets = listen.bind(config.server.listen)
    except OSError as exc:
        print(f"llmgw: cannot start: {exc}", file=sys.stderr)
        return 1
    import asyncio

    try:
        return asyncio.run(serve(args.config, config, sockets))
    except ConfigError as exc:
        print(f"llmgw: invalid config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmgw: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        for sock in sockets:
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
