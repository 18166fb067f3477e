"""The gateway's listening sockets, opened before anything heavy is imported.

``python -m llmgw`` binds its addresses right after reading the configuration, then imports
Tornado and the rest (most of its start-up time) and serves: a client that connects meanwhile
waits in the kernel's accept queue and is answered once the gateway is up, instead of being
refused. The addresses are the configuration's validated IP literals (or ``localhost``), so
this needs only the ``socket`` module (Tornado's ``netutil.bind_sockets`` would import asyncio
and most of Tornado first).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

BACKLOG = 128  # as Tornado's own default


def bind(addresses: Iterable[tuple[str, int]]) -> list[socket.socket]:
    """A listening, non-blocking socket per ``(host, port)``; IPv6 sockets are IPv6 only. Raises
    OSError (address in use, not available), after closing whatever it opened."""
    opened: list[socket.socket] = []
    try:
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            sock.bind((host, port))
            sock.listen(BACKLOG)
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return opened
