"""The slot cache through the gateway, with fake engines: saved before a stop, restored before the
first request to the next engine of the model, and every failure logged and gone around (the
request always succeeds). The fake reports restored tokens as cached (timings.cache_n)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Gateway, events_of, post, running
from llmgw.server import GatewayServer

CHAT = "/v1/chat/completions"
WORDS = 300  # a conversation long enough to be worth keeping


def conversation(words: int = WORDS, tag: str = "w") -> list[dict[str, Any]]:
    return [{"role": "user", "content": " ".join(f"{tag}{i}" for i in range(words))}]


async def chat(http: Any, gw: Gateway, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    resp = await post(http, gw.url + CHAT, {"model": model, "messages": messages, "max_tokens": 4, **extra})
    assert resp.code == 200, resp.body
    return dict(json.loads(resp.body))


async def next_turn(http: Any, gw: Gateway, model: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send the conversation, return it with the answer and a new question appended."""
    answer = (await chat(http, gw, model, messages))["choices"][0]["message"]["content"]
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]


def slot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def files_of(directory: Path, model: str) -> list[Path]:
    """The slot files the sidecars say belong to ``model``."""
    return [p.with_suffix(".bin") for p in directory.glob("*.json") if json.loads(p.read_text())["model"] == model]


def metric(gw: Gateway, name: str, **labels: str) -> float:
    return gw.server.services.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "slots"


async def test_a_conversation_survives_a_swap(start_gateway, make_model, http, cache_dir: Path) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir), "max_mb": 10})
    convo = await next_turn(http, gw, "a", conversation())
    assert (await chat(http, gw, "b", conversation(10)))["timings"]["cache_n"] == 0  # switch: a's slot is saved
    [saved] = events_of(a, "slot_save")
    assert saved["tokens"] > WORDS and len(slot_files(cache_dir)) == 2  # the slot file and its sidecar
    answer = await chat(http, gw, "a", convo)  # a new engine of a: its slot comes back first
    [restored] = events_of(a, "slot_restore")
    assert restored["tokens"] == saved["tokens"]
    assert answer["timings"]["cache_n"] == saved["tokens"]  # the engine did not process them again
    assert answer["timings"]["prompt_n"] < 10
    assert metric(gw, "llmgw_slot_cache_restores_total", model="a", result="hit") == 1
    assert metric(gw, "llmgw_slot_cache_saves_total", model="a", result="saved") == 1
    assert metric(gw, "llmgw_slot_cache_tokens_reused_total", model="a") == saved["tokens"]
    assert metric(gw, "llmgw_slot_cache_saved_seconds_total", model="a") > 0
    assert metric(gw, "llmgw_slot_cache_files", model="a") == 1
    [file] = files_of(cache_dir, "a")
    assert metric(gw, "llmgw_slot_cache_bytes", model="a") == file.stat().st_size
    pid = (await running(http, gw))["engines"][0]["pid"]
    command = psutil.Process(pid).cmdline()
    assert command[command.index("--slot-save-path") + 1] == str(cache_dir)


async def test_the_restore_comes_before_the_request(start_gateway, make_model, http, cache_dir) -> None:
    # A short conversation in a large context: the request would be sent while it is counted,
    # but not to a new engine that may take a saved slot first.
    a, b = make_model("a", [8192]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation(100))
    await chat(http, gw, "b", conversation(10))
    answer = await chat(http, gw, "a", convo)
    assert answer["timings"]["cache_n"] > 100


async def test_a_small_variant_slot_restores_into_the_larger_one(start_gateway, make_model, http, cache_dir) -> None:
    a, b = make_model("a", [1024, 4096]), make_model("b", [1024])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    bigger = [*convo, {"role": "user", "content": " ".join(f"x{i}" for i in range(800))}]
    answer = await chat(http, gw, "a", bigger)
    # The small variant counts, the large one answers (no tokenizer of its own to pick it first).
    assert [e["n_ctx"] for e in events_of(a, "start")] == [1024, 1024, 4096]
    [saved], [restored] = events_of(a, "slot_save"), events_of(a, "slot_restore")
    assert restored["tokens"] == saved["tokens"] and answer["timings"]["cache_n"] == saved["tokens"]


