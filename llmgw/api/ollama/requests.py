"""Ollama requests as llama-server requests: /api/chat and /api/generate become a chat completion
(``/v1/chat/completions``), a raw completion (``/completion``) or a fill-in-the-middle
(``/infill``); /api/embed and /api/embeddings become ``/v1/embeddings``.

The translated body is what the gateway counts, sizes and forwards, exactly as if it had come
in on the matching llama.cpp route: the counting and the variant choice see what the engine
will see. The engine streams when the client does (NDJSON, translated line by line by
``answers.py``), else answers one object, which becomes Ollama's one object.

Validation follows Ollama's texts where its clients show them (``model is required``, ``option
"temperature" must be of type float32``, ``invalid format: ...``); every malformed field is a
400 (Ollama answers some with a 500).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llmgw.api.endpoints import CHAT, COMPLETION, EMBEDDINGS, INFILL, Endpoint
from llmgw.api.ollama.wire import parse_keep_alive
from llmgw.errors import BadRequest, clip


class Kind(StrEnum):
    """The Ollama route a request came in on."""

    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"
    EMBEDDINGS = "embeddings"  # the older /api/embeddings: one prompt, one vector


class Action(StrEnum):
    FORWARD = "forward"  # an inference request
    LOAD = "load"  # nothing to infer (no messages, no prompt, no input): load the model
    UNLOAD = "unload"  # ... and keep_alive 0: unload it


@dataclass(frozen=True)
class Translated:
    """An Ollama request, ready for the gateway's request path."""

    kind: Kind
    model: str  # the name the client sent (answers carry it)
    action: Action
    endpoint: Endpoint  # the llama.cpp route it counts, sizes and is served as
    engine_path: str
    body: dict[str, Any] = field(default_factory=dict)
    stream: bool = True  # the client reads NDJSON (else one JSON object)
    keep_alive: float | None = None  # seconds (inf: forever, 0: unload once done); None: not asked
    num_ctx: int = 0  # context asked for (options.num_ctx); 0: none
    think: bool | None = None  # False: reasoning the engine still returns is dropped
    dimensions: int | None = None  # /api/embed: vectors cut to this length and normalised again

    @property
    def capability_name(self) -> str:
        """What Ollama calls the capability in its "does not support" errors."""
        if self.endpoint is EMBEDDINGS:
            return "embedding"
        if self.endpoint is INFILL:
            return "insert"
        return "chat" if self.kind is Kind.CHAT else "generate"


# ----------------------------------------------------------------------------- shared fields


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if model is None or model == "":
        raise BadRequest("model is required")
    if not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {_shown(model)}")
    return model


def _stream(data: dict[str, Any]) -> bool:
    """``stream`` defaults to true on Ollama's generation routes."""
    value = data.get("stream")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRequest(f"stream must be a boolean, got {_shown(value)}")
    return value


def _keep_alive(data: dict[str, Any]) -> float | None:
    value = data.get("keep_alive")
    return None if value is None else parse_keep_alive(value)


def _shown(value: Any) -> str:
    return clip(json.dumps(value, ensure_ascii=False), 100)


def _optional_str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, got {_shown(value)}")
    return value


def _optional_bool(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{key} must be a boolean, got {_shown(value)}")
    return value


# ----------------------------------------------------------------------------- options

# Ollama option -> llama-server field. Only what the client set is sent: llama-server's own
# defaults (and the GGUF's sampling defaults) apply otherwise, not Ollama's.
_INT_OPTIONS = {
    "num_predict": "n_predict",
    "num_keep": "n_keep",
    "top_k": "top_k",
    "seed": "seed",
    "repeat_last_n": "repeat_last_n",
    "mirostat": "mirostat",
}
_FLOAT_OPTIONS = {
    name: name
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_tau",
        "mirostat_eta",
    )
}


@dataclass(frozen=True)
class Options:
    fields: dict[str, Any]  # llama-server sampling fields
    num_ctx: int  # 0: not set


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def options(value: Any) -> Options:
    """Ollama's ``options`` as llama-server fields; unknown options and load-time ones (num_gpu,
    num_thread, ...) are ignored, as the gateway's configuration owns the engine's launch."""
    if value is None:
        return Options({}, 0)
    if not isinstance(value, dict):
        raise BadRequest(f"options must be an object, got {_shown(value)}")
    fields: dict[str, Any] = {}
    num_ctx = 0
    for key, item in value.items():
        if item is None:
            continue
        if key in _INT_OPTIONS or key == "num_ctx":
            if not _number(item):
                raise BadRequest(f'option "{clip(key, 40)}" must be of type integer')
            number = int(item)
            if not -(2**63) <= number < 2**64:
                raise BadRequest(f'option "{clip(key, 40)}" is out of the 64-bit integer range')
            if key == "num_ctx":
                num_ctx = max(number, 0)
            elif key == "num_predict":
                if number >= 0:  # -1 (unlimited) and -2 (fill the context) are llama-server's default
                    fields["n_predict"] = number
            else:
                fields[_INT_OPTIONS[key]] = number
        elif key in _FLOAT_OPTIONS:
            if not _number(item):
                raise BadRequest(f'option "{clip(key, 40)}" must be of type float32')
            fields[_FLOAT_OPTIONS[key]] = float(item)
        elif key == "stop":
            stops = [item] if isinstance(item, str) else item
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise BadRequest('option "stop" must be of an array of strings')
            fields["stop"] = stops
    return Options(fields, num_ctx)


