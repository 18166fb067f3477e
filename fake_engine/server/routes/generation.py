"""The generation routes (chat, completions, native completion, infill, Messages, Responses): one
shared life of a request (events, context check, slot and prompt cache, delays, streaming,
cancellation, fault knobs), and per route how its body becomes prompts and its answer a shape."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tornado.iostream

from ...fake_llama_tokenize import detokenize, messages_to_chat, render_template, responses_to_chat, tokenize
from .. import shapes
from ..bodies import check_input, check_messages, counted, is_token, prompt_ids
from ..errors import bad_request, exceed_context, missing_key, not_supported
from ..state import Engine, generated_id, log_tagged
from .base import BaseHandler

__all__ = [
    "ChatCompletionsHandler",
    "CompletionsHandler",
    "GenerationHandler",
    "InfillHandler",
    "MessagesHandler",
    "NativeCompletionHandler",
    "Plan",
    "ResponsesHandler",
]

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"


def requested_max_tokens(body: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    """The first of ``keys`` present; None when absent or negative (llama-server's "unset")."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not is_token(value):
            raise bad_request(f"'{key}' must be an integer")
        return value if value >= 0 else None
    return None


CHAT_LIMITS = ("max_completion_tokens", "max_tokens", "n_predict")
COMPLETION_LIMITS = ("max_tokens", "n_predict")
NATIVE_LIMITS = ("n_predict", "max_tokens")


def new_id(prefix: str = "chatcmpl-") -> str:
    """A fresh answer id, which the events repeat so a test can tell which engine answered."""
    return prefix + uuid.uuid4().hex


@dataclass
class Plan:
    """What one generation request will do: shared fields, one run per prompt, and its format."""

    request: shapes.Request
    runs: list[shapes.Run]
    format: shapes.Format
    settings: dict[str, Any]
    wanted_slot: int = -1
    use_cache: bool = True


class GenerationHandler(BaseHandler):
    """The shared life of a generation: events, context check, slots and the prompt cache, the
    delays, streaming through a ``Format``, cancellation, and the fault knobs."""

    hangs_with_requests = True
    limit_keys: Sequence[str] = CHAT_LIMITS

    def initialize(self, engine: Engine) -> None:
        super().initialize(engine)
        self._chunks = 0

    def plan(self, body: dict[str, Any]) -> Plan:
        raise NotImplementedError

    def make_request(self, body: Mapping[str, Any], request_id: str, message_id: str = "") -> shapes.Request:
        temperature = body.get("temperature", 0.8)
        return shapes.Request(
            id=request_id,
            model=self.engine.options.served_name,
            created=int(time.time()),
            stream=bool(body.get("stream")),
            include_usage=_include_usage(body),
            temperature=temperature if isinstance(temperature, int | float) else 0.8,
            message_id=message_id,
        )

    def make_run(self, index: int, ids: list[int], text: str, body: Mapping[str, Any]) -> shapes.Run:
        """Plan one prompt: ``max_tokens`` tokens (finish ``length``), else ``--fake-tokens``
        (``stop``), never more than the slot's context leaves."""
        room = max(0, self.engine.n_ctx - len(ids))
        limit = requested_max_tokens(body, self.limit_keys)
        if limit is None:
            n_tokens = min(self.engine.options.fake_tokens, room)
            finish = "stop" if n_tokens == self.engine.options.fake_tokens else "length"
        else:
            n_tokens, finish = min(limit, room), "length"
        return shapes.Run(index, ids, text, n_tokens, finish, limit)

    def chat_plan(self, body: dict[str, Any], chat_body: Mapping[str, Any], fmt: shapes.Format, **ids: str) -> Plan:
        """A plan for the chat-templated routes (chat, Messages, Responses): one prompt."""
        text = counted(render_template, chat_body)
        request = self.make_request(body, **ids)
        run = self.make_run(0, tokenize(text, add_special=True), text, body)
        return Plan(request, [run], fmt, shapes.generation_settings(request, run))

    async def post(self) -> None:
        if self.engine.rpc is not None:
            self.engine.rpc.check()  # a worker gone: abort, as llama-server does at its next generation
        body = self.json_body()
        plan = self.plan(body)
        request = plan.request
        self.engine.events.emit(
            "request",
            id=request.id,
            path=self.request.path,
            stream=request.stream,
            prompt_tokens=sum(run.prompt_tokens for run in plan.runs),
        )
        for run in plan.runs:
            # llama-server's check, against one slot's context: the first generated token needs a
            # cell too, so a prompt that fills the slot exactly is refused as well.
            if run.prompt_tokens >= self.engine.n_ctx:
                raise exceed_context(run.prompt_tokens, self.engine.n_ctx)
        self.engine.active.add(request.id)
        try:
            if request.stream:
                await self._stream(plan)
            else:
                await self._complete(plan)
        finally:
            self.engine.active.discard(request.id)

    async def _generate(self, plan: Plan, run: shapes.Run) -> bool:
        """Process one prompt and generate its tokens (streaming them when asked); False when the
        client went away."""
        options = self.engine.options
        run.started = time.monotonic()
        slot = self.engine.acquire(run, plan.settings, plan.wanted_slot, plan.use_cache)
        try:
            if await self.wait_or_closed(options.fake_prompt_delay):
                return False
            run.prompt_done = time.monotonic()
            if plan.request.stream:
                if run.index == 0:
                    self.set_header("Content-Type", "text/event-stream")
                    self.set_header("Cache-Control", "no-cache")
                    self.set_header("X-Accel-Buffering", "no")
                if not await self._send(plan.format.begin(plan.request, run)):
                    return False
                if run.index == 0:
                    self._maybe_crash()
            for index in range(run.n_tokens):
                if await self.wait_or_closed(options.fake_token_delay):
                    return False
                if plan.request.stream:
                    if not await self._send(plan.format.token(plan.request, run, index)):
                        return False
                    run.generated = index + 1
                    self._chunks += 1
                    self._maybe_crash()
                    if not await self._maybe_stall(plan.request):
                        return False
                else:
                    run.generated = index + 1
            run.finished = time.monotonic()
            return True
        finally:
            if run.finished is None:
                run.finished = time.monotonic()
            self.engine.release(slot, run)

    def _cancelled(self, plan: Plan) -> None:
        tokens = sum(run.generated for run in plan.runs)
        self.engine.events.emit("cancelled", id=plan.request.id, tokens=tokens)
        log_tagged("srv  cancel_tasks: task cancelled")

    def _done(self, plan: Plan) -> None:
        """Written before the answer's last bytes, so a client that has the answer sees the event."""
        self.engine.events.emit("done", id=plan.request.id, tokens=sum(run.generated for run in plan.runs))

    async def _complete(self, plan: Plan) -> None:
        for run in plan.runs:
            if not await self._generate(plan, run):
                return self._cancelled(plan)
        self._done(plan)
        text = shapes.dumps(plan.format.body(plan.request, plan.runs))
        if self.engine.options.fake_truncate_body:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.write(text[: len(text) // 2])
            await self._truncate()
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(text)

    async def _stream(self, plan: Plan) -> None:
        fmt, request = plan.format, plan.request
        last = len(plan.runs) - 1
        for run in plan.runs:
            if run.index and not await self._send(fmt.between()):
                return self._cancelled(plan)
            if not await self._generate(plan, run):
                return self._cancelled(plan)
            if run.index == last:
                self._done(plan)  # every token is out; the client may still hang up below
            if not await self._send(fmt.end(request, run)) and run.index != last:
                return self._cancelled(plan)
        if not await self._send(fmt.close(request)):
            return
        if self.engine.options.fake_truncate_body:
            await self._truncate()
            return
        self.finish()

    async def _truncate(self) -> None:
        """``--fake-truncate-body``: flush what was written, then close the connection before the
        chunked body's terminating chunk."""
        with contextlib.suppress(tornado.iostream.StreamClosedError):
            await self.flush()
        self.engine.events.emit("truncated", path=self.request.path)
        self.detach().close()

    async def _send(self, events: Sequence[shapes.Sse]) -> bool:
        """Write and flush server-sent events; return False if the client went away."""
        if self._closed.is_set():
            return False
        for event in events:
            self.write(event.encode())
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            return False
        return True

    def _maybe_crash(self) -> None:
        if self._chunks == self.engine.options.fake_exit_after_chunks:
            self.engine.crash(f"fake crash after {self._chunks} content chunks")

    async def _maybe_stall(self, request: shapes.Request) -> bool:
        """``--fake-stall-after-chunks``: go quiet (connection open) for ``--fake-stall-seconds``;
        False when the client went away meanwhile."""
        if self._chunks != self.engine.options.fake_stall_after_chunks:
            return True
        self.engine.events.emit("stalled", id=request.id, chunks=self._chunks)
        return not await self.wait_or_closed(self.engine.options.fake_stall_seconds)


def _include_usage(body: Mapping[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    return isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))


class ChatCompletionsHandler(GenerationHandler):
    """OpenAI ``/v1/chat/completions`` (also without ``/v1``): one templated prompt."""

    def plan(self, body: dict[str, Any]) -> Plan:
        check_messages(body)
        options = self.engine.options
        fmt = shapes.ChatFormat(options.fake_reasoning, fake_tool_call(body) if options.fake_tool_calls else None)
        return self.chat_plan(body, body, fmt, request_id=new_id())


def fake_tool_call(body: Mapping[str, Any]) -> shapes.ToolCall | None:
    """``--fake-tool-calls``: a request with tools gets a call of the first one."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    key = next(iter(properties), "arg") if isinstance(properties, dict) and properties else "arg"
    return shapes.ToolCall("call_" + uuid.uuid4().hex[:8], function["name"], shapes.dumps({key: "tok0"}))


class CompletionsHandler(GenerationHandler):
    """OpenAI ``/v1/completions``: ``prompt`` as a string, ids, or a list of prompts."""

    limit_keys = COMPLETION_LIMITS

    def make_format(self) -> shapes.Format:
        return shapes.CompletionsFormat()

    def plan(self, body: dict[str, Any]) -> Plan:
        if "prompt" not in body:
            raise missing_key("prompt")
        return self.prompts_plan(body, prompt_ids(body["prompt"]))

    def prompts_plan(self, body: dict[str, Any], prompts: list[list[int]]) -> Plan:
        request = self.make_request(body, new_id())
        runs = [self.make_run(i, ids, detokenize(ids), body) for i, ids in enumerate(prompts)]
        id_slot = body.get("id_slot", -1)
        return Plan(
            request,
            runs,
            self.make_format(),
            shapes.generation_settings(request, runs[0]),
            wanted_slot=id_slot if is_token(id_slot) else -1,
            use_cache=bool(body.get("cache_prompt", True)),
        )


class NativeCompletionHandler(CompletionsHandler):
    """llama.cpp's ``/completion`` (also ``/completions``): ``prompt`` is required (no ``content``)."""

    limit_keys = NATIVE_LIMITS

    def make_format(self) -> shapes.Format:
        return shapes.NativeFormat(generated_id)


class InfillHandler(NativeCompletionHandler):
    """``/infill``: 501 as for a model without FIM tokens, unless ``--fake-infill``."""

    def plan(self, body: dict[str, Any]) -> Plan:
        if not self.engine.options.fake_infill:
            raise not_supported(
                "Infill is not supported by this model: prefix token is missing. suffix token is missing. "
                "middle token is missing. "
            )
        chunks = []
        extra = body.get("input_extra", [])
        for item in extra if isinstance(extra, list) else []:
            if isinstance(item, Mapping):
                chunks.append(f"{FILE_SEP} {item.get('filename', '')} {item.get('text', '')}")
        prefix, suffix, prompt = (str(body.get(key, "")) for key in ("input_prefix", "input_suffix", "prompt"))
        chunks.append(f"{FIM_PREFIX} {prefix} {FIM_SUFFIX} {suffix} {FIM_MIDDLE} {prompt}")
        return self.prompts_plan(body, [tokenize(" ".join(chunks), add_special=True)])


class MessagesHandler(GenerationHandler):
    """Anthropic ``/v1/messages``: templated like chat after ``messages_to_chat``."""

    limit_keys = ("max_tokens",)

    def plan(self, body: dict[str, Any]) -> Plan:
        check_messages(body, status=500)
        chat_body = counted(messages_to_chat, body)
        return self.chat_plan(body, chat_body, shapes.MessagesFormat(), request_id=new_id())


class ResponsesHandler(GenerationHandler):
    """OpenAI ``/v1/responses``: templated like chat after ``responses_to_chat``."""

    limit_keys = ("max_output_tokens", "max_tokens")

    def plan(self, body: dict[str, Any]) -> Plan:
        check_input(body)
        chat_body = counted(responses_to_chat, body)
        ids = {"request_id": new_id("resp_"), "message_id": new_id("msg_")}
        return self.chat_plan(body, chat_body, shapes.ResponsesFormat(), **ids)
