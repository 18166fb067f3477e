"""What the agent tells of its host: the llama.cpp build, free memory, who is connected to a worker.

* **Build.** ``ggml-rpc-server`` has no version flag (its banner gives the RPC *protocol*
  version); ``libggml-base.so`` beside it exports ``ggml_commit()``, the commit llama-server's
  ``--version`` prints too, so a gateway can refuse a worker whose build differs from its own.
* **Memory.** RAM from psutil; GPUs from ``nvidia-smi --query-gpu`` where it exists.
* **Holders.** Established TCP connections to a worker's port, from psutil: a coordinator that
  holds the worker (it serves one client at a time).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

import psutil

from llmgw.runtime.probe import nvidia_smi

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Build:
    commit: str  # "571d0d5"
    ggml: str  # ggml's own version, "0.17.0"


def find_build(binary: str, env: dict[str, str]) -> Build | None:
    """The build of the llama.cpp beside ``binary`` (or on its ``LD_LIBRARY_PATH``); None when
    ``libggml-base.so`` is not found or says nothing. Blocking (it loads the library): run it in
    a thread."""
    resolved = shutil.which(binary) or binary
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs.append(os.path.dirname(os.path.realpath(resolved)))
    for directory in dirs:
        path = os.path.join(directory, "libggml-base.so")
        if not os.path.isfile(path):
            continue
        try:
            library = ctypes.CDLL(path)
            commit_of, version_of = library.ggml_commit, library.ggml_version
        except (OSError, AttributeError) as exc:
            logger.warning("cannot read the build from %s: %s", path, exc)
            continue
        commit_of.restype = version_of.restype = ctypes.c_char_p
        commit, version = commit_of(), version_of()
        if commit:
            return Build(commit.decode(errors="replace"), version.decode(errors="replace") if version else "")
    logger.warning("libggml-base.so not found beside %s: gateways cannot check this worker's build", binary)
    return None


def holders(pid: int | None, port: int) -> list[str]:
    """``host:port`` of every client connected to the worker (established TCP to its port)."""
    if pid is None:
        return []
    try:
        process = psutil.Process(pid)
        connections = getattr(process, "net_connections", None) or process.connections
        found = connections(kind="tcp")
    except psutil.Error:
        return []
    clients = []
    for conn in found:
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port and conn.raddr:
            host = conn.raddr.ip
            clients.append(f"[{host}]:{conn.raddr.port}" if ":" in host else f"{host}:{conn.raddr.port}")
    return sorted(clients)


async def memory() -> dict[str, Any]:
    """RAM and, where nvidia-smi exists, each GPU's memory (MiB)."""
    ram = psutil.virtual_memory()
    found: dict[str, Any] = {"ram_total_mib": round(ram.total / _MIB), "ram_available_mib": round(ram.available / _MIB)}
    gpus = await _nvidia_gpus()
    if gpus:
        found["gpus"] = gpus
    return found


async def _nvidia_gpus() -> list[dict[str, Any]]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    gpus = []
    for cells in await nvidia_smi(tool, "--query-gpu=index,name,memory.total,memory.free") or []:
        if len(cells) == 4 and cells[0].isdigit():
            try:
                gpus.append(
                    {
                        "index": int(cells[0]),
                        "name": cells[1],
                        "total_mib": float(cells[2]),
                        "free_mib": float(cells[3]),
                    }
                )
            except ValueError:
                continue
    return gpus
