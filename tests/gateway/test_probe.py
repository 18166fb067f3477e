"""SystemProbe: RSS of an engine's process tree, GPU memory from nvidia-smi (a fake one here), and
how the memory book maps both onto budget pools."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from scheduling_world import model

from llmgw.runtime import Usage
from llmgw.runtime.probe import SystemProbe
from llmgw.scheduling.memory import MemoryBook, in_pool

FAKE_NVIDIA_SMI = """#!{python}
import sys
query = sys.argv[1]
if query.startswith("--query-gpu"):
    print("0, GPU-aaaa")
    print("1, GPU-bbbb")
elif query.startswith("--query-compute-apps"):
    print("{pid}, 1500, GPU-aaaa")
    print("{child}, 500, GPU-bbbb")
    print("999999, 7000, GPU-aaaa")  # another process: not the engine's
    print("[N/A], [N/A], GPU-bbbb")
"""


def sleeper(*extra: str) -> subprocess.Popen[bytes]:
    code = (
        "import subprocess, sys, time; "
        + ("subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); " if extra else "")
        + "time.sleep(30)"
    )
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


async def test_rss_of_the_process_tree_and_gpu_memory_of_its_pids(io_loop: Any, tmp_path: Path) -> None:
    proc = sleeper("with a child")
    try:
        for _ in range(100):  # the child shows up within a moment (bounded)
            children = psutil.Process(proc.pid).children(recursive=True)
            if children:
                break
            await asyncio.sleep(0.05)
        (child,) = children
        script = tmp_path / "nvidia-smi"
        script.write_text(FAKE_NVIDIA_SMI.format(python=sys.executable, pid=proc.pid, child=child.pid))
        script.chmod(0o755)
        usage = await SystemProbe(str(script)).measure(proc.pid)
        assert usage is not None
        rss = sum(p.memory_info().rss for p in (psutil.Process(proc.pid), child)) / 2**20
        assert abs(usage.rss_mib - rss) < 0.25 * rss  # both processes counted (their RSS moves a little)
        assert usage.gpu_mib == {0: 1500.0, 1: 500.0}
        assert await SystemProbe(str(tmp_path / "missing")).measure(proc.pid) is not None  # no GPU figures
    finally:
        proc.kill()
        proc.wait()
        for p in psutil.Process().children(recursive=True):
            p.kill()


def test_a_gone_process_is_not_measured(io_loop: Any) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert io_loop.run_sync(lambda: SystemProbe("").measure(proc.pid)) is None


def test_pools_take_their_share_of_a_measurement() -> None:
    usage = Usage(300.0, {0: 1500.0, 1: 500.0})
    assert in_pool(usage, "total") == 2300.0
    assert in_pool(usage, "ram") == 300.0
    assert in_pool(usage, "gpu1") == 500.0 and in_pool(usage, "gpu7") == 0.0
    assert in_pool(usage, "vram") is None  # no probe sees it: declare memory for it
    m = model("m", port=1, pools=("gpu0", "ram"))
    book = MemoryBook({"gpu0": 24000, "ram": 64000})
    assert book.need(m, m.variants[0]) == {"gpu0": 24000, "ram": 64000}  # never measured: the pools whole
    assert book.record(m, m.variants[0], usage) and not book.record(m, m.variants[0], Usage(100.0, {0: 10.0}))
    assert book.need(m, m.variants[0]) == {"gpu0": 1500.0, "ram": 300.0}  # the largest seen is kept
    assert book.source(m, m.variants[0]) == "measured"
