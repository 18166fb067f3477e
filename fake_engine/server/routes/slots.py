"""``GET /slots`` and the slot actions (``POST /slots/ID?action=save|restore|erase``): what the
gateway's slot cache reads and drives."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ApiError, bad_request, missing_key, not_supported
from ..state import Slot
from .base import BaseHandler

__all__ = ["SlotActionHandler", "SlotsHandler", "read_slot_file", "slot_file_bytes", "valid_filename"]


class SlotsHandler(BaseHandler):
    """``GET /slots``: each slot's context and, once used, what its prompt cache holds."""

    def get(self) -> None:
        self.send_json([self._slot(slot) for slot in self.engine.slots])

    def _slot(self, slot: Slot) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": slot.id,
            "n_ctx": self.engine.reported_n_ctx,
            "speculative": False,
            "is_processing": slot.run is not None,
        }
        if slot.id_task is None:  # never used: llama-server shows only the above
            return entry
        run = slot.run
        entry.update(
            id_task=slot.id_task,
            n_prompt_tokens=len(slot.tokens),
            n_prompt_tokens_processed=slot.n_prompt_processed,
            n_prompt_tokens_cache=0,
            params=slot.settings,
            next_token=[
                {
                    "has_next_token": run is not None,
                    "has_new_line": False,
                    "n_remain": 0 if run is None else run.n_tokens - run.generated,
                    "n_decoded": 0 if run is None else run.generated,
                }
            ],
        )
        return entry


class SlotActionHandler(BaseHandler):
    """``POST /slots/ID?action=save|restore|erase`` (needs ``--slot-save-path``). A saved slot is a
    file laid out as llama-server's: ``ggsq`` magic, version 2, the token count and the token ids
    (little-endian), then its "KV data" (``--fake-slot-bytes-per-token`` bytes per token);
    restoring it fills the slot's prompt cache. A file of the wrong size or shape is refused."""

    def post(self, raw_id: str) -> None:
        options = self.engine.options
        save_dir = options.slot_save_path
        if not save_dir:
            raise not_supported("This server does not support slots action. Start it with `--slot-save-path`")
        try:
            slot = self.engine.slots[int(raw_id)]
        except (ValueError, IndexError):
            raise bad_request("Invalid slot ID") from None
        action = self.get_query_argument("action", "")
        if action == "erase":
            erased, slot.tokens = len(slot.tokens), []
            self.send_json({"id_slot": slot.id, "n_erased": erased})
            return
        if action not in ("save", "restore"):
            raise bad_request("Invalid action")
        filename = self.json_body().get("filename")
        if filename is None:
            raise missing_key("filename", 500)
        if not isinstance(filename, str) or not valid_filename(filename):
            raise bad_request("Invalid filename")
        path = Path(save_dir) / filename
        started = time.monotonic()
        if action == "save":
            data = slot_file_bytes(slot.tokens, options.fake_slot_bytes_per_token)
            try:
                if options.fake_slot_disk_full:  # half of it reaches the disk, as when the disk fills up
                    path.write_bytes(data[: len(data) // 2])
                    raise OSError(28, "No space left on device")
                path.write_bytes(data)
            except OSError as exc:
                raise ApiError(500, f"failed to write {path}: {exc.strerror or exc}", "server_error") from None
            ms = (time.monotonic() - started) * 1000
            self.engine.events.emit("slot_save", slot=slot.id, tokens=len(slot.tokens))
            answer = {"n_saved": len(slot.tokens), "n_written": len(data), "timings": {"save_ms": ms}}
        else:
            tokens, n_read = read_slot_file(path, options.fake_slot_bytes_per_token)
            if options.fake_slot_refuse_restore or tokens is None or len(tokens) > self.engine.n_ctx:
                slot.tokens = []  # a failed restore clears the slot, as llama-server's does
                raise bad_request("Unable to restore slot, no available space in KV cache or invalid slot save file")
            slot.tokens = tokens
            ms = (time.monotonic() - started) * 1000
            self.engine.events.emit("slot_restore", slot=slot.id, tokens=len(tokens))
            answer = {"n_restored": len(tokens), "n_read": n_read, "timings": {"restore_ms": ms}}
        self.send_json({"id_slot": slot.id, "filename": filename, **answer})


def valid_filename(name: str) -> bool:
    """A plain file name inside the save directory (no path, no dot names)."""
    return bool(name) and len(name) <= 255 and not any(c in name for c in "/\\\0") and name not in (".", "..")


_SLOT_MAGIC = 0x67677371  # "ggsq", llama.cpp's sequence state file
_SLOT_VERSION = 2


def slot_file_bytes(tokens: Sequence[int], bytes_per_token: int) -> bytes:
    """A saved slot as llama-server lays it out, so its size grows with the tokens as the real one's."""
    head = struct.pack("<III", _SLOT_MAGIC, _SLOT_VERSION, len(tokens))
    return head + struct.pack(f"<{len(tokens)}i", *tokens) + bytes(bytes_per_token * len(tokens))


def read_slot_file(path: Path, bytes_per_token: int) -> tuple[list[int] | None, int]:
    """The tokens of a saved slot and the bytes read; None for a missing file or one of another shape."""
    try:
        data = path.read_bytes()
    except OSError:
        return None, 0
    if len(data) < 12:
        return None, 0
    magic, version, count = struct.unpack_from("<III", data)
    if magic != _SLOT_MAGIC or version != _SLOT_VERSION or len(data) != 12 + count * (4 + bytes_per_token):
        return None, 0
    return list(struct.unpack_from(f"<{count}i", data, 12)), len(data)
