"""Count with a standalone tokenizer (llama-tokenize) when the model is not loaded.

The count only chooses which variant to start: the running engine then counts exactly,
so template overhead is approximated with the configured per-message and fixed extras.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from llmgw.config import Tokenization
from llmgw.errors import TokenCountError

logger = logging.getLogger(__name__)


def request_text(request_data: dict[str, Any]) -> tuple[str, int]:
    """All text the template will include, and the number of messages."""
    parts: list[str] = []
    messages = request_data.get("messages") or []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        for key in ("tool_calls", "reasoning_content"):
            if message.get(key):
                parts.append(json.dumps(message[key]) if not isinstance(message[key], str) else message[key])
    if request_data.get("tools"):
        parts.append(json.dumps(request_data["tools"]))
    return "\n".join(parts), len(messages)


class StandaloneTokenizer:
    def __init__(self, tokenization: Tokenization, timeout: float = 60.0) -> None:
        self.tokenization = tokenization
        self.timeout = timeout

    async def count(self, request_data: dict[str, Any]) -> int:
        text, n_messages = request_text(request_data)
        tk = self.tokenization
        try:
            proc = await asyncio.create_subprocess_exec(
                tk.binary,
                *tk.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TokenCountError(f"cannot run tokenizer {tk.binary!r}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(text.encode()), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TokenCountError(f"tokenizer {tk.binary!r} took longer than {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise TokenCountError(f"tokenizer {tk.binary!r} failed (exit {proc.returncode}): {' | '.join(tail)}")
        output = out.decode(errors="replace")
        start, end = output.rfind("["), output.rfind("]")
        try:
            tokens = json.loads(output[start : end + 1]) if 0 <= start < end else None
        except ValueError:
            tokens = None
        if not isinstance(tokens, list):
            raise TokenCountError(f"tokenizer {tk.binary!r} printed no token list")
        return len(tokens) + n_messages * tk.extra_tokens_per_message + tk.extra_tokens
