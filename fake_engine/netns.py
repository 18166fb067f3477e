"""Network namespaces for tests and benchmarks: each a "host" on its own veth link to the root namespace.

Needs root and iproute2 (``ip``); :func:`unavailable` says why they cannot be made, so a test
can skip with that reason. Names carry the test process's pid (several runs side by side do not
clash), subnets avoid every 10.x network already routed here, and everything is deleted on
close (deleting a namespace deletes its end of the link, and so the link).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Link:
    namespace: str
    host_side: str  # the interface in the root namespace
    host_ip: str  # the root namespace's address on this link
    ip: str  # the namespace's address

    def wrap(self) -> tuple[str, ...]:
        """The command prefix that runs a command inside the namespace."""
        return ("ip", "netns", "exec", self.namespace)

    def set_up(self, up: bool) -> None:
        """Bring the link down (a partition: packets dropped, no reset) or up again."""
        _ip("link", "set", self.host_side, "up" if up else "down")

    def sent_bytes(self) -> int:
        """Bytes the root namespace sent over this link so far."""
        return int(Path(f"/sys/class/net/{self.host_side}/statistics/tx_bytes").read_text())


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the rpc tox env as root, as CI does)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's 'ip' command"
    probe = f"llmgw-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"cannot create a network namespace here: {detail.strip()}"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _ip("netns", "delete", probe)
    return None


def _free_octet() -> int:
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, timeout=30).stdout
    used += subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, timeout=30).stdout
    start = 100 + os.getpid() % 100
    for step in range(150):
        octet = 100 + (start - 100 + step) % 150
        if f"10.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.x.0.0/16 network for the test namespaces")


class Namespaces:
    def __init__(self) -> None:
        self.links: list[Link] = []
        self._octet = _free_octet()
        self._tag = f"{os.getpid() % 100000}"

    def add(self) -> Link:
        index = len(self.links) + 1
        name = f"llmgw-t{self._tag}-{index}"
        host_side, inner = f"lgw{self._tag}h{index}", f"lgw{self._tag}n{index}"
        host_ip, ip = f"10.{self._octet}.{index}.1", f"10.{self._octet}.{index}.2"
        _ip("netns", "add", name)
        link = Link(name, host_side, host_ip, ip)
        self.links.append(link)
        _ip("link", "add", host_side, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{host_ip}/24", "dev", host_side)
        _ip("link", "set", host_side, "up")
        _ip("-n", name, "addr", "add", f"{ip}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        return link

    def close(self) -> None:
        for link in self.links:
            for args in (("netns", "delete", link.namespace), ("link", "delete", link.host_side)):
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    _ip(*args)  # the link may be gone with its namespace already
        self.links.clear()
