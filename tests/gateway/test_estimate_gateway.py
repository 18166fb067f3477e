"""The memory estimate through a gateway: fake engines whose -m is a real (tiny) GGUF file, so
the gateway reads its header and places a variant never measured by its estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from conftest import chat_body, events_of, post, running

BUDGET = 400  # MiB: room for both estimates (~125 MiB each), not for one engine plus a whole budget


def tiny_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(4096)
    writer.add_block_count(2)
    writer.add_embedding_length(640)
    writer.add_feed_forward_length(2048)
    writer.add_head_count(4)
    writer.add_head_count_kv(1)
    writer.add_tensor("token_embd.weight", np.zeros((1024,), dtype=np.float32))
    for il in range(2):
        writer.add_tensor(f"blk.{il}.attn_q.weight", np.zeros((256,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def test_a_variant_never_measured_is_placed_by_its_estimate(
    start_gateway: Any, make_model: Any, http: Any, tmp_path: Path
) -> None:
    model_file = str(tiny_gguf(tmp_path / "tiny.gguf"))
    a = make_model("a", [2048], extra_args=["-m", model_file])
    b = make_model("b", [2048], extra_args=["-m", model_file])
    gw = await start_gateway([a, b], max_engines=2, memory_budget=BUDGET)
    manager = gw.server.services.manager
    await manager.learn_estimates()  # the gateway does this in the background at start; here: done
    for m in (a, b):
        resp = await post(http, gw.url + "/v1/chat/completions", chat_body(m.name))
        assert resp.code == 200, resp.body
    # Without the estimate, b (never measured) would take the whole budget and stop a.
    assert events_of(a, "exit") == [] and [len(events_of(m, "start")) for m in (a, b)] == [1, 1]
    engines = {engine["model"]: engine for engine in (await running(http, gw))["engines"]}
    for engine in engines.values():
        estimate = engine["memory_estimate_mib"]["total"]
        assert 100 < estimate < 200, engine  # 100 MiB overhead, compute buffers, a few KiB of weights
        assert engine["memory_source"] in ("estimated", "measured"), engine
    config = gw.server.config
    book = manager.memory
    assert book.source(config.models[0], config.models[0].variants[0]) in ("estimated", "measured")


async def test_a_declared_figure_is_never_replaced_by_an_estimate(
    start_gateway: Any, make_model: Any, http: Any, tmp_path: Path
) -> None:
    model_file = str(tiny_gguf(tmp_path / "tiny.gguf"))
    a = make_model("a", [2048], extra_args=["-m", model_file], variant_extra={2048: {"memory": 50}})
    gw = await start_gateway([a], max_engines=2, memory_budget=BUDGET)
    await gw.server.services.manager.learn_estimates()
    resp = await post(http, gw.url + "/v1/chat/completions", chat_body("a"))
    assert resp.code == 200, resp.body
    (engine,) = (await running(http, gw))["engines"]
    assert engine["memory_source"] == "declared" and engine["memory_mib"] == {"total": 50.0}
    assert engine["memory_estimate_mib"] is None
