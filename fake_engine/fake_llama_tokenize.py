#!/usr/bin/env python3
"""Fake ``llama-tokenize`` and the deterministic tokenization rule shared by the fake engine.

Run as ``llama-tokenize --log-disable --stdin --ids -m MODEL``: reads all of stdin and prints
the token ids as a Python list (``[2, 1234, 5678]``) on stdout. Other flags are ignored;
``--fake-fail`` makes it print an error on stderr and exit 1.

Tokenization rule (also used by ``fake_llama_server.py``):

* ``tokenize(text)``: the tokens are the whitespace-separated pieces of the text
  (``text.split()``); the id of a piece is ``zlib.crc32(piece.encode()) % 32000 + 10``;
  ``add_special=True`` prepends the BOS id 2.
* ``render_template(body)``: for each message ``"<|ROLE|>\\n" + TEXT + "\\n"``, where TEXT is the
  string content, or for a list content the ``text`` of its ``text`` parts joined with ``"\\n"``
  (other parts are ignored); an assistant message with ``tool_calls`` gets
  ``json.dumps(tool_calls)`` appended to its TEXT. Then, if ``tools`` is non-empty,
  ``"<|tools|>\\n" + json.dumps(tools) + "\\n"``; finally ``"<|assistant|>\\n"``.
* ``count_prompt_tokens(body) == len(tokenize(render_template(body), add_special=True))``;
  one user message ``"a b c"`` gives 6.

Stdlib only, so that the script runs with any Python 3.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

BOS_ID = 2
VOCAB_SIZE = 32000
FIRST_ID = 10


def piece_id(piece: str) -> int:
    """Return the id of one whitespace-separated piece."""
    return zlib.crc32(piece.encode()) % VOCAB_SIZE + FIRST_ID


def tokenize_pieces(text: str) -> list[str]:
    """Return the pieces (tokens as text) of ``text``."""
    return text.split()


def tokenize(text: str, add_special: bool = False) -> list[int]:
    """Return the token ids of ``text``, with BOS first when ``add_special``."""
    ids = [piece_id(piece) for piece in tokenize_pieces(text)]
    return [BOS_ID, *ids] if add_special else ids


def message_text(message: Mapping[str, Any]) -> str:
    """Return the text of one chat message, as the fake chat template sees it."""
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(_text_parts(content))
    else:
        raise ValueError("message content must be a string, a list of parts or null")
    tool_calls = message.get("tool_calls")
    if message.get("role") == "assistant" and tool_calls:
        text += json.dumps(tool_calls)
    return text


def _text_parts(parts: Sequence[Any]) -> list[str]:
    texts = []
    for part in parts:
        if not isinstance(part, Mapping):
            raise ValueError("content parts must be objects")
        if part.get("type") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError("a text part needs a string 'text'")
            texts.append(text)
    return texts


def render_template(body: Mapping[str, Any]) -> str:
    """Render a chat request body (``messages``, ``tools``) to the fake prompt text."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list")
    chunks = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError("each message must be an object")
        chunks.append(f"<|{message.get('role', '')}|>\n{message_text(message)}\n")
    tools = body.get("tools")
    if tools:
        chunks.append(f"<|tools|>\n{json.dumps(tools)}\n")
    chunks.append("<|assistant|>\n")
    return "".join(chunks)


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Return the number of prompt tokens of a chat request body."""
    return len(tokenize(render_template(body), add_special=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if "--fake-fail" in args:
        print("error: fake tokenizer failure", file=sys.stderr)
        return 1
    print(tokenize(sys.stdin.read(), add_special=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
