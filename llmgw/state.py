"""StateStore: the few figures the gateway learns and keeps across restarts, in one JSON file.

Measured memory per variant lives here (and, later, load times). It is a cache: a missing,
unreadable or corrupt file is logged and the gateway starts from nothing; a failed write (disk
full, read-only directory) is logged once and the gateway goes on. Writes go to a temporary
file renamed over the old one, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_FILE = "state.json"
_VERSION = 1


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llmgw"


class StateStore:
    def __init__(self, directory: str | Path | None) -> None:
        """``directory`` None keeps the state in memory only (nothing survives a restart)."""
        self.path = Path(directory) / _FILE if directory is not None else None
        self._write_failed = False
        self._data: dict[str, Any] = self._read()

    def section(self, name: str) -> dict[str, Any]:
        value = self._data.get(name)
        return dict(value) if isinstance(value, dict) else {}

    def put(self, name: str, value: dict[str, Any]) -> None:
        self._data[name] = value
        self._write()

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            logger.warning("state file %s cannot be read (%s); starting without it", self.path, exc)
            return {}
        except UnicodeDecodeError as exc:
            logger.warning("state file %s is corrupt (%s); ignoring it", self.path, exc)
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            logger.warning("state file %s is corrupt (%s); ignoring it", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            logger.warning("state file %s is not a llmgw state file of version %d; ignoring it", self.path, _VERSION)
            return {}
        return data

    def _write(self) -> None:
        if self.path is None:
            return
        payload = json.dumps({**self._data, "version": _VERSION}, indent=1, sort_keys=True)
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(payload)
            os.replace(tmp, self.path)
            tmp = None
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:
                logger.warning("state file %s cannot be written (%s); learned figures will not survive", self.path, exc)
            self._write_failed = True
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
