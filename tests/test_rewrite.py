"""ModelRewriter: the model name clients get back, rewritten on whole SSE events only."""

from __future__ import annotations

from llmgw.api import ModelRewriter


def test_model_rewriter_holds_back_an_event_that_has_not_ended() -> None:
    rewriter = ModelRewriter("alias")
    assert rewriter.chunk(b'data: {"mod') == b""  # it once let the first 3 bytes through
    assert rewriter.chunk(b'el":"/x.gguf"}\n\ndata: {"model"') == b'data: {"model":"alias"}\n\n'
    assert rewriter.chunk(b':"/x.gguf"}\r\n\r\n') == b'data: {"model":"alias"}\r\n\r\n'
