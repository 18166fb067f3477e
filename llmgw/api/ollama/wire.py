"""Ollama's wire conventions: durations (``keep_alive``), timestamps, model names, NDJSON lines.

What its clients check, and break on, is in ``/work/scratch/ollama-spec.md`` section 2; in short:
one compact JSON object per line, ``error`` always a string, integers for every duration (ns),
count and size, RFC 3339 timestamps, names with a tag (``name:latest``).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from llmgw.config.schema import OLLAMA_DEFAULT_TAG
from llmgw.errors import BadRequest, clip

FOREVER = math.inf
_LONGEST = 1e9  # seconds (~32 years): longer keep_alive values are "forever"

# Go's time.ParseDuration units.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_LONGEST_TEXT = 64  # characters of a duration string: "1h2m3.456789s" is far shorter


def parse_keep_alive(value: Any) -> float:
    """Ollama's ``keep_alive`` in seconds (:data:`FOREVER` for a negative one): a JSON number is
    seconds, a string a Go duration (``"5m"``, ``"1h30m"``, ``"-1s"``); a bare number in a string
    is taken as seconds too (Ollama refuses it). Raises BadRequest with Go's wording."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f'keep_alive must be a number of seconds or a duration string like "5m", got {_json(value)}')
    seconds = float(value) if isinstance(value, int | float) else _go_duration(value)
    if seconds < 0 or seconds > _LONGEST:
        return FOREVER
    return seconds


def _go_duration(text: str) -> float:
    stripped = text.strip()
    if len(stripped) > _LONGEST_TEXT:
        raise BadRequest(f"time: invalid duration {_json(clip(text, 60))}")
    sign = -1.0 if stripped.startswith("-") else 1.0
    body = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    if body == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(body):  # anchored at each part: no search through the whole text
        match = _PART.match(body, position)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        if not _NUMBER.fullmatch(body):
            raise BadRequest(f"time: invalid duration {_json(clip(text, 60))}")
        total = float(body)
    return sign * total


def _json(value: Any) -> str:
    return clip(json.dumps(value, ensure_ascii=False, default=str), 200)


def timestamp(ns: int | None = None) -> str:
    """RFC 3339 in UTC with up to 9 fractional digits, trailing zeros trimmed (Go's RFC3339Nano)."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


# Ollama's "never": now plus the largest Go duration (~292 years), as its /api/ps shows a keep_alive < 0.
NEVER_NS = 2**63 - 1


def tagged(name: str) -> str:
    """The name an Ollama client sees: with a tag (Open WebUI adds ``:latest`` to names without
    one and then looks for that name in the list)."""
    return name if ":" in name else name + OLLAMA_DEFAULT_TAG


def line(payload: dict[str, Any]) -> bytes:
    """One NDJSON line: compact, newline-terminated (a blank line or a pretty-printed object
    breaks the official client)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def document(payload: dict[str, Any]) -> bytes:
    """A whole JSON answer (no trailing newline: one document)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