async def test_without_slot_cache_nothing_is_saved(start_gateway, make_model, http) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b])
    await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    await chat(http, gw, "a", conversation())
    assert not events_of(a, "slot_save") and not events_of(a, "slot_restore")
    assert "--slot-save-path" not in gw.config.models[0].variants[0].launch_args


async def test_a_restore_only_happens_on_a_new_engine(start_gateway, make_model, http, cache_dir) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    convo = await next_turn(http, gw, "a", convo)
    await chat(http, gw, "a", convo)  # the engine's own cache from here on
    await chat(http, gw, "a", conversation(50, "other"))
    assert len(events_of(a, "slot_restore")) == 1
    assert metric(gw, "llmgw_slot_cache_restores_total", model="a", result="miss") == 0


async def test_a_prompt_that_shares_nothing_gets_no_restore(start_gateway, make_model, http, cache_dir) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    answer = await chat(http, gw, "a", conversation(100, "z"))
    assert not events_of(a, "slot_restore") and answer["timings"]["cache_n"] == 0
    assert metric(gw, "llmgw_slot_cache_restores_total", model="a", result="miss") == 1


async def test_two_slots_each_get_their_conversation_back(start_gateway, make_model, http, cache_dir) -> None:
    a = make_model("a", [4096], extra_args=["-np", "2"])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    first = await next_turn(http, gw, "a", conversation(300, "p"))
    second = await next_turn(http, gw, "a", conversation(300, "q"))
    await chat(http, gw, "b", conversation(10))
    assert sorted(e["slot"] for e in events_of(a, "slot_save")) == [0, 1]
    answers = [await chat(http, gw, "a", convo) for convo in (second, first)]
    restores = events_of(a, "slot_restore")
    assert sorted(e["slot"] for e in restores) == [0, 1]  # each into a slot of its own
    assert all(answer["timings"]["cache_n"] > 300 for answer in answers)


async def test_messages_without_tokens_take_the_latest_slot(start_gateway, make_model, http, cache_dir) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    resp = await post(http, gw.url + "/v1/messages", {"model": "a", "max_tokens": 4, "messages": convo})
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["usage"]["cache_read_input_tokens"] > WORDS
    assert len(events_of(a, "slot_restore")) == 1


async def test_slots_survive_a_gateway_restart(start_gateway, make_model, http, cache_dir, tmp_path) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await gw.server.stop(grace=1.0)  # shutdown stops the engine: its slot is saved
    assert len(events_of(a, "slot_save")) == 1
    again = GatewayServer(gw.config)
    await again.start()
    try:
        answer = await chat(http, Gateway(again, gw.port, gw.config), "a", convo)
    finally:
        await again.stop(grace=1.0)
    assert answer["timings"]["cache_n"] > WORDS


async def test_the_budget_keeps_the_most_recently_used(start_gateway, make_model, http, cache_dir) -> None:
    # ~1.2 MB per slot file, 2 MB of budget: one file fits.
    extra = ["--fake-slot-bytes-per-token", "4000"]
    a, b = make_model("a", [2048], extra_args=extra), make_model("b", [2048], extra_args=extra)
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir), "max_mb": 2})
    await next_turn(http, gw, "a", conversation())
    convo_b = await next_turn(http, gw, "b", conversation())  # a saved
    await chat(http, gw, "a", conversation(5, "x"))  # b saved, a's file evicted
    assert len(slot_files(cache_dir)) == 2
    assert metric(gw, "llmgw_slot_cache_evictions_total", model="a") == 1
    assert sum(p.stat().st_size for p in cache_dir.iterdir()) <= 2 * 1024 * 1024
    answer = await chat(http, gw, "b", convo_b)
    assert answer["timings"]["cache_n"] > WORDS


async def test_a_full_disk_keeps_nothing_and_fails_nothing(start_gateway, make_model, http, cache_dir) -> None:
    a = make_model("a", [2048], extra_args=["--fake-slot-disk-full"])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    assert slot_files(cache_dir) == []  # the half-written file is gone
    assert (await chat(http, gw, "a", convo))["timings"]["cache_n"] == 0
    assert metric(gw, "llmgw_slot_cache_saves_total", model="a", result="error") == 1


