#!/usr/bin/env python3
"""llama.cpp's RPC backend, faked for tests: both ends, no tensors.

**The worker** (``python fake_engine/fake_rpc.py -H HOST -p PORT [-d DEVS] [-t N] [-c]``) acts
as ``ggml-rpc-server`` 0.10068 does where the gateway and the agent can see it: the banner on
stdout (protocol version, devices), one client at a time (listen backlog 1; the next client's
connect succeeds but it waits), exit code 0 with ``Failed to create server socket`` on stderr
when it cannot bind, and 0 on an unknown argument.

**The coordinator** side (:class:`Links`, used by fake_llama_server.py for ``--rpc``): connects
to every worker at start-up; with ``--device`` listing them, a worker it cannot reach fails the
start (exit 1, ``invalid device: RPCn``), as llama-server does. A worker that goes away is
noticed at the next generation, which aborts the process (SIGABRT) with llama-server's message.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Sequence

PROTOCOL = "4.0.3"
_CRASH = (
    "/tmp/llama-cpp-src/ggml/src/ggml-rpc/ggml-rpc.cpp:498: Remote RPC server crashed or returned malformed response"
)


# ----------------------------------------------------------------------------- the coordinator's side


class Links:
    """The coordinator's connections to its workers; ``lost`` once one of them closed."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self.lost = threading.Event()
        for sock in sockets:
            threading.Thread(target=self._watch, args=(sock,), daemon=True).start()

    def _watch(self, sock: socket.socket) -> None:
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
        self.lost.set()

    def check(self) -> None:
        """Abort the process, as llama-server does, when a worker went away."""
        if self.lost.is_set():
            print("E send failed (bytes_sent=0, size_to_send=8)", file=sys.stderr, flush=True)
            print(_CRASH, file=sys.stderr, flush=True)
            os.abort()


def connect(endpoints: str, devices: str | None) -> Links | str:
    """Connect to every ``host:port`` of ``--rpc``; an error message when a listed device is missing."""
    sockets: list[socket.socket] = []
    reached = 0
    for endpoint in endpoints.split(","):
        host, _, port = endpoint.rpartition(":")
        try:
            sockets.append(socket.create_connection((host, int(port)), timeout=5.0))
            reached += 1
        except (OSError, ValueError):
            print(f"E Failed to connect to {endpoint}", file=sys.stderr, flush=True)
    for sock in sockets:
        sock.settimeout(None)
    wanted = [name for name in (devices or "").split(",") if name.startswith("RPC")]
    missing = [name for name in wanted if int(name[3:] or 0) >= reached]
    if missing:
        for sock in sockets:
            sock.close()
        return f'error while handling argument "--device": invalid device: {missing[0]}'
    return Links(sockets)


# ----------------------------------------------------------------------------- the worker


def serve(argv: Sequence[str]) -> int:
    host, port, devices = "127.0.0.1", 50052, "CPU"
    args = list(argv)
    i = 0
    while i < len(args):
        flag = args[i]
        if flag == "-c":
            i += 1
            continue
        if flag not in ("-H", "-p", "-d", "-t") or i + 1 >= len(args):
            print(f"error: unknown argument: {flag}", file=sys.stderr, flush=True)
            return 0  # as the real one
        value = args[i + 1]
        if flag == "-H":
            host = value
        elif flag == "-p":
            port = int(value)
        elif flag == "-d":
            devices = value
        i += 2
    print(f"Starting RPC server v{PROTOCOL}", flush=True)
    print(f"  endpoint       : {host}:{port}", flush=True)
    print("Devices:", flush=True)
    for name in devices.split(","):
        print(f"  {name}: Fake device (1024 MiB, 1024 MiB free)", flush=True)
    print("  transport      : TCP", flush=True)
    try:
        server = socket.create_server((host, port), backlog=1)
    except OSError:
        print("Failed to create server socket", file=sys.stderr, flush=True)
        return 0  # as the real one
    while True:
        client, _ = server.accept()
        print("Accepted client connection", flush=True)
        try:
            while client.recv(4096):
                pass
        except OSError:
            pass
        client.close()
        print("Client connection closed", flush=True)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
