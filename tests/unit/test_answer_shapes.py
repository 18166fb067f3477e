"""Reading tokens and tokens/s from llama-server's answers, and the protocol shapes of loading
progress (no sockets). The answers are the shapes the research notes captured from the real
llama-server 0.10068."""

from __future__ import annotations

import json

import pytest

from llmgw.api import ModelRewriter
from llmgw.api.endpoints import CHAT, COMPLETIONS, MESSAGES, RESPONSES
from llmgw.api.errors import engine_error_event
from llmgw.api.progress import MessagesThinking, ResponsesReasoning, progress_stream
from llmgw.api.usage import AnswerStats
from llmgw.errors import EngineStartError

TIMINGS = {
    "cache_n": 20,
    "prompt_n": 5,
    "prompt_ms": 44.5,
    "prompt_per_token_ms": 8.9,
    "prompt_per_second": 112.26,
    "predicted_n": 5,
    "predicted_ms": 104.1,
    "predicted_per_token_ms": 20.8,
    "predicted_per_second": 48.01,
}


def sse(payload: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def read(*chunks: bytes) -> AnswerStats:
    stats = AnswerStats()
    for chunk in chunks:
        stats.feed(chunk)
    return stats


def test_chat_finish_chunk_timings() -> None:
    content = sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]})
    finish = sse({"choices": [{"finish_reason": "length", "index": 0, "delta": {}}], "timings": TIMINGS})
    stats = read(content, finish + b"data: [DONE]\n\n")
    assert stats.as_dict() == {
        "prompt_tokens": 25,
        "cached_tokens": 20,
        "generated_tokens": 5,
        "prefill_tps": 112.3,
        "decode_tps": 48.0,
    }


def test_chat_include_usage_chunk_and_non_stream_body() -> None:
    usage = {
        "completion_tokens": 5,
        "prompt_tokens": 25,
        "total_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 20},
    }
    stats = read(sse({"choices": [], "usage": usage, "timings": TIMINGS}))
    assert (stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens) == (25, 20, 5)
    body = json.dumps({"choices": [{"message": {"content": "x"}}], "usage": usage, "timings": TIMINGS}).encode()
    assert read(body).as_dict() == stats.as_dict()


def test_anthropic_usage_in_message_start_and_message_delta() -> None:
    start = {
        "type": "message_start",
        "message": {"usage": {"cache_read_input_tokens": 20, "input_tokens": 5, "output_tokens": 0}},
    }
    delta = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 5}}
    stats = read(sse(start, "message_start"), sse(delta, "message_delta"))
    assert (stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens) == (25, 20, 5)
    assert stats.prefill_tps is None and stats.decode_tps is None  # Messages carry no timings


def test_responses_completed_has_top_level_timings() -> None:
    completed = {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 25, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 20}}},
        "timings": TIMINGS,
    }
    stats = read(sse(completed, "response.completed"))
    assert stats.as_dict()["decode_tps"] == 48.0 and stats.prompt_tokens == 25


def test_text_that_mentions_usage_is_not_read_and_meaningless_rates_are_dropped() -> None:
    tricky = sse({"choices": [{"delta": {"content": 'say "usage": {"prompt_tokens": 99} and "timings"'}}]})
    assert read(tricky).as_dict() == AnswerStats().as_dict()
    one_token = dict(TIMINGS, predicted_n=1, predicted_per_second=1e6, prompt_n=0, cache_n=25)
    stats = read(sse({"timings": one_token}))
    assert (stats.prompt_tokens, stats.generated_tokens, stats.prefill_tps, stats.decode_tps) == (25, 1, None, None)


# ----------------------------------------------------------------------------- progress shapes


