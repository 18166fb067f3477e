"""EngineProcess: start/stop, output logging, crash detection, process-group kill."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import FAKE_ENGINE, free_port, wait_for
from llmgw.runtime.engine_process import EngineProcess, EngineStatus

HANG = 10.0  # generous bound for anything that should take well under a second


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fake_args(events: Path, *extra: str) -> list[str]:
    return [
        FAKE_ENGINE,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "-m",
        "m",
        "--fake-events",
        str(events),
        *extra,
    ]


async def start_fake(tmp_path: Path, *extra: str, name: str = "fake") -> tuple[EngineProcess, Path]:
    """Start the fake engine and wait until it has bound its port (its ``start`` event)."""
    events = tmp_path / f"events-{name}.jsonl"
    process = EngineProcess(sys.executable, fake_args(events, *extra), name=name)
    await process.start()
    try:
        await wait_for(lambda: any(e["event"] == "start" for e in read_events(events)), what="the start event")
    except BaseException:
        await process.stop(timeout=1.0)
        raise
    return process, events


def output_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == f"llmgw.engine.output.{name}"]


async def test_start_and_stop(io_loop: Any, tmp_path: Path) -> None:
    process, events = await start_fake(tmp_path)
    pid = process.pid
    assert process.status is EngineStatus.RUNNING
    assert process.get_status() == "running"
    assert process.is_running
    assert pid is not None and pid == read_events(events)[0]["pid"]
    assert not process.exited.is_set()

    await asyncio.wait_for(process.stop(timeout=5.0), HANG)

    assert process.status is EngineStatus.STOPPED
    assert not process.is_running
    assert process.pid is None
    assert process.exited.is_set()
    assert process.returncode == 0  # the fake exits cleanly on SIGTERM
    assert pid_gone(pid)
    assert [e["event"] for e in read_events(events)] == ["start", "exit"]


async def test_stop_before_start_is_harmless(io_loop: Any) -> None:
    process = EngineProcess(sys.executable, ["-c", "pass"])
    await process.stop(timeout=1.0)
    assert process.status is EngineStatus.NOT_STARTED
    assert process.pid is None


async def test_output_is_logged_with_levels_and_tag(
    io_loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    script = "import sys; print('to-stdout', flush=True); print('to-stderr', file=sys.stderr, flush=True)"
    process = EngineProcess(sys.executable, ["-c", script], name="tagged#2")
    await process.start()
    try:
        await asyncio.wait_for(process.exited.wait(), HANG)
        await wait_for(lambda: len(output_records(caplog, "tagged#2")) >= 2, what="both output lines")
    finally:
        await process.stop(timeout=1.0)

    by_text = {r.getMessage(): r for r in output_records(caplog, "tagged#2")}
    assert set(by_text) == {"[tagged#2] to-stdout", "[tagged#2] to-stderr"}
    assert by_text["[tagged#2] to-stdout"].levelno == logging.INFO
    assert by_text["[tagged#2] to-stderr"].levelno == logging.WARNING
    # Only stderr feeds the tail shown in error messages.
    assert process.stderr_tail() == "to-stderr"


async def test_llama_server_level_tags_are_honoured(
    io_loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """llama-server logs everything to stderr with a level letter; routine lines must not be warnings."""
    caplog.set_level(logging.DEBUG)
    lines = ["0.00.001.000 I slot launch", "0.00.002.000 W srv  warn", "0.00.003.000 E srv  boom", "plain"]
    script = f"import sys\nfor line in {lines!r}: print(line, file=sys.stderr, flush=True)"
    process = EngineProcess(sys.executable, ["-c", script], name="lv#1")
    await process.start()
    try:
        await asyncio.wait_for(process.exited.wait(), HANG)
        await wait_for(lambda: len(output_records(caplog, "lv#1")) >= 4, what="the four lines")
    finally:
        await process.stop(timeout=1.0)
    levels = {r.getMessage().split("] ", 1)[1]: r.levelno for r in output_records(caplog, "lv#1")}
    assert levels == {
        lines[0]: logging.INFO,
        lines[1]: logging.WARNING,
        lines[2]: logging.ERROR,
        "plain": logging.WARNING,
    }
    assert process.stderr_tail().splitlines() == lines  # the tail keeps every stderr line


async def test_fake_engine_output_is_logged(io_loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    process, _ = await start_fake(tmp_path, name="m#1")
    try:
        await wait_for(
            lambda: any("HTTP server is listening" in r.getMessage() for r in output_records(caplog, "m#1")),
            what="the listening line",
        )
    finally:
        await process.stop(timeout=5.0)
    records = output_records(caplog, "m#1")
    build = [r for r in records if r.getMessage() == "[m#1] build: fake (fake_llama_server.py)"]
    assert len(build) == 1 and build[0].levelno == logging.INFO  # stdout
    listening = [r for r in records if "HTTP server is listening" in r.getMessage()]
    assert listening[0].levelno == logging.WARNING  # stderr
    assert listening[0].getMessage().startswith("[m#1] main: HTTP server is listening")


async def test_engine_killed_from_outside_is_crashed(io_loop: Any, tmp_path: Path) -> None:
    exits: list[EngineProcess] = []
    events = tmp_path / "events.jsonl"
    process = EngineProcess(sys.executable, fake_args(events), name="victim", on_exit=exits.append)
    await process.start()
    try:
        await wait_for(lambda: "loading model" in process.stderr_tail(), what="stderr output")
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(process.exited.wait(), HANG)

        assert process.status is EngineStatus.CRASHED
        assert process.returncode == -signal.SIGKILL
        assert not process.is_running and process.pid is None
        assert exits == [process]  # the owner is told
        assert "main: loading model 'm'" in process.stderr_tail()
    finally:
        await process.stop(timeout=1.0)
    # A later stop keeps the crash visible.
    assert process.status is EngineStatus.CRASHED


async def test_sigterm_ignored_gets_sigkill(io_loop: Any, tmp_path: Path) -> None:
    process, events = await start_fake(tmp_path, "--fake-ignore-sigterm")
    pid = process.pid
    assert pid is not None
    await asyncio.wait_for(process.stop(timeout=0.5), HANG)
    assert process.returncode == -signal.SIGKILL
    assert process.status is EngineStatus.STOPPED
    assert pid_gone(pid)
    assert "exit" not in [e["event"] for e in read_events(events)]  # it never shut down by itself


async def test_children_of_the_engine_die_with_it(io_loop: Any, tmp_path: Path) -> None:
    process, events = await start_fake(tmp_path, "--fake-spawn-child")
    try:
        await wait_for(lambda: any(e["event"] == "child" for e in read_events(events)), what="the child event")
    finally:
        await asyncio.wait_for(process.stop(timeout=5.0), HANG)
    child = next(e["pid"] for e in read_events(events) if e["event"] == "child")
    # The fake exits cleanly on SIGTERM without stopping its child: signals must go to the whole group.
    assert [e["event"] for e in read_events(events)][-1] == "exit"
    await wait_for(lambda: pid_gone(child), timeout=5.0, what=f"child {child} to die")


async def test_group_is_killed_even_after_a_clean_exit(io_loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The engine obeys SIGTERM but its child ignores it: the SIGKILL to the group still comes."""
    caplog.set_level(logging.INFO)
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child across exec\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    process = EngineProcess(sys.executable, ["-c", script], name="parent")
    await process.start()
    try:
        await wait_for(lambda: bool(output_records(caplog, "parent")), what="the child pid")
    finally:
        await asyncio.wait_for(process.stop(timeout=5.0), HANG)
    child = int(output_records(caplog, "parent")[0].getMessage().removeprefix("[parent] "))
    assert process.returncode == -signal.SIGTERM  # the engine itself went on SIGTERM
    assert process.status is EngineStatus.STOPPED
    await wait_for(lambda: pid_gone(child), timeout=5.0, what=f"child {child} to die")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
