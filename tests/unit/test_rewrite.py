"""The model name rewrite on SSE streams: every event's "model" gets the client's name, whole events
only, whatever path (the bulk replace of the engine's own field, or the general one) it takes."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from llmgw.api import ModelRewriter

ENGINE = "/root/.cache/llmgw/gemma-3-270m-q4_k_m.gguf"


def event(model: str, text: str, spaced: bool = False) -> bytes:
    payload = {"choices": [{"delta": {"content": text}}], "model": model, "object": "chat.completion.chunk"}
    separators = (", ", ": ") if spaced else (",", ":")
    return b"data: " + json.dumps(payload, separators=separators).encode() + b"\n\n"


def models_of(stream: bytes) -> list[str]:
    out = []
    for block in stream.split(b"\n\n"):
        if block.startswith(b"data: {"):
            out.append(json.loads(block[6:])["model"])
    return out


def relay(rewriter: ModelRewriter, pieces: list[bytes]) -> bytes:
    return b"".join(rewriter.chunk(piece) for piece in pieces) + rewriter.flush()


def test_every_event_gets_the_client_name_and_text_is_untouched() -> None:
    text = 'he said "model": "x" and \\"model\\": no'
    stream = b"".join(event(ENGINE, text) for _ in range(50))
    out = relay(ModelRewriter("my-alias"), [stream[:70], stream[70:3000], stream[3000:]])
    assert models_of(out) == ["my-alias"] * 50
    assert [json.loads(b[6:])["choices"][0]["delta"]["content"] for b in out.split(b"\n\n") if b] == [text] * 50


def test_an_event_naming_another_model_is_rewritten_too() -> None:
    rewriter = ModelRewriter("client")
    first = relay(rewriter, [event(ENGINE, "a") * 3])  # learns the engine's field
    assert models_of(first) == ["client"] * 3
    mixed = event(ENGINE, "b") + event("other", "c", spaced=True) + event(ENGINE, "d")
    assert models_of(relay(rewriter, [mixed])) == ["client"] * 3
    assert models_of(relay(rewriter, [event("other", "e", spaced=True)])) == ["client"]


def test_nothing_changes_when_the_engine_already_uses_the_client_name() -> None:
    stream = b"".join(event("same", str(i)) for i in range(20))
    assert relay(ModelRewriter("same"), [stream]) == stream


def test_a_cut_event_waits_for_its_end() -> None:
    rewriter = ModelRewriter("client")
    whole = event(ENGINE, "x")
    assert rewriter.chunk(whole[:20]) == b""
    assert models_of(rewriter.chunk(whole[20:])) == ["client"]


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.sampled_from([ENGINE, "other", 'x\\"y', "client"]), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
    spaced=st.booleans(),
)
def test_any_stream_any_cuts(names: list[str], cuts: list[int], spaced: bool) -> None:
    stream = b"".join(event(name, f"t{i}", spaced) for i, name in enumerate(names))
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert models_of(relay(ModelRewriter("client"), pieces)) == ["client"] * len(names)
