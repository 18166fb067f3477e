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
* Anthropic Messages and OpenAI Responses bodies are first turned into a chat body, as
  llama-server does (``messages_to_chat``, ``responses_to_chat``), then counted the same way.
* ``detokenize(ids)``: the pieces joined with one space; BOS is ``<s>``, and an id this process never
  tokenized (the rule is a hash, it has no inverse) is ``<unk>``.

Stdlib only, so that the script runs with any Python 3.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

BOS_ID = 2
BOS_PIECE = "<s>"
UNKNOWN_PIECE = "<unk>"
VOCAB_SIZE = 32000
FIRST_ID = 10

# Pieces seen by tokenize(), so that detokenize() can map ids back (the id rule is a hash);
# capped so that a long soak cannot grow it without bound (later pieces detokenize to <unk>).
_SEEN: dict[int, str] = {BOS_ID: BOS_PIECE}
_SEEN_MAX = 100_000


def piece_id(piece: str) -> int:
    """Return the id of one whitespace-separated piece."""
    return zlib.crc32(piece.encode()) % VOCAB_SIZE + FIRST_ID


def tokenize_pieces(text: str) -> list[str]:
    """Return the pieces (tokens as text) of ``text``."""
    return text.split()


def tokenize(text: str, add_special: bool = False) -> list[int]:
    """Return the token ids of ``text``, with BOS first when ``add_special``."""
    ids = []
    for piece in tokenize_pieces(text):
        token = piece_id(piece)
        if len(_SEEN) < _SEEN_MAX:
            _SEEN.setdefault(token, piece)
        ids.append(token)
    return [BOS_ID, *ids] if add_special else ids


def detokenize(ids: Sequence[int]) -> str:
    """Return the text of token ids: their pieces joined with one space (see the module doc)."""
    return " ".join(_SEEN.get(token, UNKNOWN_PIECE) for token in ids)


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


# ----------------------------------------------------------------------------- other APIs as chat


def _blocks_text(content: Any, kinds: tuple[str, ...]) -> list[dict[str, str]]:
    """The text blocks of a string or a list of blocks, as chat text parts (other blocks dropped)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError("content must be a string or a list of blocks")
    parts = []
    for block in content:
        if not isinstance(block, Mapping):
            raise ValueError("content blocks must be objects")
        if block.get("type") in kinds:
            text = block.get("text")
            if not isinstance(text, str):
                raise ValueError("a text block needs a string 'text'")
            parts.append({"type": "text", "text": text})
    return parts


def _joined(parts: list[dict[str, str]]) -> str:
    return "\n".join(part["text"] for part in parts)


def _function_tool(name: Any, description: Any, parameters: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def messages_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an Anthropic Messages body into the chat body llama-server templates for it.

    ``system`` becomes a system message; text blocks become text parts; ``tool_use`` blocks become
    the assistant's ``tool_calls`` (arguments = ``json.dumps(input)``); each ``tool_result`` block
    becomes a ``tool`` message placed before the rest of its message; tools become function tools.
    """
    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        chat.append({"role": "system", "content": _joined(_blocks_text(system, ("text",)))})
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("Expected 'messages' to be an array")
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError("each message must be an object")
        role, content = message.get("role", ""), message.get("content")
        blocks = content if isinstance(content, list) else []
        calls, results = [], []
        for block in blocks:
            kind = block.get("type") if isinstance(block, Mapping) else None
            if kind == "tool_use":
                arguments = json.dumps(block.get("input", {}))
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
            elif kind == "tool_result":
                text = _joined(_blocks_text(block.get("content"), ("text",)))
                results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        chat.extend(results)
        parts = _blocks_text(content, ("text",))
        if parts or calls or not results:
            converted: dict[str, Any] = {"role": role, "content": parts if isinstance(content, list) else content}
            if calls:
                converted["tool_calls"] = calls
            chat.append(converted)
    converted_body: dict[str, Any] = {"messages": chat}
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted_body["tools"] = [
            _function_tool(t.get("name"), t.get("description"), t.get("input_schema"))
            for t in tools
            if isinstance(t, Mapping)
        ]
    return converted_body


def responses_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an OpenAI Responses body into the chat body llama-server templates for it.

    ``instructions`` becomes a system message; a string ``input`` one user message; input items
    with a ``role`` become messages (``input_text``/``output_text`` parts as text), ``function_call``
    items assistant ``tool_calls``, ``function_call_output`` items ``tool`` messages; function tools
    keep their name, description and parameters.
    """
    chat: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        chat.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        chat.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, Mapping):
                raise ValueError("each input item must be an object")
            chat.extend(_response_item(item))
    else:
        raise ValueError("'input' must be a string or a list of items")
    converted: dict[str, Any] = {"messages": chat}
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted["tools"] = [
            _function_tool(t.get("name"), t.get("description"), t.get("parameters"))
            for t in tools
            if isinstance(t, Mapping) and t.get("type") == "function"
        ]
    return converted


def _response_item(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = item.get("type")
    if kind == "function_call":
        function = {"name": item.get("name"), "arguments": item.get("arguments", "")}
        call = {"id": item.get("call_id"), "type": "function", "function": function}
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else json.dumps(output)
        return [{"role": "tool", "tool_call_id": item.get("call_id"), "content": text}]
    if "role" in item:
        content = item.get("content")
        kinds = ("input_text", "output_text", "text")
        return [
            {"role": item["role"], "content": content if isinstance(content, str) else _blocks_text(content, kinds)}
        ]
    return []  # reasoning and other items carry no prompt text here


def count_messages_tokens(body: Mapping[str, Any]) -> int:
    """Return the number of prompt tokens of an Anthropic Messages body."""
    return count_prompt_tokens(messages_to_chat(body))


def count_responses_tokens(body: Mapping[str, Any]) -> int:
    """Return the number of prompt tokens of an OpenAI Responses body."""
    return count_prompt_tokens(responses_to_chat(body))


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if "--fake-fail" in args:
        print("error: fake tokenizer failure", file=sys.stderr)
        return 1
    print(tokenize(sys.stdin.read(), add_special=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