# ----------------------------------------------------------------------------- format, think, tools


def _format(value: Any, chat: bool) -> dict[str, Any]:
    """``format``: "json" or a JSON schema, as llama-server's structured output. "json" is an object
    schema, as Ollama's grammar for it is (llama-server 0.10068 ignores a bare ``json_object``)."""
    if value is None or value == "":
        return {}
    schema = {"type": "object"} if value == "json" else value
    if isinstance(schema, dict):
        if chat:
            return {"response_format": {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}}
        return {"json_schema": schema}
    raise BadRequest(f'invalid format: {_shown(value)}; expected "json" or a valid JSON Schema object')


_THINK_LEVELS = ("high", "medium", "low")


def _think(value: Any) -> tuple[bool | None, dict[str, Any]]:
    """``think`` as the chat template's arguments (honoured by engines run with --jinja)."""
    if value is None:
        return None, {}
    if isinstance(value, bool):
        return value, {"chat_template_kwargs": {"enable_thinking": value}}
    if isinstance(value, str) and value in _THINK_LEVELS:
        return True, {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": value}}
    raise BadRequest(f'invalid think value: {_shown(value)} (must be "high", "medium", "low", true, or false)')


def _tools(value: Any) -> list[dict[str, Any]]:
    """Ollama's tools are OpenAI's; the official client sends ``[]`` on every chat (no tools)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"tools must be an array, got {_shown(value)}")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}] must be an object")
        tools.append(tool if "type" in tool else {"type": "function", **tool})
    return tools


# ----------------------------------------------------------------------------- messages

_MIME = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def _image_part(value: Any, where: str) -> dict[str, Any]:
    """An Ollama image (raw base64) as an OpenAI image part (a data URL with its type)."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where} must be a base64 string")
    if value.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": value}}
    try:
        head = base64.b64decode(value[:64] + "=" * (-len(value[:64]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise BadRequest(f"{where}: WebP images are not supported by the engine; send PNG or JPEG")
    mime = next((kind for magic, kind in _MIME if head.startswith(magic)), "image/jpeg")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{value}"}}


def _content(text: str, images: Any, where: str) -> str | list[dict[str, Any]]:
    if images is None or images == []:
        return text
    if not isinstance(images, list):
        raise BadRequest(f"{where}.images must be an array of base64 strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.extend(_image_part(image, f"{where}.images[{j}]") for j, image in enumerate(images))
    return parts


def _call_id(message: int, call: int, name: str) -> str:
    """A stable id for a tool call the client sent without one: the same history gives the same
    prompt (and the engine's prompt cache holds), and 9 alphanumerics suit Mistral's templates."""
    return hashlib.sha256(f"{message}:{call}:{name}".encode()).hexdigest()[:9]


def _tool_calls(value: Any, where: str, index: int) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequest(f"{where}.tool_calls must be an array")
    calls = []
    for j, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{where}.tool_calls[{j}] must be an object with a function that has a string name")
        arguments = function.get("arguments", {})
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):  # lenient: JSON text, as OpenAI sends it, if it holds an object
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = None
        if not isinstance(arguments, dict):
            raise BadRequest(f"{where}.tool_calls[{j}].function.arguments must be an object")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = _call_id(index, j, function["name"])
        text = json.dumps(arguments, ensure_ascii=False)
        calls.append({"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": text}})
    return calls


def messages(value: Any) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI chat messages: images as image parts, tool calls with their
    arguments as JSON text, tool results paired with the calls they answer (Ollama clients send
    ``tool_name``, often without ``tool_call_id``), assistant ``thinking`` as ``reasoning_content``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("messages must be an array")
    converted: list[dict[str, Any]] = []
    unanswered: list[str] = []  # ids of the latest tool calls, in order, not yet answered
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"{where}.role must be a string")
        role = role.lower()
        text = _optional_str(message, "content") if "content" in message else ""
        out: dict[str, Any] = {"role": role, "content": _content(text, message.get("images"), where)}
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking and role == "assistant":
            out["reasoning_content"] = thinking
        if message.get("tool_calls") is not None:
            out["tool_calls"] = _tool_calls(message["tool_calls"], where, i)
            unanswered = [call["id"] for call in out["tool_calls"]]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                call_id = unanswered[0] if unanswered else None
            if call_id is not None:
                out["tool_call_id"] = call_id
                if call_id in unanswered:
                    unanswered.remove(call_id)
            name = message.get("tool_name", message.get("name"))
            if isinstance(name, str) and name:
                out["name"] = name
        converted.append(out)
    return converted


# ----------------------------------------------------------------------------- the routes


def _action(empty: bool, keep_alive: float | None) -> Action:
    if not empty:
        return Action.FORWARD
    return Action.UNLOAD if keep_alive == 0 else Action.LOAD


def chat(data: dict[str, Any]) -> Translated:
    model = _model(data)
    keep_alive = _keep_alive(data)
    stream = _stream(data)
    opts = options(data.get("options"))
    think, think_fields = _think(data.get("think"))
    chat_messages = messages(data.get("messages"))
    body: dict[str, Any] = {"model": model, "messages": chat_messages, "stream": stream, **opts.fields}
    tools = _tools(data.get("tools"))
    if tools:
        body["tools"] = tools
    body.update(_format(data.get("format"), chat=True))
    body.update(think_fields)
    return Translated(
        Kind.CHAT, model, _action(not chat_messages, keep_alive), CHAT, "/v1/chat/completions", body, stream,
        keep_alive, opts.num_ctx, think,
    )  # fmt: skip


def generate(data: dict[str, Any]) -> Translated:
    """A prompt: templated as a user message (after ``system``), sent ``raw`` as it is, or with a
    ``suffix`` as a fill-in-the-middle. ``template`` (a Go template) cannot apply to llama-server's
    Jinja templates and is ignored; so is ``context`` (the deprecated token memory)."""
    model = _model(data)
    keep_alive = _keep_alive(data)
    stream = _stream(data)
    opts = options(data.get("options"))
    think, think_fields = _think(data.get("think"))
    prompt = _optional_str(data, "prompt")
    suffix = _optional_str(data, "suffix")
    system = _optional_str(data, "system")
    template = _optional_str(data, "template")
    raw = _optional_bool(data, "raw") or False
    context = data.get("context")
    if context is not None and (
        not isinstance(context, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in context)
    ):
        raise BadRequest("context must be an array of integers")
    if raw and (template or system or context):
        raise BadRequest("raw mode does not support template, system, or context")
    action = _action(not prompt, keep_alive)
    fmt_chat = _format(data.get("format"), chat=True)
    images = data.get("images")
    common = (model, action)
    if suffix:
        body = {"model": model, "input_prefix": prompt, "input_suffix": suffix, "prompt": "", "stream": stream}
        body.update(opts.fields)
        body.update(_format(data.get("format"), chat=False))
        return Translated(Kind.GENERATE, *common, INFILL, "/infill", body, stream, keep_alive, opts.num_ctx, think)
    if raw:
        if images:
            raise BadRequest("images are not supported with raw")
        body = {"model": model, "prompt": prompt, "stream": stream, "cache_prompt": True}
        body.update(opts.fields)
        body.update(_format(data.get("format"), chat=False))
        return Translated(
            Kind.GENERATE, *common, COMPLETION, "/completion", body, stream, keep_alive, opts.num_ctx, think
        )
    chat_messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    chat_messages.append({"role": "user", "content": _content(prompt, images, "request")})
    body = {"model": model, "messages": chat_messages, "stream": stream, **opts.fields, **fmt_chat, **think_fields}
    return Translated(
        Kind.GENERATE, *common, CHAT, "/v1/chat/completions", body, stream, keep_alive, opts.num_ctx, think
    )


def embed(data: dict[str, Any]) -> Translated:
    """``input``: a string or an array of strings; ``dimensions`` cuts the vectors."""
    model = _model(data)
    keep_alive = _keep_alive(data)
    opts = options(data.get("options"))
    _optional_bool(data, "truncate")
    dimensions = data.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0):
        raise BadRequest("dimensions must be a non-negative integer")
    value = data.get("input")
    if value is None or value == "":
        inputs: list[str] = []
    elif isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        inputs = list(value)
    else:
        raise BadRequest("invalid input type")
    body = {"model": model, "input": inputs}
    return Translated(
        Kind.EMBED, model, _action(not inputs, keep_alive), EMBEDDINGS, "/v1/embeddings", body, False, keep_alive,
        opts.num_ctx, dimensions=dimensions or None,
    )  # fmt: skip


def embeddings(data: dict[str, Any]) -> Translated:
    """The older route: one ``prompt``, one vector, not normalised (as Ollama answers it)."""
    model = _model(data)
    keep_alive = _keep_alive(data)
    opts = options(data.get("options"))
    prompt = _optional_str(data, "prompt")
    body = {"model": model, "input": prompt, "embd_normalize": -1}
    return Translated(
        Kind.EMBEDDINGS, model, _action(not prompt, keep_alive), EMBEDDINGS, "/v1/embeddings", body, False,
        keep_alive, opts.num_ctx,
    )  # fmt: skip


TRANSLATE = {Kind.CHAT: chat, Kind.GENERATE: generate, Kind.EMBED: embed, Kind.EMBEDDINGS: embeddings}
