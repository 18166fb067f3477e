"""The state file: corrupt, truncated, foreign or unwritable state is logged and ignored; it never
crashes the gateway or fails a request."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from llmgw.state import StateStore

GOOD = {"version": 1, "memory": {"a/0123": {"total": 512.0}}}


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 1, "memory": {"a/0123": {"total": 5',  # truncated mid-write by a crash
        b"\x00\x01\x02 not json",
        b"[1, 2, 3]",
        b'{"version": 99, "memory": {}}',
        b"",
        '{"version": 1, "memory": {"\udce9": 1}}'.encode("utf-8", "surrogateescape"),  # not UTF-8
    ],
)
def test_a_bad_state_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / "state.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="llmgw.state"):
        store = StateStore(tmp_path)
    assert store.section("memory") == {}
    if content:
        assert any("state file" in r.getMessage() for r in caplog.records), caplog.text
    store.put("memory", {"b/4567": {"total": 1.0}})  # the next write replaces it with a good one
    assert json.loads((tmp_path / "state.json").read_text())["memory"] == {"b/4567": {"total": 1.0}}


def test_a_good_file_is_read_back_and_writes_are_atomic(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps(GOOD))
    store = StateStore(tmp_path)
    assert store.section("memory") == GOOD["memory"]
    store.put("memory", {"a/0123": {"total": 600.0}})
    assert StateStore(tmp_path).section("memory") == {"a/0123": {"total": 600.0}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


def test_an_unwritable_place_is_logged_once_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    store = StateStore(blocker / "state")
    with caplog.at_level(logging.WARNING, logger="llmgw.state"):
        for i in range(3):
            store.put("memory", {"x": {"total": float(i)}})
    assert store.section("memory") == {"x": {"total": 2.0}}  # kept in memory all the same
    assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1


def test_a_full_disk_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_text(json.dumps(GOOD))
    store = StateStore(tmp_path)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
            self._file = real_fdopen(fd, *args, **kwargs)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self._file.close()

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("llmgw.state.os.fdopen", Full)
    with caplog.at_level(logging.WARNING, logger="llmgw.state"):
        store.put("memory", {"a/0123": {"total": 999.0}})
    assert "No space left on device" in caplog.text
    assert json.loads((tmp_path / "state.json").read_text()) == GOOD  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # the partial file removed
