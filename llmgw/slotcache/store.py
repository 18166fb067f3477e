"""The slot files on disk: ``KEY-ID.bin`` (written by the engine) and ``KEY-ID.json`` (written by
the gateway: model, key and the slot's tokens), in the cache directory.

The engine saves into a temporary ``.tmp-KEY-ID.bin``; only once its answer, the file's size
and its header agree is the sidecar written (to a temporary file renamed over, so never half a
file) and the slot file renamed into place. Anything else in the directory that looks like
ours but is not a consistent pair (a crash between two steps, a truncated or corrupt file) is
logged and deleted when the directory is read; files that do not look like ours are left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import tempfile
import time
import uuid
from pathlib import Path

from llmgw.slotcache.index import Entry, pack

logger = logging.getLogger(__name__)

_VERSION = 1
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{12})\.(bin|json)$")
_TEMP = re.compile(r"^\.tmp-[0-9a-f]{16}-[0-9a-f]{12}\.bin$|^\.side-.*\.tmp$")
_MAGIC = 0x67677371  # "ggsq": llama.cpp's sequence state file, then version, token count, token ids
_FILE_VERSION = 2
_MAX_TOKENS = 1 << 24


class SlotFileError(Exception):
    """A slot file the engine wrote is not what it said it wrote."""


def read_tokens(path: Path, n_saved: int, n_written: int) -> list[int]:
    """The token ids at the head of a slot file, checked against the engine's own answer."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12:
                raise SlotFileError(f"{path.name}: {size} bytes, no header")
            magic, version, count = struct.unpack("<III", head)
            if magic != _MAGIC or version != _FILE_VERSION:
                raise SlotFileError(f"{path.name}: not a slot file of version {_FILE_VERSION}")
            if count != n_saved or count > _MAX_TOKENS or size != n_written:
                raise SlotFileError(
                    f"{path.name}: {count} tokens and {size} bytes, the engine said {n_saved} and {n_written}"
                )
            raw = f.read(4 * count)
    except OSError as exc:
        raise SlotFileError(f"{path.name}: cannot be read ({exc})") from exc
    if len(raw) != 4 * count:
        raise SlotFileError(f"{path.name}: cut short in its tokens")
    return list(struct.unpack(f"<{count}i", raw))


class SlotStore:
    """One cache directory."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)

    def prepare(self) -> bool:
        """Create the directory; False (logged) when it cannot be."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("slot cache %s cannot be created (%s); slots will not be kept", self.dir, exc)
            return False
        return True

    def new_temp(self, key: str) -> tuple[str, str]:
        """(temporary file name for the engine to save into, final entry name)."""
        name = f"{key}-{uuid.uuid4().hex[:12]}"
        return f".tmp-{name}.bin", name

    def discard(self, filename: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / filename).unlink()

    def commit(self, temp: str, entry: Entry) -> None:
        """Write the sidecar, then move the slot file into place. Raises OSError (both gone then)."""
        sidecar = {
            "version": _VERSION,
            "model": entry.model,
            "key": entry.key,
            "size": entry.size,
            "tokens": list(struct.unpack(f"<{entry.n_tokens}i", entry.tokens)),
        }
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".side-", suffix=".tmp", dir=self.dir)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(sidecar, out, separators=(",", ":"))
            os.replace(self.dir / temp, self.dir / f"{entry.name}.bin")
            os.replace(tmp, self.dir / f"{entry.name}.json")
            tmp = None
        except OSError:
            self.discard(temp)
            self.discard(f"{entry.name}.bin")
            raise
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self.touch(entry)

    def delete(self, entry: Entry) -> None:
        self.discard(f"{entry.name}.json")  # first: a slot file without its sidecar is swept at the next read
        self.discard(f"{entry.name}.bin")

    def touch(self, entry: Entry) -> None:
        """The sidecar's modification time is the entry's last use (kept across restarts)."""
        with contextlib.suppress(OSError):
            os.utime(self.dir / f"{entry.name}.json", (entry.used_at, entry.used_at))

    def scan(self) -> list[Entry]:
        """The consistent pairs in the directory; leftovers and broken pairs are deleted (logged)."""
        try:
            names = os.listdir(self.dir)
        except OSError as exc:
            logger.warning("slot cache %s cannot be read (%s); starting without saved slots", self.dir, exc)
            return []
        pairs: dict[str, set[str]] = {}
        for name in names:
            if _TEMP.match(name):
                logger.info("slot cache %s: removing %s, left by an interrupted save", self.dir, name)
                self.discard(name)
                continue
            match = _NAME.match(name)
            if match:
                pairs.setdefault(f"{match.group(1)}-{match.group(2)}", set()).add(match.group(3))
        entries = []
        for stem, kinds in sorted(pairs.items()):
            entry = self._load(stem) if kinds == {"bin", "json"} else None
            if entry is None:
                logger.warning("slot cache %s: ignoring and removing %s (incomplete or unreadable)", self.dir, stem)
                self.discard(f"{stem}.json")
                self.discard(f"{stem}.bin")
                continue
            entries.append(entry)
        return entries

    def _load(self, stem: str) -> Entry | None:
        try:
            meta = json.loads((self.dir / f"{stem}.json").read_text(encoding="utf-8"))
            used_at = (self.dir / f"{stem}.json").stat().st_mtime
            size = (self.dir / f"{stem}.bin").stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("version") != _VERSION:
            return None
        key, model, tokens = meta.get("key"), meta.get("model"), meta.get("tokens")
        if not (isinstance(key, str) and stem.startswith(key + "-") and isinstance(model, str)):
            return None
        if not (isinstance(tokens, list) and tokens and all(type(t) is int and -(2**31) <= t < 2**31 for t in tokens)):
            return None
        if meta.get("size") != size:  # truncated or replaced since it was saved
            return None
        return Entry(stem, key, model, pack(tokens), size, min(used_at, time.time()))
