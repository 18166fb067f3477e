"""``python -m llmgw ps``: what a running gateway has loaded, like ``ollama ps``.

It asks the gateway (``GET /running``) rather than reading any local state, so it shows what
really runs: the gateway is found from ``--url``, else the first listen address of ``-c
config.lua``, else http://127.0.0.1:7777; the API key comes from ``--api-key`` or the
``LLMGW_API_KEY`` environment variable (never printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from llmgw.config import ConfigError, ConfigLoader

DEFAULT_URL = "http://127.0.0.1:7777"
COLUMNS = ("MODEL", "VARIANT", "CONTEXT", "STATE", "MEMORY", "IN FLIGHT", "LAST USED / UNTIL")
PEER_COLUMNS = ("PEER", "BREAKER", "MODELS", "LOADED", "IN FLIGHT", "QUEUED", "SENT", "FAILURES")


class GatewayUnreachable(Exception):
    """One line for the user: what was asked, and why it failed."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="llmgw ps", description="Show what a running llmgw gateway has loaded.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"the gateway's base URL (default {DEFAULT_URL})")
    where.add_argument("-c", "--config", help="the gateway's config: its first listen address is asked")
    parser.add_argument("--api-key", default=os.environ.get("LLMGW_API_KEY"), help="API key (default: $LLMGW_API_KEY)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    return parser.parse_args(argv)


def gateway_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    if args.config:
        host, port = ConfigLoader(args.config).load().server.listen[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard is reached on loopback
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return DEFAULT_URL


def fetch_running(url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url + "/running", headers={"Accept": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise GatewayUnreachable(
                f"the gateway at {url} wants an API key (--api-key or LLMGW_API_KEY), or refused the one given"
            ) from exc
        raise GatewayUnreachable(f"the gateway at {url} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayUnreachable(f"no llmgw gateway answers at {url} ({reason})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("engines"), list):
        raise GatewayUnreachable(f"{url}/running did not answer like an llmgw gateway")
    return data


def _duration(seconds: float) -> str:
    seconds = round(max(seconds, 0.0))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s" if seconds % 60 else f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _state(engine: dict[str, Any]) -> str:
    state = str(engine.get("state", "?"))
    load = engine.get("load")
    if state == "starting" and isinstance(load, dict):
        if load.get("percent") is not None:
            return f"loading {load['percent']}%"
        return f"loading {_duration(load.get('elapsed') or 0)}"
    return state


def _memory(engine: dict[str, Any]) -> str:
    memory = engine.get("memory_mib") or {}
    shown = ", ".join(f"{pool} {mib:.0f} MiB" for pool, mib in memory.items())
    if shown and engine.get("memory_source") == "estimated":
        shown = "~" + shown  # from the model file's header, not measured yet
    return shown or "?"


def _used(engine: dict[str, Any], now: float) -> str:
    last = engine.get("last_used")
    used = "never" if last is None else f"{_duration(now - last)} ago"
    until = engine.get("idle_unload_in")
    if until is not None:
        return f"{used} / unload in {_duration(until)}"
    if engine.get("state") == "ready" and not engine.get("in_flight"):
        return f"{used} / stays"
    return used


def render(running: dict[str, Any], now: float | None = None) -> str:
    """The table ``llmgw ps`` prints, from a ``GET /running`` answer."""
    now = time.time() if now is None else now
    rows: list[tuple[str, ...]] = []
    for engine in running.get("engines", []):
        context = engine.get("context")
        rows.append(
            (
                str(engine.get("model", "?")),
                str(engine.get("variant", "?")),
                str(context) if context is not None else "?",
                _state(engine),
                _memory(engine),
                str(engine.get("in_flight", 0)),
                _used(engine, now),
            )
        )
    lines = _table(COLUMNS, rows)
    queue = running.get("queue") or []
    if queue:
        waiting = ", ".join(f"{t.get('model')} ({t.get('phase')})" for t in queue)
        lines.append(f"{len(queue)} request(s) waiting: {waiting}")
    peers = running.get("peers") or []
    if peers:
        lines.append("")
        lines.append(f"node {running.get('node', '?')}: {len(peers)} peer(s)")
        lines.extend(_table(PEER_COLUMNS, [_peer_row(peer) for peer in peers]))
    return "\n".join(lines)


def _peer_row(peer: dict[str, Any]) -> tuple[str, ...]:
    breaker = peer.get("breaker") or {}
    state = str(breaker.get("state", "?"))
    if peer.get("draining"):
        state += ", draining"
    if peer.get("key_refused"):
        state += ", refused our key"
    return (
        str(peer.get("name", "?")),
        state,
        ", ".join(peer.get("models") or []) or "-",
        ", ".join(peer.get("loaded") or []) or "-",
        str(peer.get("in_flight", 0)),
        str(peer.get("queued", 0)),
        str(peer.get("forwarded", 0)),
        str(peer.get("failures", 0)),
    )


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    rows = [columns, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        url = gateway_url(args)
        running = fetch_running(url, args.api_key, args.timeout)
    except ConfigError as exc:
        print(f"llmgw ps: invalid config: {exc}", file=sys.stderr)
        return 2
    except GatewayUnreachable as exc:
        print(f"llmgw ps: {exc}", file=sys.stderr)
        return 1
    print(render(running))
    return 0