async def test_the_engine_dies_with_its_parent_by_the_kernel_s_hand(
    io_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine itself (not a wrapper) runs with SIGKILL as its parent-death signal."""
    script = (
        "import ctypes, os; libc = ctypes.CDLL(None); sig = ctypes.c_int(); "
        "libc.prctl(2, ctypes.byref(sig), 0, 0, 0); print(os.getpid(), sig.value, flush=True)"
    )
    process = EngineProcess(sys.executable, ["-c", script], name="orphan")
    caplog.set_level(logging.INFO, logger="llmgw.engine.output.orphan")
    await process.start()
    pid = process.pid
    try:
        await wait_for(lambda: bool(output_records(caplog, "orphan")), what="the engine's report")
    finally:
        await process.stop(timeout=2.0)
    reported_pid, signal_number = output_records(caplog, "orphan")[0].getMessage().removeprefix("[orphan] ").split()
    assert (int(reported_pid), int(signal_number)) == (pid, signal.SIGKILL)


async def test_missing_binary_raises_oserror(io_loop: Any, tmp_path: Path) -> None:
    process = EngineProcess(str(tmp_path / "no-such-llama-server"), ["--port", "1"])
    with pytest.raises(OSError):
        await process.start()
    assert process.status is EngineStatus.CRASHED
    assert process.exited.is_set()
    assert process.pid is None
    assert "cannot execute" in process.stderr_tail()
    await process.stop(timeout=1.0)  # harmless


async def test_long_lines_do_not_break_the_reader(
    io_loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    size = 300_000
    script = (
        "import sys\n"
        f"sys.stderr.write('x' * {size} + '\\n'); sys.stderr.flush()\n"
        "sys.stderr.write('after-long\\n'); sys.stderr.flush()\n"
        "print('stdout-still-fine', flush=True)\n"
    )
    process = EngineProcess(sys.executable, ["-c", script], name="long")
    await process.start()
    try:
        await asyncio.wait_for(process.exited.wait(), HANG)
        await wait_for(
            lambda: any(r.getMessage() == "[long] after-long" for r in output_records(caplog, "long")),
            what="the line after the long one",
        )
    finally:
        await process.stop(timeout=1.0)
    messages = [r.getMessage() for r in output_records(caplog, "long")]
    assert "[long] stdout-still-fine" in messages
    xs = [m.removeprefix("[long] ") for m in messages if m.startswith("[long] x")]
    assert all(set(m) == {"x"} for m in xs)
    assert sum(len(m) for m in xs) == size  # nothing lost, split into bounded pieces
    assert max(len(m) for m in xs) <= 2 * 65536
    assert process.returncode == 0


async def test_environment_reaches_the_engine(io_loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    script = "import os; print('X=' + os.environ['LLMGW_TEST_X'] + ' PATH=' + str(bool(os.environ.get('PATH'))))"
    process = EngineProcess(sys.executable, ["-c", script], name="env", env={"LLMGW_TEST_X": "42"})
    await process.start()
    try:
        await asyncio.wait_for(process.exited.wait(), HANG)
        await wait_for(lambda: bool(output_records(caplog, "env")), what="the output line")
    finally:
        await process.stop(timeout=1.0)
    assert [r.getMessage() for r in output_records(caplog, "env")] == ["[env] X=42 PATH=True"]
    assert process.returncode == 0


async def test_exit_is_noticed_while_a_grandchild_holds_the_pipes(
    io_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An escaped grandchild (own session) keeps stdout/stderr open: the exit must still be seen."""
    caplog.set_level(logging.INFO)
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
    )
    process = EngineProcess(sys.executable, ["-c", script], name="escaper")
    await process.start()
    try:
        await wait_for(lambda: bool(output_records(caplog, "escaper")), what="the grandchild pid")
        grandchild = int(output_records(caplog, "escaper")[0].getMessage().removeprefix("[escaper] "))
        try:
            await asyncio.wait_for(process.exited.wait(), HANG)  # not after the grandchild's 60 s
            assert process.status is EngineStatus.CRASHED  # exited without being asked
            assert process.returncode == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)
    finally:
        await process.stop(timeout=1.0)
