"""The one parser of JSON request bodies: what a hostile body meets before any route sees it.

Python's ``json`` accepts more than JSON (NaN, Infinity, numbers no engine can hold, unpaired
surrogates, UTF-16 and UTF-32 bytes) and raises ``RecursionError`` on deep nesting. llama-server
answers most of those with a 500, which the gateway would pass on or turn into a 502. So every
route parses with :func:`parse_json_object`, and a body breaking one of these rules is a 400:

* UTF-8 only (RFC 8259 section 8.1); a leading UTF-8 byte order mark is ignored (and not forwarded).
* No ``NaN``/``Infinity``; a number must be a finite double (``1e400`` is refused) and an
  integer must fit 64 bits (signed or unsigned), as in C++ engines.
* Strings must be Unicode: no unpaired ``\\uD800``-``\\uDFFF`` escape.
* At most :data:`MAX_DEPTH` nested arrays/objects.
* Duplicate keys: the last one wins, as in Python and in llama.cpp's JSON library. The body then
  reads two ways, so the gateway forwards its own serialisation of the parsed object: what the
  engine sees is what the gateway validated and counted.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from llmgw.errors import BadRequest, clip

MAX_DEPTH = 128  # OpenAI caps structured-output schemas far below this; Python's parser recurses per level

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class JsonBody:
    data: dict[str, Any]
    raw: bytes  # what to forward: the client's bytes, or the parsed object re-serialised (see module doc)


def parse_json_object(body: bytes) -> JsonBody:
    """Parse a request body that must be a JSON object; raises BadRequest on any rule above."""
    if body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8) :]
    if b"\x00" in body[:4] or body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise BadRequest("request body must be UTF-8 JSON; this looks like UTF-16 or UTF-32")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8 (byte {exc.start})") from None
    if _too_deep(text):
        raise BadRequest(f"request body nests arrays/objects deeper than {MAX_DEPTH} levels")
    duplicates = False

    def make_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        obj = dict(pairs)
        duplicates = duplicates or len(obj) < len(pairs)
        return obj

    decoder = json.JSONDecoder(
        object_pairs_hook=make_object, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_no_constant
    )
    try:
        data = decoder.decode(text)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
        raise BadRequest("request body has an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF): text must be Unicode")
    if duplicates:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return JsonBody(data, body)


def _too_deep(text: str) -> bool:
    """True when arrays/objects nest past MAX_DEPTH (brackets inside strings do not count).

    Checked on the text, before parsing, so the recursive parser never goes that deep; bodies
    with few brackets (most of them) skip the scan.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        char = text[match.start()]
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char != '"':
            depth -= 1
    return False


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"request body has a number too large for a double: {clip(text, 40)}")
    return value


def _parse_int(text: str) -> int:
    # 21 characters hold any 64-bit value with its sign; longer is out of range (JSON has no leading zeros).
    value = int(text) if len(text) <= 21 else None
    if value is None or not _INT_MIN <= value <= _INT_MAX:
        raise BadRequest(f"request body has an integer outside the 64-bit range: {clip(text, 40)}")
    return value


def _no_constant(name: str) -> NoReturn:
    raise BadRequest(f"request body has {name}, which JSON does not allow")


def _has_lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False