def events(data: bytes) -> list[tuple[str | None, dict[str, object]]]:
    out = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        kind = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_anthropic_engine_stream_follows_the_thinking_block() -> None:
    stream = MessagesThinking(MESSAGES, "claude-x")
    ours = stream.open() + stream.text("Loading...") + stream.close()
    dropped: list[bytes] = []
    splice = stream.splice(ModelRewriter("claude-x"), dropped.append)
    engine = (
        sse({"type": "message_start", "message": {"model": "/m.gguf", "usage": {"input_tokens": 5}}}, "message_start")
        + sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )
        + sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": '"index": 0'}},
            "content_block_delta",
        )
    )
    # Cut mid-event, and mid-line: the splice looks at whole events only.
    relayed = splice.chunk(engine[:3]) + splice.chunk(engine[3:50]) + splice.chunk(engine[50:]) + splice.flush()
    got = events(ours + relayed)
    assert [kind for kind, _ in got] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
    ]
    assert [data.get("index") for _, data in got[1:]] == [0, 0, 0, 1, 1]
    assert got[-1][1]["delta"] == {"type": "text_delta", "text": '"index": 0'}  # text is never touched
    assert len(dropped) == 1 and b"message_start" in dropped[0]


def test_responses_engine_stream_follows_the_reasoning_item() -> None:
    stream = ResponsesReasoning(RESPONSES, "gpt-x")
    ours = stream.open() + stream.text("Loading") + stream.text(" 5%") + stream.close()
    splice = stream.splice(ModelRewriter("gpt-x"), lambda _: None)
    engine = b"".join(
        sse({"type": kind, "response": {"id": "resp_engine"}}, kind)
        for kind in ("response.created", "response.in_progress")
    ) + sse({"type": "response.output_text.delta", "delta": "tok0"}, "response.output_text.delta")
    got = events(ours + splice.chunk(engine))
    kinds = [kind for kind, _ in got]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_text.delta",
    ]
    assert got[5][1]["text"] == "Loading 5%"
    assert got[0][1]["response"]["model"] == "gpt-x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("endpoint", "mode", "kind"),
    [
        (CHAT, "reasoning", "ChatReasoning"),
        (MESSAGES, "reasoning", "MessagesThinking"),
        (RESPONSES, "reasoning", "ResponsesReasoning"),
        (COMPLETIONS, "reasoning", "ProgressStream"),
        (CHAT, "comments", "ProgressStream"),
    ],
)
def test_each_mode_and_route_gets_its_shape(endpoint, mode, kind) -> None:
    stream = progress_stream(endpoint, mode, "m")
    assert type(stream).__name__ == kind
    assert progress_stream(endpoint, "none", "m") is None


def test_comments_are_comment_lines_only() -> None:
    stream = progress_stream(CHAT, "comments", "m")
    assert stream is not None
    data = stream.open() + stream.text("Loading model 'm': 5%\nsecond line") + stream.close()
    assert data == b": llmgw Loading model 'm': 5%\n: llmgw second line\n\n"


def test_errors_after_progress_in_each_protocol() -> None:
    failure = EngineStartError("model 'm': engine exited during start-up")
    chat = events(progress_stream(CHAT, "reasoning", "m").error(failure))  # type: ignore[union-attr]
    assert chat == [
        (None, {"error": {"message": failure.message, "type": "server_error", "code": "engine_start_failed"}})
    ]
    thinking = MessagesThinking(MESSAGES, "m")
    got = events(thinking.open() + thinking.error(failure))
    assert [kind for kind, _ in got] == ["message_start", "content_block_start", "content_block_stop", "error"]
    assert got[-1][1]["error"] == {"type": "overloaded_error", "message": failure.message}
    engine_400 = json.dumps(
        {"error": {"code": 400, "message": "too long", "type": "exceed_context_size_error"}}
    ).encode()
    assert events(engine_error_event(CHAT, 400, engine_400)) == [(None, json.loads(engine_400))]
    anthropic = events(engine_error_event(MESSAGES, 400, engine_400))
    assert anthropic == [
        ("error", {"type": "error", "error": {"type": "invalid_request_error", "message": "too long"}})
    ]
    responses = events(engine_error_event(RESPONSES, 500, b"<html>oops</html>"))
    assert responses[0][0] == "error" and responses[0][1]["message"] == "<html>oops</html>"
