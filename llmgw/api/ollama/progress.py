"""Loading progress on an Ollama stream, when asked (``loading_feedback = "reasoning"``): each
progress text is a ``thinking`` line, which Ollama clients show as the model's thinking (Open
WebUI's thinking box). Nothing else fits: an NDJSON stream holds answer chunks only, and a line
that is not one breaks the official client. With any other mode an Ollama stream gets none.
"""

from __future__ import annotations

from llmgw.api.endpoints import Endpoint
from llmgw.api.errors import engine_error_message
from llmgw.api.ollama.answers import NDJSON
from llmgw.api.ollama.wire import line, timestamp
from llmgw.api.progress import ProgressStream
from llmgw.errors import GatewayError


class OllamaThinking(ProgressStream):
    reasoning = True
    content_type = NDJSON

    def __init__(self, endpoint: Endpoint, model: str, chat: bool) -> None:
        super().__init__(endpoint, model)
        self._chat = chat  # /api/chat (a message) or /api/generate (a response)

    def text(self, text: str) -> bytes:
        chunk: dict[str, object] = {"model": self.model, "created_at": timestamp()}
        if self._chat:
            chunk["message"] = {"role": "assistant", "content": "", "thinking": text}
        else:
            chunk.update(response="", thinking=text)
        chunk["done"] = False
        return line(chunk)

    def error(self, error: GatewayError) -> bytes:
        return self.close() + line({"error": error.message})

    def engine_error(self, status: int, body: bytes) -> bytes:
        return self.close() + line({"error": engine_error_message(body, status)})
