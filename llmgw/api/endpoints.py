"""Every route the gateway serves for a model, as data: what it reads from a request, how the
context it needs is counted and sized, and which dialect (API family) it answers in.

The gateway forwards each request to the same path on the engine (llama-server answers all
of them); what differs between routes is only what this module describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llmgw.errors import BadRequest, echo

Prompt = str | list[int] | list[int | str]  # what llama-server tokenizes as one prompt


class Dialect(StrEnum):
    """The API family a route belongs to: it decides the shape of errors."""

    OPENAI = "openai"  # OpenAI and llama.cpp routes: {"error": {...}} errors
    ANTHROPIC = "anthropic"  # {"type": "error", "error": {...}} errors, event: error in streams
    OLLAMA = "ollama"  # Ollama's native /api/* routes: {"error": "..."} errors, an NDJSON error line in streams


class Sizing(StrEnum):
    """How the context a request needs is decided."""

    GENERATE = "generate"  # prompt tokens plus the completion budget
    BATCH = "batch"  # the longest input: each must fit the engine's physical batch (embeddings, rerank)
    ANY = "any"  # nothing to fit: counting and tokenizer routes use any variant


@dataclass(frozen=True)
class Endpoint:
    name: str  # shown in logs, metrics and events
    capability: str  # the route family `endpoints = { ... }` lists (config.serving.CAPABILITIES)
    dialect: Dialect
    sizing: Sizing
    budget_keys: tuple[str, ...] = ()  # fields holding the completion budget, first wins
    count_path: str | None = None  # engine route that counts the whole body (chat, messages, responses)
    prompts: Callable[[dict[str, Any]], list[list[Prompt]]] | None = None  # else: prompts to tokenize
    overhead: int = 0  # tokens the engine adds around the counted prompts (FIM markers, separators)
    check: Callable[[dict[str, Any]], None] = field(default=lambda data: None)

    def budget(self, data: dict[str, Any], reserve: int) -> int:
        """Tokens to keep free for the answer: the request's own limit, else ``reserve``."""
        return completion_budget(data, reserve, self.budget_keys) if self.budget_keys else 0

    def cap_budget(self, data: dict[str, Any], limit: int) -> None:
        """Apply a model's ``completion_limit``: every budget field at most ``limit``, and the route's
        own field set to it when the request gives none (so the engine stops there too)."""
        if not self.budget_keys:
            return
        present = False
        for key in self.budget_keys:
            value = data.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                data[key] = min(value, limit)
                present = True
        if not present:
            data[self.budget_keys[0]] = limit


def completion_budget(data: dict[str, Any], reserve: int, keys: Sequence[str]) -> int:
    """The first of ``keys`` set to a count wins; -1 (llama.cpp's "until the context is full") and
    null fall back to ``reserve``. Every key present is checked, not only the one that wins: the
    engine reads them all."""
    budget: int | None = None
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise BadRequest(f"'{key}' must be a non-negative integer (or -1), got {echo(value)}")
        if budget is None and value != -1:
            budget = value
    return reserve if budget is None else budget


# ----------------------------------------------------------------------------- validation

CHAT_BUDGET = ("max_completion_tokens", "max_tokens", "n_predict")


def _stream_fields(data: dict[str, Any]) -> None:
    if "stream" in data and not isinstance(data["stream"], bool):
        raise BadRequest("'stream' must be a boolean")
    if data.get("stream_options") is not None and not isinstance(data["stream_options"], dict):
        raise BadRequest("'stream_options' must be an object or null")


