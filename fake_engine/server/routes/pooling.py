"""Embeddings and rerank: llama-server's pooling routes, with deterministic vectors and scores."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...fake_llama_tokenize import tokenize
from .. import shapes
from ..bodies import is_token, prompt_ids
from ..errors import bad_request, not_supported, server_error
from ..state import Engine
from .base import BaseHandler
from .generation import new_id

__all__ = ["EmbeddingsHandler", "PoolingHandler", "RerankHandler", "embed"]


def embed(ids: Sequence[int], dim: int, normalize: int) -> list[float]:
    """A deterministic vector: the mean over tokens of per-token crc32 noise in [-1, 1], then
    normalized as ``embd_normalize`` asks (-1 none, 0 max-abs to int16 range, p > 0 the p-norm)."""
    sums = [0.0] * dim
    for token in ids:
        for j in range(dim):
            sums[j] += zlib.crc32(f"{token}:{j}".encode()) / 0x7FFFFFFF - 1.0
    vector = [s / max(1, len(ids)) for s in sums]
    if normalize < 0:
        return vector
    if normalize == 0:
        peak = max((abs(v) for v in vector), default=0.0)
        return [v * 32760 / peak if peak else 0.0 for v in vector]
    norm = sum(abs(v) ** normalize for v in vector) ** (1 / normalize)
    return [v / norm if norm else 0.0 for v in vector]


class PoolingHandler(BaseHandler):
    """Embeddings and rerank: the events, the prompt delay and the physical batch limit."""

    hangs_with_requests = True

    def check_batch(self, prompts: Sequence[Sequence[int]]) -> None:
        """llama-server's 500 for an input over the physical batch (pooling cannot split it)."""
        batch = self.engine.options.physical_batch
        for ids in prompts:
            if len(ids) > batch:
                raise server_error(
                    f"input ({len(ids)} tokens) is too large to process. "
                    f"increase the physical batch size (current batch size: {batch})"
                )

    def model_name(self, body: Mapping[str, Any]) -> str:
        """These routes echo the request's ``model``, unlike generation."""
        model = body.get("model")
        return model if isinstance(model, str) else self.engine.options.served_name

    async def pooled(self, prompts: Sequence[Sequence[int]], answer: Callable[[], Any]) -> None:
        """The life of one pooling request: its events, the batch check, the prompt delay, the answer."""
        request_id = new_id("embd-")
        total = sum(len(ids) for ids in prompts)
        self.engine.events.emit("request", id=request_id, path=self.request.path, stream=False, prompt_tokens=total)
        self.check_batch(prompts)
        if await self.wait_or_closed(self.engine.options.fake_prompt_delay):
            self.engine.events.emit("cancelled", id=request_id, tokens=0)
            return
        data = answer()
        self.engine.events.emit("done", id=request_id, tokens=0)
        self.send_json(data)


class EmbeddingsHandler(PoolingHandler):
    """``/v1/embeddings`` (OpenAI shape for ``input``), ``/embeddings`` and ``/embedding`` (native)."""

    def initialize(self, engine: Engine, oai: bool = False) -> None:
        super().initialize(engine)
        self.oai = oai

    async def post(self) -> None:
        if not self.engine.options.embeddings:
            raise not_supported("This server does not support embeddings. Start it with `--embeddings`")
        body = self.json_body()
        oai = self.oai and "input" in body
        key = "input" if oai or "content" not in body else "content"
        if key not in body:
            raise bad_request('"input" or "content" must be provided')
        prompts = prompt_ids(body[key])
        dim = max(1, self.engine.options.fake_embedding_dim)
        normalize = body.get("embd_normalize", 2)
        normalize = normalize if is_token(normalize) else 2

        def answer() -> Any:
            vectors = [embed(ids, dim, normalize) for ids in prompts]
            if not oai:
                return shapes.embeddings_native(vectors)
            encoded = None
            if body.get("encoding_format") == "base64":
                encoded = [base64.b64encode(struct.pack(f"<{dim}f", *v)).decode() for v in vectors]
            n_tokens = sum(len(ids) for ids in prompts)
            return shapes.embeddings_oai(self.model_name(body), vectors, n_tokens, encoded)

        await self.pooled(prompts, answer)


class RerankHandler(PoolingHandler):
    """``/rerank`` and friends: score = share of the query's distinct pieces found in the document."""

    async def post(self) -> None:
        if not self.engine.options.reranking:
            raise not_supported("This server does not support reranking. Start it with `--reranking`")
        body = self.json_body()
        query = body.get("query")
        if not isinstance(query, str):
            raise bad_request('"query" must be provided')
        tei = "texts" in body
        documents = body.get("texts" if tei else "documents")
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            raise bad_request('"documents" must be a non-empty string array')
        asked = body.get("top_n")
        top_n = asked if isinstance(asked, int) and not isinstance(asked, bool) else len(documents)
        prompts = [tokenize(f"{query} {doc}", add_special=True) for doc in documents]
        wanted = set(query.split())

        def answer() -> Any:
            scores = [len(wanted & set(doc.split())) / len(wanted) if wanted else 0.0 for doc in documents]
            texts = documents if tei and body.get("return_text") else None
            n_tokens = sum(len(ids) for ids in prompts)
            return shapes.rerank_answer(self.model_name(body), scores, n_tokens, top_n, tei, texts)

        await self.pooled(prompts, answer)
