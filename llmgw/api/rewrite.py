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
        # The engine writes the same ``"model":"<its name>"`` in every event: once seen, it is
        # replaced with bytes.replace (C speed) whenever every "model" key in the data is that one.
        self._seen = b""
        self._wanted = b""

    def body(self, data: bytes) -> bytes:
        """A complete JSON answer, or whole SSE events."""
        fields = data.count(b'"model"')
        if not fields:
            return data
        if self._seen and data.count(self._seen) == fields:
            return data if self._seen == self._wanted else data.replace(self._seen, self._wanted)
        return _MODEL_FIELD.sub(self._replace, data)

    def _replace(self, match: re.Match[bytes]) -> bytes:
        self._seen = match.group(0)
        self._wanted = b'"model"' + match.group(1) + b":" + match.group(2) + self._value
        return self._wanted

    def chunk(self, data: bytes) -> bytes:
        """Part of an SSE stream: the complete events it ends, rewritten; the rest waits for its end."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if data.endswith(_EVENT_END):
            return self.body(data)
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        if lf < 0 and crlf < 0:  # no event ends here: all of it waits
            self._pending = data
            return b""
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self._pending = data[cut:]
        return self.body(data[:cut])

    def flush(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        data, self._pending = self._pending, b""
        return self.body(data)