def _check_messages(messages: Any, what: str = "messages", allow_empty: bool = False) -> None:
    if not isinstance(messages, list) or (not messages and not allow_empty):
        raise BadRequest(f"'{what}' is required and must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"{what}[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise BadRequest(f"{what}[{i}].content[{j}] must be an object with a string 'type'")
        elif content is not None and not isinstance(content, str):
            raise BadRequest(f"{what}[{i}].content must be a string, an array of parts or null")


def _check_openai_tools(tools: Any) -> None:
    """Tools shaped as OpenAI defines them: llama-server answers others with a 500 ("Failed to parse tools")."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise BadRequest(f"tools[{i}] must be an object with a string 'type'")
        function = tool.get("function")
        named = isinstance(function, dict) and isinstance(function.get("name"), str)
        named = named or isinstance(tool.get("name"), str)  # the Responses API names a function tool at its top
        if tool["type"] == "function" and not named:
            raise BadRequest(f"tools[{i}].function must be an object with a string 'name'")


def check_chat(data: dict[str, Any]) -> None:
    _check_messages(data.get("messages"))
    _stream_fields(data)
    _check_openai_tools(data.get("tools"))
    completion_budget(data, 0, CHAT_BUDGET)


def check_messages(data: dict[str, Any]) -> None:
    """Anthropic Messages: llama-server answers a missing or malformed one with a 500."""
    _check_messages(data.get("messages"))
    system = data.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise BadRequest("'system' must be a string or an array of text blocks")
    _stream_fields(data)
    tools = data.get("tools")
    named = isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)
    if tools is not None and not named:
        raise BadRequest("'tools' must be an array of objects with a string 'name'")
    completion_budget(data, 0, ("max_tokens",))


def check_messages_count(data: dict[str, Any]) -> None:
    _check_messages(data.get("messages"))


def check_responses(data: dict[str, Any]) -> None:
    value = data.get("input")
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise BadRequest(f"input[{i}] must be an object")
    elif not isinstance(value, str):
        raise BadRequest("'input' is required and must be a string or an array of items")
    if data.get("instructions") is not None and not isinstance(data["instructions"], str):
        raise BadRequest("'instructions' must be a string")
    _stream_fields(data)
    _check_openai_tools(data.get("tools"))
    completion_budget(data, 0, ("max_output_tokens",))


def _is_prompt_piece(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _prompt_list(value: Any, what: str) -> list[list[Prompt]]:
    """llama-server's prompt forms: a string, token ids (mixed with strings: one prompt), or a list
    of strings / token-id lists (one prompt each)."""
    if isinstance(value, str):
        return [[value]]
    if not isinstance(value, list) or not value:
        raise BadRequest(f"'{what}' is required: a string, an array of token ids, or an array of those")
    if all(_is_prompt_piece(item) for item in value):
        if any(isinstance(item, int) for item in value):
            return [[list(value)]]  # one prompt, pieces concatenated
        return [[item] for item in value]
    prompts: list[list[Prompt]] = []
    for i, item in enumerate(value):
        if isinstance(item, list) and item and all(_is_prompt_piece(t) for t in item):
            prompts.append([list(item)])
        elif isinstance(item, str):
            prompts.append([item])
        else:
            raise BadRequest(f"{what}[{i}] must be a string or an array of token ids, got {echo(item, 60)}")
    return prompts


def completion_prompts(data: dict[str, Any]) -> list[list[Prompt]]:
    return _prompt_list(data.get("prompt"), "prompt")


def check_completion(data: dict[str, Any]) -> None:
    completion_prompts(data)
    _stream_fields(data)


def embedding_inputs(data: dict[str, Any]) -> list[list[Prompt]]:
    key = "input" if "input" in data else "content"
    return _prompt_list(data.get(key), key)


def check_embeddings(data: dict[str, Any]) -> None:
    embedding_inputs(data)


def infill_prompts(data: dict[str, Any]) -> list[list[Prompt]]:
    pieces: list[Prompt] = []
    for key in ("input_prefix", "input_suffix", "prompt"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"'{key}' must be a string")
        pieces.append(value)
    extra = data.get("input_extra")
    if extra is not None:
        if not isinstance(extra, list):
            raise BadRequest("'input_extra' must be an array of {filename, text} objects")
        for i, chunk in enumerate(extra):
            if not isinstance(chunk, dict) or not isinstance(chunk.get("text", ""), str):
                raise BadRequest(f"input_extra[{i}] must be an object with a string 'text'")
            pieces.append(str(chunk.get("filename", "")) + "\n" + str(chunk.get("text", "")))
    return [pieces or [""]]


def check_infill(data: dict[str, Any]) -> None:
    infill_prompts(data)
    _stream_fields(data)


def rerank_pairs(data: dict[str, Any]) -> list[list[Prompt]]:
    query = data.get("query")
    documents = data.get("documents", data.get("texts"))
    if not isinstance(query, str):
        raise BadRequest("'query' is required and must be a string")
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise BadRequest("'documents' is required and must be an array of strings")
    return [[query, document] for document in documents] or [[query]]


def check_rerank(data: dict[str, Any]) -> None:
    rerank_pairs(data)
    top_n = data.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise BadRequest("'top_n' must be a non-negative integer")


def check_tokenize(data: dict[str, Any]) -> None:
    """llama-server answers anything else with a 500 ("type must be string")."""
    content = data.get("content", "")
    if not (isinstance(content, str) or (isinstance(content, list) and all(map(_is_prompt_piece, content)))):
        raise BadRequest("'content' must be a string, or an array of strings and token ids")


def check_detokenize(data: dict[str, Any]) -> None:
    tokens = data.get("tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequest("'tokens' must be an array of token ids")


def check_apply_template(data: dict[str, Any]) -> None:
    _check_messages(data.get("messages"), allow_empty=True)


def check_responses_count(data: dict[str, Any]) -> None:
    if not isinstance(data.get("input"), (str, list)):
        raise BadRequest("'input' is required and must be a string or an array of items")


def check_chat_count(data: dict[str, Any]) -> None:
    _check_messages(data.get("messages"))
    _check_openai_tools(data.get("tools"))


# ----------------------------------------------------------------------------- the routes

CHAT = Endpoint(
    "chat", "chat", Dialect.OPENAI, Sizing.GENERATE, CHAT_BUDGET, "/v1/chat/completions/input_tokens", check=check_chat
)
MESSAGES = Endpoint(
    "messages", "messages", Dialect.ANTHROPIC, Sizing.GENERATE, ("max_tokens",), "/v1/messages/count_tokens",
    check=check_messages,
)  # fmt: skip
RESPONSES = Endpoint(
    "responses", "responses", Dialect.OPENAI, Sizing.GENERATE, ("max_output_tokens",), "/v1/responses/input_tokens",
    check=check_responses,
)  # fmt: skip
COMPLETIONS = Endpoint(
    "completions", "completions", Dialect.OPENAI, Sizing.GENERATE, ("max_tokens", "n_predict"),
    prompts=completion_prompts, check=check_completion,
)  # fmt: skip
COMPLETION = Endpoint(
    "completion", "completions", Dialect.OPENAI, Sizing.GENERATE, ("n_predict", "max_tokens"),
    prompts=completion_prompts, check=check_completion,
)  # fmt: skip
INFILL = Endpoint(
    "infill", "infill", Dialect.OPENAI, Sizing.GENERATE, ("n_predict", "max_tokens"),
    prompts=infill_prompts, overhead=4, check=check_infill,
)  # fmt: skip
EMBEDDINGS = Endpoint(
    "embeddings", "embeddings", Dialect.OPENAI, Sizing.BATCH, prompts=embedding_inputs, check=check_embeddings
)
RERANK = Endpoint(
    "rerank", "rerank", Dialect.OPENAI, Sizing.BATCH, prompts=rerank_pairs, overhead=4, check=check_rerank
)
CHAT_COUNT = Endpoint("chat_count", "chat", Dialect.OPENAI, Sizing.ANY, check=check_chat_count)
MESSAGES_COUNT = Endpoint("messages_count", "messages", Dialect.ANTHROPIC, Sizing.ANY, check=check_messages_count)
RESPONSES_COUNT = Endpoint("responses_count", "responses", Dialect.OPENAI, Sizing.ANY, check=check_responses_count)
TOKENIZE = Endpoint("tokenize", "tokenize", Dialect.OPENAI, Sizing.ANY, check=check_tokenize)
DETOKENIZE = Endpoint("detokenize", "tokenize", Dialect.OPENAI, Sizing.ANY, check=check_detokenize)
APPLY_TEMPLATE = Endpoint("apply_template", "tokenize", Dialect.OPENAI, Sizing.ANY, check=check_apply_template)

# Paths as llama-server serves them (the /v1-less ones too); each request goes to the same path.
ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": CHAT,
    "/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/completion": COMPLETION,
    "/completions": COMPLETION,  # llama-server's native route, not OpenAI's
    "/v1/embeddings": EMBEDDINGS,
    "/embedding": EMBEDDINGS,
    "/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
    "/v1/responses/input_tokens": RESPONSES_COUNT,
    "/v1/chat/completions/input_tokens": CHAT_COUNT,
    "/v1/messages": MESSAGES,
    "/v1/messages/count_tokens": MESSAGES_COUNT,
    "/infill": INFILL,
    "/rerank": RERANK,
    "/v1/rerank": RERANK,
    "/reranking": RERANK,
    "/v1/reranking": RERANK,
    "/tokenize": TOKENIZE,
    "/detokenize": DETOKENIZE,
    "/apply-template": APPLY_TEMPLATE,
}


# The gateway's own routes under /api/ (the watch page's); every other /api/ path is Ollama's.
OWN_API_PATHS = frozenset({"/api/requests", "/api/logs"})


def dialect_of(path: str) -> Dialect:
    """The dialect a path belongs to, known route or not (for errors on unknown routes)."""
    endpoint = ROUTES.get(path)
    if endpoint is not None:
        return endpoint.dialect
    if path.startswith("/api/") and path not in OWN_API_PATHS:
        return Dialect.OLLAMA
    return Dialect.ANTHROPIC if path.startswith("/v1/messages") else Dialect.OPENAI
