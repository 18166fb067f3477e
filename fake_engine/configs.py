"""Helpers shared by the tests and the benchmarks: free ports and Lua config text."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = str(HERE / "fake_llama_server.py")
FAKE_TOKENIZE = str(HERE / "fake_llama_tokenize.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the OS picks it); fine for tests on loopback."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def lua(value: Any) -> str:
    """Python value -> Lua literal (enough for configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)
