"""Ollama's native API with the official ``ollama`` client (its AsyncClient, on the gateway's own
loop) against fake engines: every route, streamed and not, thinking, tool calls, load and unload,
keep_alive, num_ctx, and the errors as Ollama's clients read them."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import ollama
import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import FakeModel, Gateway, events_of, get, post, wait_until

THINKING = ["--fake-reasoning", "2"]
TOOLS = ["--fake-tool-calls"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens for the fake: <|user|> hi there <|assistant|> + BOS


def client(gw: Gateway) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=gw.url, timeout=60)


class GgufModel(FakeModel):
    """A fake engine started with ``-m`` a real (tiny) GGUF file: what /api/show reads."""

    gguf_path: str = ""

    def variant(self, ctx: int) -> dict[str, Any]:
        entry = super().variant(ctx)
        args = entry["args"]
        args[args.index("-m") + 1] = self.gguf_path
        entry["args"] = [*args, "--alias", self.name]
        return entry


def write_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_context_length(131072)
    writer.add_block_count(2)
    writer.add_string("general.license", "apache-2.0")
    writer.add_token_list([f"t{i}" for i in range(300)])
    writer.add_uint32("tokenizer.ggml.fim_pre_token_id", 5)
    writer.add_uint32("tokenizer.ggml.fim_suf_token_id", 6)
    writer.add_chat_template("{% if tools %}{{ tools }}{% endif %}{% if enable_thinking %}<think>{% endif %}")
    writer.add_tensor("a.weight", np.zeros((1000, 1500), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def ps_names(c: ollama.AsyncClient) -> dict[str, Any]:
    return {m.model: m for m in (await c.ps()).models}


# ----------------------------------------------------------------------------- read-only routes


async def test_liveness_version_and_heads(start_gateway, make_model, http: AsyncHTTPClient) -> None:
    gw = await start_gateway([make_model("m", [2048])], ollama_version="0.13.1", api_keys=["k"])
    root = await get(http, gw.url + "/")
    assert root.code == 200 and root.body == b"Ollama is running"
    assert (await http.fetch(gw.url + "/", method="HEAD", raise_error=False)).code == 200
    version = await get(http, gw.url + "/api/version")  # public, as a liveness probe
    assert version.code == 200 and json.loads(version.body) == {"version": "0.13.1"}
    assert (await http.fetch(gw.url + "/api/version", method="HEAD", raise_error=False)).code == 200
    head = await get(http, gw.url + "/api/tags", method="HEAD", headers={"Authorization": "Bearer k"})
    assert head.code == 200 and head.body == b""
    tags = await get(http, gw.url + "/api/tags")  # the rest needs the key, answered in Ollama's shape
    assert tags.code == 401 and isinstance(json.loads(tags.body)["error"], str)
    keyed = ollama.AsyncClient(host=gw.url, headers={"Authorization": "Bearer k"})
    assert [m.model for m in (await keyed.list()).models] == ["m:latest"]


async def test_tags_show_and_ps_from_the_gguf_header(start_gateway, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    model = GgufModel("tiny", [2048, 8192], events=tmp_path / "events.jsonl", model_extra={"aliases": ["t"]})
    model.gguf_path = str(path)
    plain = FakeModel("plain", [1024], events=tmp_path / "plain.jsonl")
    gw = await start_gateway([model, plain])
    c = client(gw)
    listed = {m.model: m for m in (await c.list()).models}
    assert set(listed) == {"tiny:latest", "t:latest", "plain:latest"}  # aliases too (list_aliases)
    tiny = listed["tiny:latest"]
    assert tiny.size == path.stat().st_size
    assert len(tiny.digest) == 64 and int(tiny.digest, 16) >= 0
    assert tiny.modified_at == datetime.datetime.fromtimestamp(int(path.stat().st_mtime), datetime.UTC).replace(
        microsecond=tiny.modified_at.microsecond
    )
    details = tiny.details
    assert (details.format, details.family, details.families) == ("gguf", "llama", ["llama"])
    assert (details.parameter_size, details.quantization_level) == ("1.50M", "Q8_0")

    shown = await c.show("tiny:latest")
    info = shown.modelinfo
    assert info["general.architecture"] == "llama" and "general.name" not in info
    assert info["llama.context_length"] == 8192  # the largest variant's, not the 131072 it was trained for
    assert info["general.parameter_count"] == 1_500_000
    assert info["tokenizer.ggml.tokens"] == []  # long arrays are left out, as Ollama does
    assert set(shown.capabilities) == {"completion", "tools", "thinking", "insert"}
    assert shown.license == "apache-2.0" and "enable_thinking" in shown.template
    assert shown.parameters.split() == ["num_ctx", "8192"]
    assert (await c.show("t")).capabilities == shown.capabilities  # an alias, without its tag

    # A model whose file cannot be read still answers every route (Copilot drops its whole list otherwise).
    fallback = await c.show("plain")
    assert fallback.capabilities == ["completion"] and fallback.modelinfo["unknown.context_length"] == 1024
    assert listed["plain:latest"].details.family == "" and listed["plain:latest"].size == 0

    assert (await c.ps()).models == []
    await c.chat(model="tiny", messages=HI)
    running = await ps_names(c)
    assert list(running) == ["tiny:latest"]
    entry = running["tiny:latest"]
    assert entry.context_length == 2048 and entry.size > 0 and entry.size_vram == 0
    assert entry.digest == tiny.digest and entry.details.family == "llama"
    assert entry.expires_at.year > 2200  # no idle timeout: never


async def test_show_errors(start_gateway, make_model, http: AsyncHTTPClient) -> None:
    gw = await start_gateway([make_model("m", [2048])])
    c = client(gw)
    with pytest.raises(ollama.ResponseError) as caught:
        await c.show("nope")
    assert caught.value.status_code == 404 and caught.value.error == "model 'nope' not found"
    missing = await post(http, gw.url + "/api/show", {})
    assert missing.code == 400 and json.loads(missing.body) == {"error": "model is required"}
    empty = await post(http, gw.url + "/api/show", b"")
    assert empty.code == 400 and json.loads(empty.body) == {"error": "missing request body"}


# ----------------------------------------------------------------------------- chat and generate


async def test_chat_not_streamed_and_streamed(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "4"])])
    c = client(gw)
    one = await c.chat(model="m:latest", messages=HI, stream=False)
    assert one.model == "m:latest" and one.message.role == "assistant"
    assert one.message.content == "tok0 tok1 tok2 tok3" and one.message.thinking is None
    assert one.done and one.done_reason == "stop"
    assert (one.prompt_eval_count, one.eval_count) == (5, 4)
    for duration in (one.total_duration, one.load_duration, one.prompt_eval_duration, one.eval_duration):
        assert isinstance(duration, int) and duration > 0
    assert one.total_duration >= one.load_duration

    parts = [part async for part in await c.chat(model="m", messages=HI, stream=True)]
    assert [p.message.content for p in parts] == ["tok0", " tok1", " tok2", " tok3", ""]
    assert all(p.message.role == "assistant" and p.model == "m" for p in parts)
    assert [p.done for p in parts] == [False] * 4 + [True]
    last = parts[-1]
    assert last.done_reason == "stop" and last.eval_count == 4 and last.prompt_eval_count == 5

    limited = await c.chat(model="m", messages=HI, options={"num_predict": 2, "temperature": 0, "seed": 1, "stop": "x"})
    assert limited.message.content == "tok0 tok1" and limited.done_reason == "length" and limited.eval_count == 2
    # The history (and a key's usage) has the engine's token counts, streamed or not.
    history = json.loads((await get(http, gw.url + "/api/requests")).body)["requests"]
    assert [(r["route"], r["stream"], r["prompt_tokens"], r["generated_tokens"]) for r in history[:3]] == [
        ("/api/chat", False, 5, 2), ("/api/chat", True, 5, 4), ("/api/chat", False, 5, 4),
    ]  # fmt: skip


async def test_streams_are_ndjson_by_default_and_one_object_when_not(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "3"])])
    streamed = await post(http, gw.url + "/api/chat", {"model": "m", "messages": HI})  # no "stream": true
    assert streamed.code == 200 and streamed.headers["Content-Type"] == "application/x-ndjson"
    assert streamed.body.endswith(b"\n") and b"\n\n" not in streamed.body and b"data:" not in streamed.body
    lines = streamed.body.decode().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["model"] == "m" for line in lines)
    assert all(" " not in line.partition('"content"')[0] for line in lines)  # compact
    whole = await post(http, gw.url + "/api/generate", {"model": "m", "prompt": "a b", "stream": False})
    assert whole.code == 200 and whole.headers["Content-Type"].startswith("application/json")
    answer = json.loads(whole.body)  # one document
    assert answer["response"] == "tok0 tok1 tok2" and answer["done"] is True and "message" not in answer


async def test_thinking_is_forwarded_and_dropped_when_think_is_false(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=[*THINKING, "--fake-tokens", "2"])])
    c = client(gw)
    one = await c.chat(model="m", messages=HI)
    assert one.message.thinking == "think0 think1" and one.message.content == "tok0 tok1"
    parts = [p async for p in await c.chat(model="m", messages=HI, stream=True, think=True)]
    assert [p.message.thinking for p in parts[:2]] == ["think0", " think1"]
    assert all(p.message.content == "" for p in parts[:2])
    assert "".join(p.message.content for p in parts) == "tok0 tok1"
    quiet = await c.chat(model="m", messages=HI, think=False)
    assert quiet.message.thinking is None and quiet.message.content == "tok0 tok1"
    generated = await c.generate(model="m", prompt="a b")
    assert generated.thinking == "think0 think1" and generated.response == "tok0 tok1"


async def test_tool_calls_come_once_with_object_arguments(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [4096], extra_args=TOOLS)])
    c = client(gw)
    question = [{"role": "user", "content": "the weather in Paris?"}]
    one = await c.chat(model="m", messages=question, tools=[WEATHER])
    [call] = one.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "tok0"}
    assert one.done_reason == "stop"
    parts = [p async for p in await c.chat(model="m", messages=question, tools=[WEATHER], stream=True)]
    calls = [call for p in parts for call in (p.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.arguments == {"city": "tok0"}
    assert parts[-1].done and not parts[-1].message.tool_calls  # not repeated in the last line
    # The history goes back as Ollama clients send it: the call's arguments an object, the
    # result with tool_name and no tool_call_id.
    history = [
        *question,
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"sky": "blue"}', "tool_name": "get_weather"},
    ]  # fmt: skip
    follow = await c.chat(model="m", messages=history)  # no tools: plain text
    plain = await c.chat(model="m", messages=question)
    assert follow.message.content.startswith("tok0") and follow.prompt_eval_count > plain.prompt_eval_count + 5


async def test_generate_templated_raw_and_suffix(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-infill", "--fake-tokens", "3"])])
    c = client(gw)
    templated = await c.generate(model="m", prompt="once upon", system="be brief")
    assert templated.response == "tok0 tok1 tok2" and templated.done_reason == "stop"
    assert templated.prompt_eval_count == 8  # <|system|> be brief <|user|> once upon <|assistant|> + BOS
    raw = await c.generate(model="m", prompt="once upon", raw=True, options={"num_predict": 2})
    assert raw.response == "tok0 tok1" and raw.done_reason == "length" and raw.prompt_eval_count == 3
    parts = [p async for p in await c.generate(model="m", prompt="once", raw=True, stream=True)]
    assert [p.response for p in parts] == ["tok0", " tok1", " tok2", ""] and parts[-1].done
    filled = await c.generate(model="m", prompt="def f(", suffix="return x")
    assert filled.response == "tok0 tok1 tok2" and filled.done
    with pytest.raises(ollama.ResponseError) as caught:
        await c.generate(model="m", prompt="x", raw=True, system="s")
    assert caught.value.status_code == 400
    assert caught.value.error == "raw mode does not support template, system, or context"


async def test_embed_and_the_older_embeddings(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("e", [2048], extra_args=["--embeddings", "--fake-embedding-dim", "16"])])
    c = client(gw)
    both = await c.embed(model="e", input=["a b", "c"])
    assert len(both.embeddings) == 2 and all(len(v) == 16 for v in both.embeddings)
    assert both.prompt_eval_count == 5 and both.model == "e"
    assert math.isclose(math.hypot(*both.embeddings[0]), 1.0, rel_tol=1e-6)  # llama-server normalises
    short = await c.embed(model="e", input="a b", dimensions=4)
    assert len(short.embeddings[0]) == 4 and math.isclose(math.hypot(*short.embeddings[0]), 1.0, rel_tol=1e-6)
    assert short.embeddings[0] != both.embeddings[0][:4]  # cut, then normalised again
    assert (await c.embed(model="e", input=[])).embeddings == []
    legacy = await c.embeddings(model="e", prompt="a b")
    assert len(legacy.embedding) == 16
    assert not math.isclose(math.hypot(*legacy.embedding), 1.0, rel_tol=1e-3)  # not normalised, as Ollama's
    assert (await c.embeddings(model="e", prompt="")).embedding == []


# ----------------------------------------------------------------------------- load, unload, keep_alive, num_ctx


async def test_empty_requests_load_and_keep_alive_zero_unloads(start_gateway, make_model) -> None:
    m = make_model("m", [2048])
    gw = await start_gateway([m])
    c = client(gw)
    loaded = await c.chat(model="m")
    assert loaded.done_reason == "load" and loaded.message.content == ""
    assert list(await ps_names(c)) == ["m:latest"]
    assert (await c.generate(model="m", keep_alive=0)).done_reason == "unload"
    assert await ps_names(c) == {}
    assert (await c.generate(model="m")).done_reason == "load"
    assert (await c.chat(model="m", keep_alive="0s")).done_reason == "unload"
    assert (await c.chat(model="m", keep_alive="0s")).done_reason == "unload"  # nothing runs: still fine
    assert events_of(m, "request") == []  # loads and unloads send the engine nothing
    assert (await c.generate(model="m", keep_alive="-1s")).done_reason == "load"
    assert (await ps_names(c))["m:latest"].expires_at.year > 2200


async def test_keep_alive_on_a_request(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "2"])], engine_idle_timeout=600)
    c = client(gw)
    await c.chat(model="m", messages=HI, keep_alive="5m")
    expires = (await ps_names(c))["m:latest"].expires_at
    left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert 200 < left <= 300  # the request's 5 minutes, not the configured 10
    answer = await c.chat(model="m", messages=HI, keep_alive=0)  # served, then unloaded
    assert answer.message.content == "tok0 tok1"
    await wait_until(lambda: _nothing_runs(c), "the engine to stop after a keep_alive 0 request")
    await c.chat(model="m", messages=HI, keep_alive=0.5)
    await wait_until(lambda: _nothing_runs(c), "the engine to stop 0.5 s after its request")


async def _nothing_runs(c: ollama.AsyncClient) -> bool:
    return (await c.ps()).models == []


async def test_num_ctx_asks_for_at_least_that_context(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [2048, 8192])])
    c = client(gw)
    await c.chat(model="m", messages=HI)
    assert (await ps_names(c))["m:latest"].context_length == 2048
    await c.chat(model="m", messages=HI, options={"num_ctx": 3000})
    assert (await ps_names(c))["m:latest"].context_length == 8192
    await c.chat(model="m", keep_alive=0)
    # More than any variant has (Home Assistant sends num_ctx on every call): the largest, no error.
    await c.chat(model="m", messages=HI, options={"num_ctx": 100_000})
    assert (await ps_names(c))["m:latest"].context_length == 8192
    await c.chat(model="m", keep_alive=0)
    assert (await c.chat(model="m", options={"num_ctx": 3000})).done_reason == "load"
    assert (await ps_names(c))["m:latest"].context_length == 8192


async def test_requests_are_counted_like_the_openai_routes(start_gateway, make_model) -> None:
    gw = await start_gateway([make_model("m", [256, 4096])])
    c = client(gw)
    long = [{"role": "user", "content": " ".join(f"w{i}" for i in range(300))}]
    answer = await c.chat(model="m", messages=long, options={"num_predict": 4})
    assert answer.prompt_eval_count == 303 and (await ps_names(c))["m:latest"].context_length == 4096
    with pytest.raises(ollama.ResponseError) as caught:
        await c.chat(model="m", messages=[{"role": "user", "content": "w " * 5000}], options={"num_predict": 4})
    assert caught.value.status_code == 400 and "largest variant has 4096" in caught.value.error


# ----------------------------------------------------------------------------- errors


async def test_errors_in_ollama_shape(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048]), make_model("e", [2048], extra_args=["--embeddings"])])
    c = client(gw)
    with pytest.raises(ollama.ResponseError) as caught:
        async for _ in await c.chat(model="nope:latest", messages=HI, stream=True):
            pass
    assert caught.value.status_code == 404 and caught.value.error == "model 'nope:latest' not found"
    with pytest.raises(ollama.ResponseError) as caught:
        await c.embed(model="nope", input="a")
    assert caught.value.error == 'model "nope" not found, try pulling it first'
    cases = [
        ("/api/chat", b"", "missing request body"),
        ("/api/chat", b"{nope", None),
        ("/api/chat", {"messages": HI}, "model is required"),
        ("/api/chat", {"model": "m", "messages": HI, "options": {"temperature": "hot"}},
         'option "temperature" must be of type float32'),
        ("/api/chat", {"model": "m", "messages": HI, "options": {"top_k": "many"}},
         'option "top_k" must be of type integer'),
        ("/api/chat", {"model": "m", "messages": HI, "options": {"stop": [1]}},
         'option "stop" must be of an array of strings'),
        ("/api/chat", {"model": "m", "messages": HI, "keep_alive": "abc"}, 'time: invalid duration "abc"'),
        ("/api/chat", {"model": "m", "messages": HI, "format": "yaml"},
         'invalid format: "yaml"; expected "json" or a valid JSON Schema object'),
        ("/api/chat", {"model": "m", "messages": HI, "think": "very"},
         'invalid think value: "very" (must be "high", "medium", "low", true, or false)'),
        ("/api/chat", {"model": "m", "messages": "hi"}, "messages must be an array"),
        ("/api/embed", {"model": "e", "input": [1, 2]}, "invalid input type"),
        ("/api/embed", {"model": "m", "input": "a"}, None),  # not an embeddings model: the engine's 501, as a 400
    ]  # fmt: skip
    for path, body, message in cases:
        resp = await post(http, gw.url + path, body)
        assert resp.code == 400, (path, body, resp.code, resp.body)
        error = json.loads(resp.body)["error"]
        assert isinstance(error, str) and error
        if message is not None:
            assert resp.code == 400 and error == message, (body, resp.code, error)
    wrong = await get(http, gw.url + "/api/chat")
    assert wrong.code == 405 and isinstance(json.loads(wrong.body)["error"], str)
    unknown = await get(http, gw.url + "/api/nope")
    assert unknown.code == 404 and isinstance(json.loads(unknown.body)["error"], str)
    watch = await get(http, gw.url + "/api/requests?limit=x")  # the gateway's own /api/ routes keep their shape
    assert not isinstance(json.loads(watch.body).get("error", {}), str)


async def test_model_management_is_the_configs(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048])])
    c = client(gw)
    assert (await c.pull("m")).status == "success"  # already served: nothing to download
    assert (await c.pull("m:latest", stream=False)).status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        await c.pull("other")
    assert caught.value.status_code == 404 and "configuration" in caught.value.error
    for call in (lambda: c.push("m"), lambda: c.create(model="x", from_="m"), lambda: c.copy("m", "x"),
                 lambda: c.delete("m")):  # fmt: skip
        with pytest.raises(ollama.ResponseError) as caught:
            await call()
        assert caught.value.status_code == 501 and "Lua configuration" in caught.value.error
    blob = await http.fetch(gw.url + "/api/blobs/sha256:00", method="HEAD", raise_error=False)
    assert blob.code == 501 and blob.body == b""
    upload = await post(http, gw.url + "/api/blobs/sha256:00", b"x" * 1_000_000)  # refused before it is read
    assert upload.code == 501 and isinstance(json.loads(upload.body)["error"], str)
    pulled = await post(http, gw.url + "/api/pull", {"model": "m", "stream": False})
    assert pulled.code == 200 and json.loads(pulled.body) == {"status": "success"}


async def test_an_engine_failing_mid_stream_ends_the_stream_with_an_error_line(start_gateway, make_model) -> None:
    crashing = make_model("m", [2048], extra_args=["--fake-exit-after-chunks", "2"])
    cut = make_model("cut", [2048], extra_args=["--fake-truncate-body"])  # answers cut before their end
    gw = await start_gateway([crashing, cut], max_engines=2)
    c = client(gw)
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError) as caught:
        async for part in await c.chat(model="m", messages=HI, stream=True):
            seen.append(part.message.content)
    assert caught.value.status_code == -1 and isinstance(caught.value.error, str) and caught.value.error
    assert seen[:1] == ["tok0"]
    assert (await c.chat(model="m", messages=HI)).message.content  # not streamed: a new engine answers
    with pytest.raises(ollama.ResponseError) as caught:  # not streamed and cut short: a real status
        await c.chat(model="cut", messages=HI)
    assert caught.value.status_code == 502 and isinstance(caught.value.error, str)


async def test_loading_progress_enters_an_ollama_stream_only_as_thinking_when_asked(start_gateway, make_model) -> None:
    slow = ["--fake-load-delay", "1.5", "--fake-tokens", "2"]  # the engine answers 503 "Loading model" at first
    quiet = make_model("quiet", [2048], extra_args=slow)  # loading_feedback: the default, "comments"
    asked = make_model("asked", [2048], extra_args=slow, model_extra={"loading_feedback": "reasoning"})
    gw = await start_gateway([quiet, asked], max_engines=2)
    c = client(gw)
    parts = [p async for p in await c.chat(model="quiet", messages=HI, stream=True)]
    assert [p.message.content for p in parts] == ["tok0", " tok1", ""]  # nothing but the answer
    assert all(p.message.thinking is None for p in parts)

    parts = [p async for p in await c.chat(model="asked", messages=HI, stream=True)]  # valid chunks, every one
    progress = [p for p in parts if p.message.thinking]
    assert progress and parts[: len(progress)] == progress  # first, before the answer
    assert "Loading model 'asked'" in progress[0].message.thinking and "Ready after" in progress[-1].message.thinking
    assert all(p.message.content == "" and not p.done for p in progress)
    assert [p.message.content for p in parts[len(progress) :]] == ["tok0", " tok1", ""]
    await c.generate(model="asked", keep_alive=0)
    generated = [p async for p in await c.generate(model="asked", prompt="a b", stream=True)]
    assert generated[0].thinking and generated[0].response == "" and generated[-1].done
    await c.generate(model="asked", keep_alive=0)
    one = await c.chat(model="asked", messages=HI)  # one object: no progress, ever
    assert one.message.content == "tok0 tok1" and one.message.thinking is None


async def test_tagged_names_work_on_the_openai_routes_too(start_gateway, make_model, http) -> None:
    gw = await start_gateway([make_model("m", [2048], extra_args=["--fake-tokens", "1"])])
    for name in ("m:latest", "m:LATEST"):
        resp = await post(http, gw.url + "/v1/chat/completions", {"model": name, "messages": HI})
        assert resp.code == 200 and json.loads(resp.body)["model"] == name
    assert (await post(http, gw.url + "/v1/chat/completions", {"model": "m:7b", "messages": HI})).code == 404


async def test_keys_scope_the_ollama_routes(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048], extra_args=["--fake-tokens", "1"]), make_model("b", [2048])
    keys = {"alice": {"key": "alice-key", "models": ["a"]}, "slow": {"key": "slow-key", "requests_per_minute": 1}}
    gw = await start_gateway([a, b], keys=keys)
    alice = ollama.AsyncClient(host=gw.url, headers={"Authorization": "Bearer alice-key"})
    assert [m.model for m in (await alice.list()).models] == ["a:latest"]
    assert (await alice.chat(model="a", messages=HI)).message.content == "tok0"
    for call in (lambda: alice.show("b"), lambda: alice.chat(model="b", messages=HI), lambda: alice.chat(model="b")):
        with pytest.raises(ollama.ResponseError) as caught:
            await call()
        assert caught.value.status_code == 404 and caught.value.error == "model 'b' not found"  # as unknown
    assert b.read_events() == []
    assert [m.model for m in (await alice.ps()).models] == ["a:latest"]
    slow = ollama.AsyncClient(host=gw.url, headers={"Authorization": "Bearer slow-key"})
    await slow.chat(model="a", messages=HI)
    with pytest.raises(ollama.ResponseError) as caught:
        await slow.chat(model="a", messages=HI)
    assert caught.value.status_code == 429 and isinstance(caught.value.error, str)
    nobody = await get(http, gw.url + "/api/tags")
    assert nobody.code == 401 and isinstance(json.loads(nobody.body)["error"], str)
