"""The Ollama translation, pure: keep_alive durations, requests as llama-server bodies, the
engine's answers as Ollama's, model details from GGUF metadata."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from llmgw.api.endpoints import CHAT, COMPLETION, EMBEDDINGS, INFILL
from llmgw.api.ollama import answers, models, requests
from llmgw.api.ollama.requests import Action, Kind
from llmgw.api.ollama.wire import FOREVER, parse_keep_alive, tagged, timestamp
from llmgw.api.usage import AnswerStats
from llmgw.errors import BadRequest, GatewayError
from llmgw.modelfile import ModelFile

# ----------------------------------------------------------------------------- wire


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0), (0.0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), (1.5, 1.5), ("5m", 300.0),
        ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("300", 300.0), (" 2s ", 2.0),
        (-1, FOREVER), (-1.0, FOREVER), ("-1s", FOREVER), ("-1", FOREVER), ("-5m", FOREVER), (1e300, FOREVER),
    ],
)  # fmt: skip
def test_keep_alive_is_a_go_duration_or_seconds(value: Any, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["abc", "5 m", "", "m", "1d", "inf", "nan", "1e3", True, None, [], {}])
def test_bad_keep_alive_is_a_400(value: Any) -> None:
    with pytest.raises(BadRequest):
        parse_keep_alive(value)


def test_timestamps_and_names() -> None:
    assert timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert timestamp(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert timestamp(1_700_000_000_100_000_000) == "2023-11-14T22:13:20.1Z"
    assert tagged("gemma") == "gemma:latest" and tagged("qwen3:8b") == "qwen3:8b"


# ----------------------------------------------------------------------------- requests


def test_chat_becomes_a_chat_completion_with_llama_server_fields() -> None:
    call = requests.chat(
        {
            "model": "m:latest",
            "messages": [{"role": "USER", "content": "hi"}],
            "stream": False,
            "tools": [],
            "options": {"num_predict": 7, "temperature": 0, "top_k": 3.9, "stop": "\n", "num_ctx": 8192,
                        "num_gpu": 99, "repeat_penalty": 1.1, "tfs_z": 1, "seed": None},
            "format": {"type": "object"},
            "think": "high",
            "keep_alive": "10m",
        }
    )  # fmt: skip
    assert (call.kind, call.action, call.endpoint, call.engine_path) == (
        Kind.CHAT, Action.FORWARD, CHAT, "/v1/chat/completions",
    )  # fmt: skip
    assert call.stream is False and call.num_ctx == 8192 and call.keep_alive == 600.0 and call.think is True
    assert call.body == {
        "model": "m:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,  # the engine answers one object when the client wants one
        "n_predict": 7,
        "temperature": 0.0,
        "top_k": 3,
        "stop": ["\n"],
        "repeat_penalty": 1.1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "schema", "schema": {"type": "object"}}},
        "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"},
    }
    CHAT.check(call.body)  # what the gateway checks, counts and forwards is a valid chat


def test_unlimited_num_predict_and_json_format() -> None:
    call = requests.chat({"model": "m", "messages": [], "options": {"num_predict": -1}, "format": "json"})
    assert "n_predict" not in call.body
    assert call.body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert call.action is Action.LOAD
    assert requests.chat({"model": "m", "keep_alive": 0.0}).action is Action.UNLOAD
    assert requests.chat({"model": "m", "keep_alive": "-1s"}).action is Action.LOAD


def test_tool_history_pairs_results_with_their_calls() -> None:
    history = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "thinking": "two calls", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "weather", "arguments": {"city": "Rome"}}},
        ]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
        {"role": "tool", "content": "rainy", "tool_name": "weather"},
    ]  # fmt: skip
    converted = requests.messages(history)
    assistant = converted[1]
    assert assistant["content"] == "" and assistant["reasoning_content"] == "two calls"
    first, second = assistant["tool_calls"]
    assert first["type"] == "function" and json.loads(first["function"]["arguments"]) == {"city": "Paris"}
    assert len(first["id"]) == 9 and first["id"] != second["id"]
    assert [m["tool_call_id"] for m in converted[2:]] == [first["id"], second["id"]]
    assert [m["name"] for m in converted[2:]] == ["weather", "weather"]
    assert requests.messages(history)[1]["tool_calls"][0]["id"] == first["id"]  # stable: the prompt cache holds
    CHAT.check({"messages": converted})


def test_images_become_data_urls_with_their_type() -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAE="  # a PNG's first bytes
    [message] = requests.messages([{"role": "user", "content": "what is it?", "images": [png]}])
    assert message["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    with pytest.raises(BadRequest, match="WebP"):
        requests.messages([{"role": "user", "images": ["UklGRiQAAABXRUJQVlA4IBgAAAAw"]}])
    with pytest.raises(BadRequest, match="base64"):
        requests.messages([{"role": "user", "images": ["not base64!"]}])


def test_generate_is_a_chat_raw_completion_or_infill() -> None:
    templated = requests.generate({"model": "m", "prompt": "hi", "system": "be brief", "template": "{{ .Prompt }}"})
    assert templated.endpoint is CHAT and templated.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    raw = requests.generate(
        {"model": "m", "prompt": "hi", "raw": True, "format": "json", "options": {"num_predict": 3}}
    )
    assert (raw.endpoint, raw.engine_path) == (COMPLETION, "/completion")
    assert raw.body == {"model": "m", "prompt": "hi", "stream": True, "cache_prompt": True, "n_predict": 3,
                        "json_schema": {"type": "object"}}  # fmt: skip
    infill = requests.generate({"model": "m", "prompt": "def f(", "suffix": "return 1"})
    assert (infill.endpoint, infill.engine_path) == (INFILL, "/infill") and infill.capability_name == "insert"
    assert infill.body["input_prefix"] == "def f(" and infill.body["input_suffix"] == "return 1"
    assert requests.generate({"model": "m"}).action is Action.LOAD
    for bad in ({"raw": True, "system": "s"}, {"raw": True, "context": [1]}, {"raw": True, "template": "t"}):
        with pytest.raises(BadRequest, match="raw mode does not support"):
            requests.generate({"model": "m", "prompt": "x", **bad})


def test_embed_inputs() -> None:
    one = requests.embed({"model": "e", "input": "a", "dimensions": 8})
    assert one.body == {"model": "e", "input": ["a"]} and one.dimensions == 8 and one.endpoint is EMBEDDINGS
    assert requests.embed({"model": "e", "input": ["a", "b"]}).body["input"] == ["a", "b"]
    assert requests.embed({"model": "e", "input": []}).action is Action.LOAD
    legacy = requests.embeddings({"model": "e", "prompt": "a"})
    assert legacy.body == {"model": "e", "input": "a", "embd_normalize": -1}
    for bad in ({"input": 3}, {"input": ["a", 1]}, {"input": "a", "dimensions": -1}, {"input": "a", "truncate": "no"}):
        with pytest.raises(BadRequest):
            requests.embed({"model": "e", **bad})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "model is required"),
        ({"model": 3}, "model must be a string"),
        ({"model": "m", "stream": "yes"}, "stream must be a boolean"),
        ({"model": "m", "options": []}, "options must be an object"),
        ({"model": "m", "options": {"seed": True}}, 'option "seed" must be of type integer'),
        ({"model": "m", "options": {"top_p": "x"}}, 'option "top_p" must be of type float32'),
        ({"model": "m", "tools": {}}, "tools must be an array"),
        ({"model": "m", "tools": [3]}, "tools[0] must be an object"),
        ({"model": "m", "messages": [3]}, "messages[0] must be an object"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role must be a string"),
        ({"model": "m", "messages": [{"role": "user", "content": ["x"]}]}, "content must be a string"),
        ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "tool_calls[0]"),
        ({"model": "m", "messages": [{"role": "user", "images": "x"}]}, "images must be an array"),
        ({"model": "m", "format": ["json"]}, "invalid format"),
        ({"model": "m", "think": 1}, "invalid think value"),
        ({"model": "m", "keep_alive": {}}, "keep_alive must be"),
    ],
)
def test_bad_chat_fields_are_400s_in_ollama_words(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        requests.chat(body)
    assert message in caught.value.message


# ----------------------------------------------------------------------------- answers


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


TIMINGS = {"cache_n": 2, "prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 2, "predicted_ms": 0.25}


def translate(kind: Kind, stream: bool, engine: bytes, pieces: int = 3, **fields: Any) -> tuple[bytes, AnswerStats]:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream, **fields}
    call = requests.chat(body) if kind is Kind.CHAT else requests.generate({**body, "prompt": "x"})
    stats = AnswerStats()
    translator = answers.translator(call, 0, stats)
    if not stream:
        return translator.body(engine), stats
    size = max(len(engine) // pieces, 1)
    out = b"".join(translator.chunk(engine[i : i + size]) for i in range(0, len(engine), size))  # cut anywhere
    return out + translator.flush(), stats


STREAM = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "hm"}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
    chunk({}, "tool_calls", timings=TIMINGS),
    b"[DONE]",
)


@pytest.mark.parametrize("pieces", [1, 3, 7, 50])
def test_a_chat_stream_becomes_ndjson_lines(pieces: int) -> None:
    out, stats = translate(Kind.CHAT, True, STREAM, pieces)
    assert out.endswith(b"\n") and b"\n\n" not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["message"].get("thinking") for line in lines[:1]] == ["hm"]
    assert [line["message"]["content"] for line in lines] == ["", "Hel", "lo", "", ""]
    assert [line["done"] for line in lines] == [False, False, False, False, True]
    calls = lines[3]["message"]["tool_calls"]
    assert calls == [{"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]
    last = lines[-1]
    assert "tool_calls" not in last["message"] and last["done_reason"] == "stop"
    assert (last["prompt_eval_count"], last["eval_count"]) == (5, 2)
    assert (last["prompt_eval_duration"], last["eval_duration"]) == (1_500_000, 250_000)
    assert all(isinstance(last[k], int) for k in ("total_duration", "load_duration"))
    assert stats.prompt_tokens == 5 and stats.generated_tokens == 2


WHOLE = json.dumps(
    {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning_content": "hm",
                    "tool_calls": [
                        {"type": "function", "id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9},
        "timings": TIMINGS,
    }
).encode()


def test_a_whole_chat_answer_becomes_one_object() -> None:
    out, _ = translate(Kind.CHAT, False, WHOLE)
    answer = json.loads(out)
    assert answer["message"]["content"] == "Hello" and answer["message"]["thinking"] == "hm"
    assert answer["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    ]
    assert answer["done"] is True and answer["done_reason"] == "stop" and answer["eval_count"] == 2  # timings win
    length = json.loads(WHOLE.replace(b'"tool_calls",', b'"length",'))
    assert json.loads(translate(Kind.GENERATE, False, json.dumps(length).encode())[0])["done_reason"] == "length"


def test_thinking_is_dropped_when_think_is_false() -> None:
    out, _ = translate(Kind.CHAT, False, WHOLE, think=False)
    assert "thinking" not in json.loads(out)["message"]
    out, _ = translate(Kind.CHAT, True, STREAM, think=False)
    assert all("thinking" not in json.loads(line)["message"] for line in out.splitlines())


def test_generate_answers_carry_response_and_usage_after_the_finish() -> None:
    engine = sse(
        chunk({"content": "a"}),
        chunk({}, "length"),
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}, "timings": TIMINGS},
        b"[DONE]",
    )
    out, _ = translate(Kind.GENERATE, True, engine)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["response"] for line in lines] == ["a", ""] and "message" not in lines[0]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 2  # timings win over usage


def test_native_completion_events() -> None:
    call = requests.generate({"model": "m", "prompt": "x", "raw": True})
    translator = answers.translator(call, 0, AnswerStats())
    out = translator.chunk(sse({"content": "a", "stop": False}, {"content": "", "stop": True, "stop_type": "limit",
                                                                  "timings": TIMINGS}))  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["response"] for line in lines] == ["a", ""] and lines[-1]["done_reason"] == "length"
    assert translator.flush() == b""  # the last line went once


def test_engine_errors_and_broken_streams() -> None:
    failing = sse(chunk({"content": "a"}), {"error": {"code": 500, "message": "boom", "type": "server_error"}})
    out, stats = translate(Kind.CHAT, True, failing)
    assert json.loads(out.splitlines()[-1]) == {"error": "boom"} and stats.stream_error == 500
    with pytest.raises(GatewayError) as caught:  # not streamed: the error keeps its status
        translate(Kind.CHAT, False, b'{"error": {"code": 400, "message": "boom", "type": "invalid_request_error"}}')
    assert caught.value.message == "boom" and caught.value.status == 400
    cut = sse(chunk({"content": "a"}))  # no finish: the relay adds the error line
    out, _ = translate(Kind.CHAT, True, cut)
    assert [json.loads(line)["done"] for line in out.splitlines()] == [False]
    for broken in (WHOLE[: len(WHOLE) // 2], b"[1]", b'{"choices": []}'):
        with pytest.raises(GatewayError):
            translate(Kind.CHAT, False, broken)
    bad_args = sse(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{oops"}}]}, "tool_calls"))
    out, _ = translate(Kind.CHAT, True, bad_args + sse(b"[DONE]"))
    assert "invalid tool call arguments" in json.loads(out.splitlines()[-1])["error"]


def test_embeddings_answers() -> None:
    engine = json.dumps(
        {"data": [{"index": 1, "embedding": [0.0, 1.0, 0.0]}, {"index": 0, "embedding": [3.0, 4.0, 12.0]}],
         "usage": {"prompt_tokens": 7}}
    ).encode()  # fmt: skip
    call = requests.embed({"model": "e", "input": ["a", "b"], "dimensions": 2})
    answer = json.loads(answers.translator(call, 0, AnswerStats()).body(engine))
    assert answer["embeddings"] == [[0.6, 0.8], [0.0, 1.0]] and answer["prompt_eval_count"] == 7
    legacy = requests.embeddings({"model": "e", "prompt": "a"})
    assert json.loads(answers.translator(legacy, 0, AnswerStats()).body(engine)) == {"embedding": [3.0, 4.0, 12.0]}
    with pytest.raises(GatewayError):
        answers.translator(call, 0, AnswerStats()).body(b'{"data": 3}')


# ----------------------------------------------------------------------------- model details


def test_human_numbers_as_ollama_writes_them() -> None:
    assert [models.human_number(n) for n in (268_098_176, 8_030_261_248, 7_000_000_000, 1_500, 999)] == [
        "268.10M", "8.0B", "7B", "2K", "999",
    ]  # fmt: skip


def model_file(metadata: dict[str, Any], lengths: dict[str, int] | None = None) -> ModelFile:
    return ModelFile("/m.gguf", 10, 1.0, 3, metadata, lengths or {}, 10, 1234)


def test_model_info_caps_the_context_and_hides_long_arrays() -> None:
    info = model_file(
        {"general.architecture": "qwen3", "general.name": "Q", "qwen3.context_length": 40960,
         "tokenizer.ggml.tokens": ["a"] * 64, "tokenizer.chat_template": "x", "general.tags": ["a", "b"],
         "qwen3.rope.freq_base": math.nan},
        {"tokenizer.ggml.tokens": 151_000, "general.tags": 2},
    )  # fmt: skip
    shown = models.model_info(info, 8192)
    assert shown["qwen3.context_length"] == 8192 and shown["tokenizer.ggml.tokens"] == []
    assert shown["general.tags"] == ["a", "b"] and shown["general.parameter_count"] == 1234
    assert "general.name" not in shown and "tokenizer.chat_template" not in shown
    assert shown["qwen3.rope.freq_base"] is None
    json.dumps(shown, allow_nan=False)
    assert models.model_info(model_file({"general.architecture": "x", "x.context_length": 2048}), 8192)[
        "x.context_length"
    ] == 2048  # fmt: skip


def test_a_huge_keep_alive_is_refused_at_once() -> None:
    for text in ("5" * 1_000_000 + "x", "1s" * 500_000, "." * 1_000_000):
        with pytest.raises(BadRequest, match="invalid duration"):
            parse_keep_alive(text)


def test_load_duration_leaves_out_the_engines_own_time() -> None:
    """A whole answer's head comes once the engine is done: its prompt and generation times are
    not load time (a stream's head comes before them)."""
    call = requests.chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False})
    arrived = time.monotonic_ns() - 50_000_000
    answer = json.loads(answers.translator(call, arrived, AnswerStats()).body(WHOLE))
    engine = answer["prompt_eval_duration"] + answer["eval_duration"]
    assert answer["load_duration"] + engine <= answer["total_duration"]  # not the whole wait for the head
