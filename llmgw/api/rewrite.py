"""The client gets back the model name it asked for.

llama-server puts its GGUF path (or its first ``--alias``) in every answer's ``model`` field.
The gateway rewrites each ``"model": "..."`` to the name the request used (a model name or an
alias), in JSON answers and in every SSE event, without parsing: a byte-level substitution,
on whole events only (an event cut between two chunks waits for its end, so at most one event
is held back).
"""

from __future__ import annotations

import json
import re

# A "model" key with a string value. Inside a JSON string a quote is escaped (\"), so text that
# merely mentions "model" cannot match.
_MODEL_FIELD = re.compile(rb'"model"(\s*):(\s*)"(?:[^"\\]|\\.)*"')
_EVENT_END = (b"\n\n", b"\r\n\r\n")


class ModelRewriter:
    def __init__(self, name: str) -> None:
        self._value = json.dumps(name).encode()
        self._pending = b""

    def body(self, data: bytes) -> bytes:
        """A complete JSON answer."""
        if b'"model"' not in data:
            return data
        return _MODEL_FIELD.sub(lambda m: b'"model"' + m.group(1) + b":" + m.group(2) + self._value, data)

    def chunk(self, data: bytes) -> bytes:
        """Part of an SSE stream: the complete events it ends, rewritten; the rest waits for its end."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if data.endswith(_EVENT_END):
            return self.body(data)
        cut = max(data.rfind(b"\n\n") + 2, data.rfind(b"\r\n\r\n") + 4)
        if cut <= 1:
            self._pending = data
            return b""
        self._pending = data[cut:]
        return self.body(data[:cut])

    def flush(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        data, self._pending = self._pending, b""
        return self.body(data)
