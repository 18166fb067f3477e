"""SystemProbe: memory an engine uses, as the operating system and the GPU driver report it.

RSS is summed over the engine's process tree (psutil). GPU memory comes from
``nvidia-smi --query-compute-apps`` where that tool exists, per device index; elsewhere the
GPU part is empty. The scheduler only sees :class:`~llmgw.runtime.base.Usage`, so tests can
fake either half.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

import psutil

from llmgw.runtime.base import Usage

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_NVIDIA_TIMEOUT = 5.0


class SystemProbe:
    def __init__(self, nvidia_smi: str | None = None) -> None:
        self._nvidia_smi = nvidia_smi if nvidia_smi is not None else shutil.which("nvidia-smi")
        self._gpu_index: dict[str, int] | None = None  # GPU uuid -> device index

    async def measure(self, pid: int) -> Usage | None:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        pids = set()
        rss = 0
        for process in tree:
            try:
                rss += process.memory_info().rss
                pids.add(process.pid)
            except psutil.Error:
                continue
        gpu = await self._gpu_usage(pids) if self._nvidia_smi else {}
        return Usage(rss / _MIB, gpu)

    async def _gpu_usage(self, pids: set[int]) -> dict[int, float]:
        if self._gpu_index is None:
            rows = await self._query("--query-gpu=index,uuid")
            self._gpu_index = {uuid: int(index) for index, uuid in rows if index.isdigit()}
        usage: dict[int, float] = {}
        for pid, used, uuid in await self._query("--query-compute-apps=pid,used_memory,gpu_uuid"):
            index = self._gpu_index.get(uuid)
            if pid.isdigit() and int(pid) in pids and index is not None:
                try:
                    usage[index] = usage.get(index, 0.0) + float(used)
                except ValueError:
                    continue
        return usage

    async def _query(self, query: str) -> list[list[str]]:
        """Rows of ``nvidia-smi QUERY``; [] when it fails."""
        if self._nvidia_smi is None:  # it could not run before: GPU memory is not measured
            return []
        rows = await nvidia_smi(self._nvidia_smi, query)
        if rows is None:
            self._nvidia_smi = None
            return []
        return rows


async def nvidia_smi(tool: str, query: str) -> list[list[str]] | None:
    """Rows of ``nvidia-smi QUERY --format=csv,noheader,nounits``, cells stripped; [] when it fails
    this time (a timeout, an error status), None when it cannot run at all."""
    try:
        proc = await asyncio.create_subprocess_exec(
            tool,
            query,
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        logger.warning("nvidia-smi cannot run (%s); GPU memory is not measured", exc)
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _NVIDIA_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        logger.warning("nvidia-smi did not answer within %.0f s", _NVIDIA_TIMEOUT)
        return []
    if proc.returncode != 0:
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.decode(errors="replace").splitlines() if line]