@pytest.mark.parametrize("damage", ["corrupt", "refused"])
async def test_a_bad_file_or_a_refusing_engine_is_gone_around(
    start_gateway, make_model, http, cache_dir, damage: str
) -> None:
    a = make_model("a", [2048], extra_args=["--fake-slot-refuse-restore"] if damage == "refused" else [])
    b = make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    if damage == "corrupt":
        [slot_file] = [p for p in cache_dir.iterdir() if p.suffix == ".bin"]
        size = slot_file.stat().st_size
        slot_file.write_bytes(b"GGUF" + os.urandom(size - 4))  # same size: only the engine can tell
    answer = await chat(http, gw, "a", convo)
    assert answer["timings"]["cache_n"] == 0
    assert metric(gw, "llmgw_slot_cache_restores_total", model="a", result="error") == 1
    # A file the engine refuses is of no use: removed (b's own, saved when a came back, stays).
    assert metric(gw, "llmgw_slot_cache_files", model="a") == 0 and len(slot_files(cache_dir)) == 2


async def test_corrupt_cache_files_at_start_are_ignored(start_gateway, make_model, http, cache_dir) -> None:
    cache_dir.mkdir()
    (cache_dir / f"{'a' * 16}-{'b' * 12}.json").write_text("{broken")
    (cache_dir / f"{'a' * 16}-{'b' * 12}.bin").write_bytes(b"\x00" * 10)
    (cache_dir / f".tmp-{'a' * 16}-{'c' * 12}.bin").write_bytes(b"half")
    gw = await start_gateway([make_model("a", [2048])], slot_cache={"dir": str(cache_dir)})
    assert (await chat(http, gw, "a", conversation()))["timings"]["cache_n"] == 0
    assert slot_files(cache_dir) == []


async def test_a_completion_prompt_is_matched_and_a_hint_given_when_nothing_is_reused(
    start_gateway, make_model, http, cache_dir, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    prompt = " ".join(f"w{i}" for i in range(WORDS))
    first = await post(http, gw.url + "/completion", {"model": "a", "prompt": prompt, "n_predict": 2})
    assert first.code == 200
    await chat(http, gw, "b", conversation(10))
    # cache_prompt false: the engine processes everything again, as gemma-3 without --swa-full does.
    body = {"model": "a", "prompt": prompt + " more", "n_predict": 2, "cache_prompt": False}
    again = await post(http, gw.url + "/completion", body)
    assert again.code == 200 and json.loads(again.body)["timings"]["cache_n"] == 0
    assert len(events_of(a, "slot_restore")) == 1
    assert "need --swa-full" in caplog.text


async def test_a_slot_the_engine_has_used_is_never_overwritten(start_gateway, make_model, http, cache_dir) -> None:
    a, b = make_model("a", [2048]), make_model("b", [2048])
    gw = await start_gateway([a, b], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await chat(http, gw, "b", conversation(10))
    await chat(http, gw, "a", conversation(100, "z"))  # the new engine's first request: nothing saved fits
    await chat(http, gw, "a", convo)  # the slot now holds that request's cache: no restore over it
    assert not events_of(a, "slot_restore")
    assert metric(gw, "llmgw_slot_cache_restores_total", model="a", result="miss") == 1


async def test_an_idle_unload_and_a_reload_save_too(start_gateway, make_model, http, cache_dir, tmp_path) -> None:
    from conftest import wait_for, write_config

    a = make_model("a", [2048], model_extra={"engine_idle_timeout": 0.5})
    gw = await start_gateway([a], slot_cache={"dir": str(cache_dir)})
    convo = await next_turn(http, gw, "a", conversation())
    await wait_for(lambda: len(events_of(a, "slot_save")) == 1, what="the idle engine's slot to be saved")
    await wait_for(lambda: not gw.server.services.manager.engines, what="the idle engine to stop")
    convo = await next_turn(http, gw, "a", convo)  # restored: its new engine starts from the saved slot
    assert len(events_of(a, "slot_restore")) == 1
    # A reload that changes only the threads (not the KV cache) restarts the engine; the slot
    # is saved on the way and fits the new launch.
    a.extra_args = ["-t", "3"]
    changed = write_config(
        tmp_path / "config.lua", [a], gw.port, slot_cache={"dir": str(cache_dir)}, engine_idle_timeout=0
    )
    await gw.server.reload(changed)
    assert len(events_of(a, "slot_save")) == 2
    assert (await chat(http, gw, "a", convo))["timings"]["cache_n"] > WORDS
    assert len(events_of(a, "slot_restore")) == 2
