"""RPC keys: the workers that lend their devices over llama.cpp's RPC backend
(``server.rpc_workers``) and the variants that use them (``rpc``, ``tensor_split``,
``local_devices``, cascading from the model).

A worker is a ``ggml-rpc-server`` on another host, supervised there by ``python -m llmgw agent``.
Its name is also the name of its memory pool when it declares ``memory``, so it must not clash
with a pool of ``memory_budget``.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from llmgw.config.reader import POSITIVE_INT_RE, Node, base_url, quote
from llmgw.config.schema import RPC_FLAGS, RpcWorker

SERVER_KEYS = frozenset({"rpc_workers"})
VARIANT_KEYS = frozenset({"rpc", "tensor_split", "local_devices"})
_WORKER_KEYS = frozenset({"address", "devices", "agent", "api_key", "memory"})
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_RESERVED_POOLS = re.compile(r"total|ram|gpu[0-9]+")
_DEVICE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


def rpc_workers(node: Node, budget: tuple[tuple[str, float], ...]) -> tuple[RpcWorker, ...]:
    """``rpc_workers = { NAME = { address = "host:port", devices, agent, api_key, memory } }``."""
    if not node.exists():
        return ()
    what = 'a table of NAME = { address = "host:port", agent = "http://host:port", ... }'
    node.table(what)
    pools = {pool for pool, _ in budget}
    workers: list[RpcWorker] = []
    addresses: dict[str, str] = {}
    for name in sorted(node.child_names()):  # Lua tables have no order: by name, for stable pools
        if not _NAME_RE.fullmatch(name) or POSITIVE_INT_RE.fullmatch(name):
            node.fail(f"must be {what}, but has the key {quote(name)} (names are letters, digits, _ . -)")
        entry = node.child(name)
        entry.table("a worker table")
        entry.warn_unknown(entry.label, _WORKER_KEYS)
        if name in pools or _RESERVED_POOLS.fullmatch(name):
            node.fail(f"names a worker {quote(name)}, which is also a memory pool's name: rename the worker")
        at = address(entry.child("address"))
        if at in addresses:
            entry.child("address").fail(f"repeats the address of rpc_workers.{addresses[at]}")
        addresses[at] = name
        key = entry.child("api_key")
        memory = entry.child("memory")
        agent = entry.child("agent")
        workers.append(
            RpcWorker(
                name=name,
                address=at,
                devices=device_names(entry.child("devices")) or ("CPU",),
                agent=_agent_url(agent) if agent.exists() else None,
                api_key=key.string(secret=True) if key.exists() else None,
                memory=memory.positive_number() if memory.exists() else None,
            )
        )
    if not workers:
        node.fail(f"must be {what}, got an empty table")
    return tuple(workers)


def address(node: Node) -> str:
    """``host:port`` as llama-server's ``--rpc`` takes it: a host name or IPv4 address (its
    endpoint parser refuses IPv6) and a port."""
    text = node.string()
    what = 'a "host:port" address like "10.0.0.2:50052" (a host name or IPv4 address; llama.cpp takes no IPv6 here)'
    host, sep, port = text.rpartition(":")
    if not sep or not host or "[" in host or ":" in host:
        node.expect(what)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        node.fail(f"has an invalid port in {quote(text)} (must be 1..65535)")
    try:
        socket.inet_pton(socket.AF_INET, host)  # socket, not ipaddress: see config/sections.py's _listen_address
    except OSError:
        if not _HOST_RE.fullmatch(host):
            node.expect(what)
    return f"{host}:{int(port)}"


def _agent_url(node: Node) -> str:
    what = "an http:// or https:// URL with host and port like http://10.0.0.2:7790"
    return base_url(node, what, ("http", "https"))


def device_names(node: Node) -> tuple[str, ...]:
    """llama.cpp device names (``CPU``, ``CUDA0``, ``Vulkan1``...); () when absent."""
    if not node.exists():
        return ()
    items = node.items('a list of llama.cpp device names like { "CUDA0" }')
    if not items:
        node.fail("must not be an empty list")
    names: list[str] = []
    for item in items:
        name = item.string()
        if not _DEVICE_RE.fullmatch(name):
            item.fail(f'must be a llama.cpp device name like "CUDA0" or "CPU", got {quote(name)}')
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class RpcKeys:
    """A model's or a variant's RPC keys (a variant's own replace its model's, key by key)."""

    workers: tuple[RpcWorker, ...] = ()
    split: tuple[float, ...] | None = None
    local: tuple[str, ...] = ()


def keys(node: Node, inherited: RpcKeys, known: tuple[RpcWorker, ...]) -> RpcKeys:
    return RpcKeys(
        workers=_workers(node.child("rpc"), inherited.workers, known),
        split=_tensor_split(node.child("tensor_split"), inherited.split),
        local=device_names(node.child("local_devices")) if node.child("local_devices").exists() else inherited.local,
    )


def _workers(node: Node, inherited: tuple[RpcWorker, ...], known: tuple[RpcWorker, ...]) -> tuple[RpcWorker, ...]:
    """``rpc = { "w1", "w2" }``: names of ``server.rpc_workers``, in the order their devices are numbered."""
    if not node.exists():
        return inherited
    items = node.items("a list of rpc_workers names")
    if not items:
        node.fail("must not be an empty list")
    by_name = {worker.name: worker for worker in known}
    chosen: list[RpcWorker] = []
    for item in items:
        name = item.string()
        worker = by_name.get(name)
        if worker is None:
            listed = ", ".join(map(quote, by_name)) or "none: server.rpc_workers is not set"
            item.fail(f"is not a worker of server.rpc_workers: {quote(name)} (workers: {listed})")
        if worker in chosen:
            item.fail(f"repeats {quote(name)}")
        chosen.append(worker)
    return tuple(chosen)


def _tensor_split(node: Node, inherited: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """``tensor_split = { 3, 1 }``: a share per device (numbers >= 0, not all 0); checked against
    the device count by :func:`check_variant`."""
    if not node.exists():
        return inherited
    items = node.items("a list of shares like { 3, 1 }, one per device")
    shares: list[float] = []
    for item in items:
        value = item.numeric()
        if value is None or value < 0:
            item.expect("a number >= 0")
        shares.append(float(value))
    if not shares or not any(shares):
        node.fail("must give some device a share above 0")
    return tuple(shares)


def check_variant(node: Node, args: tuple[str, ...], keys: RpcKeys) -> None:
    """A variant's RPC keys agree with each other and with its ``args``."""
    workers, split, local = keys.workers, keys.split, keys.local
    if not workers:
        for key, value in (("tensor_split", split), ("local_devices", local)):
            if value:
                node.child(key).fail("needs rpc = { ... } (the gateway passes --device and --tensor-split only then)")
        return
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in RPC_FLAGS:
            node.child("args").fail(
                f"has {flag}, but rpc is set and the gateway passes --rpc, --device and --tensor-split itself: "
                "remove it from args (use rpc, local_devices and tensor_split)"
            )
    devices = len(local) + sum(len(worker.devices) for worker in workers)
    if split is not None and len(split) != devices:
        node.child("tensor_split").fail(
            f"has {len(split)} share(s), but the variant has {devices} device(s) "
            f"({len(local)} local, then the devices of {', '.join(worker.name for worker in workers)})"
        )
