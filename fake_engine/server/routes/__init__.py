"""The fake's routes, one module per family, and ``route_table``: which handler serves which path,
as in llama-server 0.10068."""

from __future__ import annotations

from typing import Any

from ..state import Engine
from .base import BaseHandler, DisabledHandler, NotFoundHandler
from .counting import (
    ApplyTemplateHandler,
    DetokenizeHandler,
    InputTokensHandler,
    MessagesCountHandler,
    ResponsesInputTokensHandler,
    TokenizeHandler,
)
from .generation import (
    ChatCompletionsHandler,
    CompletionsHandler,
    InfillHandler,
    MessagesHandler,
    NativeCompletionHandler,
    ResponsesHandler,
)
from .info import AudioHandler, HealthHandler, LoraAdaptersHandler, MetricsHandler, ModelsHandler, PropsHandler
from .pooling import EmbeddingsHandler, RerankHandler
from .slots import SlotActionHandler, SlotsHandler

__all__ = ["NotFoundHandler", "Route", "route_table"]

Route = tuple[str, type[BaseHandler], dict[str, Any]]


def route_table(engine: Engine) -> list[Route]:
    """Every path llama-server serves, with the handler that answers it here."""
    args: dict[str, Any] = {"engine": engine}
    return [
        ("/health", HealthHandler, args),
        ("/v1/health", HealthHandler, args),
        ("/props", PropsHandler, args),
        ("/slots", SlotsHandler, args),
        ("/slots/([^/]*)", SlotActionHandler, args),
        ("/models", ModelsHandler, args),
        ("/v1/models", ModelsHandler, args),
        ("/metrics", MetricsHandler, args),
        ("/lora-adapters", LoraAdaptersHandler, args),
        ("/tools", DisabledHandler, args),
        ("/cors-proxy", DisabledHandler, args),
        ("/v1/audio/transcriptions", AudioHandler, args),
        ("/tokenize", TokenizeHandler, args),
        ("/detokenize", DetokenizeHandler, args),
        ("/apply-template", ApplyTemplateHandler, args),
        ("/chat/completions/input_tokens", InputTokensHandler, args),
        ("/v1/chat/completions/input_tokens", InputTokensHandler, args),
        ("/v1/messages/count_tokens", MessagesCountHandler, args),
        ("/v1/responses/input_tokens", ResponsesInputTokensHandler, args),
        ("/chat/completions", ChatCompletionsHandler, args),
        ("/v1/chat/completions", ChatCompletionsHandler, args),
        ("/v1/completions", CompletionsHandler, args),
        ("/completion", NativeCompletionHandler, args),
        ("/completions", NativeCompletionHandler, args),
        ("/infill", InfillHandler, args),
        ("/v1/messages", MessagesHandler, args),
        ("/v1/responses", ResponsesHandler, args),
        ("/v1/embeddings", EmbeddingsHandler, {**args, "oai": True}),
        ("/embeddings", EmbeddingsHandler, args),
        ("/embedding", EmbeddingsHandler, args),
        ("/rerank", RerankHandler, args),
        ("/v1/rerank", RerankHandler, args),
        ("/reranking", RerankHandler, args),
        ("/v1/reranking", RerankHandler, args),
    ]
