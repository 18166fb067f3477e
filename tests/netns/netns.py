"""Real networks on one machine: network namespaces on a bridge, one gateway per namespace with an
address of its own, run as ``python -m llmgw -c ...`` inside it (``ip netns exec``).

Names are unique per run (a random id), and everything made is deleted at the end, failures
included. Where namespaces cannot be made (not root, no ``ip``, a kernel without them) the caller
skips with the cause, never silently.

What this machine's kernel offers (measured): veth pairs, bridges, ``ip link set ... down``,
``tc qdisc ... tbf`` (rate and queueing latency); a permanent neighbour entry to a MAC nobody has
drops every packet silently (a black hole: no RST, no ICMP). ``tc netem`` is not available here,
so a "delayed" link is a ``tbf``-shaped one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_engine.configs import lua

PORT = 7777


class Unavailable(Exception):
    """Namespaces cannot be made here; the message says why."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def _free_subnet() -> ipaddress.IPv4Network:
    used = run("ip", "-o", "-4", "addr", "show").stdout
    for _ in range(64):
        net = ipaddress.IPv4Network(f"10.{secrets.choice(range(200, 250))}.{secrets.randbelow(256)}.0/24")
        if f" {net.network_address + 1}/" not in used and str(net.network_address)[:-1] not in used:
            return net
    raise Unavailable("no free 10.x.y.0/24 subnet for the test bridge")


@dataclass
class Gateway:
    name: str
    ns: str
    ip: str
    port_if: str  # the bridge side of its veth pair
    inner_if: str  # its side, inside the namespace
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{PORT}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, models: list[dict[str, Any]], **server: Any) -> None:
        table = {
            "listen_v4": f"{self.ip}:{PORT}",
            "listen_v6": "none",
            "node_name": self.name,
            "health_check_timeout": 2,
            "engine_startup_timeout": 20,
            "engine_stop_timeout": 5,
            "shutdown_grace": 1,
            "state_dir": str(self.workdir / f"state-{self.name}"),
            **server,
        }
        config = self.workdir / f"{self.name}.lua"
        config.write_text(f"server = {lua(table)}\nmodels = {lua(models)}\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "llmgw", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def wait_ready(self, key: str | None = None, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                status, _, _ = request(self.url + "/health", key=key, timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway {self.name} not ready: {self.log.read_text()[-2000:]}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        self.stopped = sig is signal.SIGSTOP

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if self.stopped:
            self.signal(signal.SIGCONT)
        proc.terminate()  # the gateway stops its engines itself
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class Topology:
    """A bridge in the root namespace (the test talks to every gateway through it) and one
    namespace per gateway, joined to it by a veth pair."""

    workdir: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: ipaddress.IPv4Network | None = None
    gateways: dict[str, Gateway] = field(default_factory=dict)
    made: list[tuple[str, str]] = field(default_factory=list)  # ("netns"|"link", name), to delete

    @property
    def bridge(self) -> str:
        return f"lgb{self.run_id}"

    @staticmethod
    def check() -> None:
        """Raise Unavailable with the cause when namespaces cannot be made here."""
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root (CAP_NET_ADMIN); run as root, as CI does")
        if shutil.which("ip") is None:
            raise Unavailable("the 'ip' command (iproute2) is not installed")

    def create(self, names: list[str]) -> None:
        self.check()
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
        except RuntimeError as exc:
            raise Unavailable(f"cannot make a bridge: {exc}") from None
        self.made.append(("link", self.bridge))
        run("ip", "addr", "add", f"{hosts[0]}/{self.subnet.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for index, name in enumerate(names, 10):
            ns = f"llmgw-t{self.run_id}-{name}"
            try:
                run("ip", "netns", "add", ns)
            except RuntimeError as exc:
                raise Unavailable(f"cannot make a network namespace: {exc}") from None
            self.made.append(("netns", ns))
            port_if, inner_if = f"lg{self.run_id}{name}", f"lg{self.run_id}{name}i"
            run("ip", "link", "add", port_if, "type", "veth", "peer", "name", inner_if)
            self.made.append(("link", port_if))
            run("ip", "link", "set", inner_if, "netns", ns)
            run("ip", "link", "set", port_if, "master", self.bridge)
            run("ip", "link", "set", port_if, "up")
            ip = str(hosts[index])
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", inner_if)
            run("ip", "netns", "exec", ns, "ip", "link", "set", inner_if, "up")
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self.gateways[name] = Gateway(name, ns, ip, port_if, inner_if, self.workdir)

    def stop_gateways(self) -> None:
        for gateway in self.gateways.values():
            gateway.stop()

    def destroy(self) -> None:
        """Everything this run made, whatever happened (deleting a namespace deletes its veth pair)."""
        self.stop_gateways()
        for kind, name in reversed(self.made):
            if kind == "netns":
                run("ip", "netns", "del", name, check=False)
            else:
                run("ip", "link", "del", name, check=False)
        self.made.clear()

    # -- link faults --------------------------------------------------------------------

    def black_hole(self, source: str, target: str) -> None:
        """Packets from ``source`` to ``target`` vanish (no RST, no ICMP): connects time out."""
        src, dst = self.gateways[source], self.gateways[target]
        run("ip", "netns", "exec", src.ns, "ip", "neigh", "replace", dst.ip, "lladdr", "02:00:00:00:00:99",
            "dev", src.inner_if, "nud", "permanent")  # fmt: skip

    def heal(self, source: str, target: str) -> None:
        src, dst = self.gateways[source], self.gateways[target]
        run("ip", "netns", "exec", src.ns, "ip", "neigh", "del", dst.ip, "dev", src.inner_if, check=False)

    def link(self, name: str, up: bool) -> None:
        run("ip", "link", "set", "dev", self.gateways[name].port_if, "up" if up else "down")

    def shape(self, name: str, rate: str, latency: str) -> None:
        """Traffic toward ``name`` through a token bucket (tc netem is not available here)."""
        run("tc", "qdisc", "replace", "dev", self.gateways[name].port_if, "root", "tbf", "rate", rate,
            "burst", "32kb", "latency", latency)  # fmt: skip

    def unshape(self, name: str) -> None:
        run("tc", "qdisc", "del", "dev", self.gateways[name].port_if, "root", check=False)


def request(
    url: str, body: dict[str, Any] | None = None, key: str | None = None, headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """(status, headers, body) of one HTTP exchange; errors with a status are answers too."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
