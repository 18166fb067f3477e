"""Ollama's native API over the gateway's models and engines: what /api/tags, /api/show and
/api/ps show, and how an /api/chat, /api/generate, /api/embed or /api/embeddings request becomes
a request of the gateway's own path (or a load, or an unload).

A plain class over the configuration, the engine manager and the model files (GGUF headers,
read once per file change in a worker thread), so the handlers stay thin and the shapes are
tested without Tornado. The translation itself is in llmgw.api.ollama.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from llmgw.api.ollama import answers, models, requests
from llmgw.api.ollama.requests import Action, Kind, Translated
from llmgw.api.ollama.wire import NEVER_NS, tagged, timestamp
from llmgw.config import LiveConfig, ModelConfig
from llmgw.errors import BadRequest, ModelNotFound, clip
from llmgw.keys import Principal
from llmgw.modelfile import ModelFile, ModelFiles
from llmgw.runtime import RunningEngine
from llmgw.scheduling import EngineManager
from llmgw.scheduling.memory import RAM_POOL
from llmgw.scheduling.scheduler import EngineRecord

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Prepared:
    """An Ollama request, translated and its model found."""

    call: Translated
    model: ModelConfig
    min_ctx: int  # options.num_ctx, at most the largest variant's context


class Ollama:
    def __init__(self, live: LiveConfig, manager: EngineManager, files: ModelFiles, started: float) -> None:
        self.live = live
        self.manager = manager
        self.files = files
        self.started = started  # epoch seconds: modified_at of a model whose file cannot be read

    # ------------------------------------------------------------------ names

    def model(self, name: str, key: Principal, embed_route: bool = False) -> ModelConfig:
        """The model ``name`` names (``name:latest`` included), if ``key`` may use it; Ollama's 404
        otherwise (the same for a model that is not the key's)."""
        model = self.live.current.model(name)
        if model is None or not key.sees(model):
            shown = clip(name)  # never the whole of a hostile name
            if embed_route:  # Ollama's own wording differs between routes; clients show it
                raise ModelNotFound(f'model "{shown}" not found, try pulling it first')
            raise ModelNotFound(f"model '{shown}' not found")
        return model

    def listed(self, key: Principal) -> list[tuple[ModelConfig, str]]:
        """(model, name) for every name /api/tags lists: the key's models, and their aliases unless
        list_aliases is off."""
        config = self.live.current
        names = []
        for model in config.models:
            if not key.sees(model):
                continue
            names.append((model, model.name))
            if config.server.list_aliases:
                names.extend((model, alias) for alias in model.aliases)
        return names

    # ------------------------------------------------------------------ read-only routes

    def version(self) -> dict[str, Any]:
        return {"version": self.live.current.server.ollama_version}

    async def _file(self, model: ModelConfig) -> ModelFile | None:
        path = models.file_of(model)
        return await self.files.get(path) if path is not None else None

    async def _projector_size(self, model: ModelConfig) -> int:
        path = models.projector_of(model)
        info = await self.files.get(path) if path is not None else None
        return info.size if info is not None else 0

    def _modified(self, info: ModelFile | None) -> str:
        seconds = info.mtime if info is not None else self.started
        return timestamp(int(seconds * 1e9))

    async def _entry(self, model: ModelConfig, name: str) -> dict[str, Any]:
        info = await self._file(model)
        projector = models.projector_of(model) is not None
        return {
            "name": tagged(name),
            "model": tagged(name),
            "modified_at": self._modified(info),
            "size": (info.size if info is not None else 0) + await self._projector_size(model),
            "digest": models.digest(info, model),
            "details": models.details(info, projector),
        }

    async def tags(self, key: Principal) -> dict[str, Any]:
        listed = self.listed(key)
        entries = await asyncio.gather(*(self._entry(model, name) for model, name in listed))
        return {"models": list(entries)}

    async def show(self, data: dict[str, Any], key: Principal) -> dict[str, Any]:
        name = data.get("model") or data.get("name")
        if not name:
            raise BadRequest("model is required")
        if not isinstance(name, str):
            raise BadRequest("model must be a string")
        model = self.model(name, key)
        info = await self._file(model)
        context = self.manager.largest_context(model)
        return {
            "license": models.license_of(info),
            "modelfile": models.modelfile(tagged(name), models.file_of(model)),
            "parameters": models.parameters(context),
            "template": (info.chat_template if info is not None else None) or "",
            "details": models.details(info, models.projector_of(model) is not None),
            "model_info": models.model_info(info, context),
            "capabilities": models.capabilities(model, info),
            "modified_at": self._modified(info),
        }

    async def ps(self, key: Principal) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        wall = time.time()
        running = [
            record
            for record in self.manager.engines
            if record.ready and record.handle is not None and key.sees(record.model)
        ]
        entries = []
        for record in running:
            info = await self._file(record.model)
            size, vram = self._memory(record, info)
            entry = {
                "name": tagged(record.model.name),
                "model": tagged(record.model.name),
                "size": size,
                "digest": models.digest(info, record.model),
                "details": models.details(info, models.projector_of(record.model) is not None),
                "expires_at": self._expires(record, now, wall),
                "size_vram": vram,
                "context_length": record.n_ctx or 0,
            }
            entries.append((self._remaining(record, now), entry))
        entries.sort(key=lambda pair: -pair[0])  # longest left first, as Ollama lists them
        return {"models": [entry for _, entry in entries]}

    def _memory(self, record: EngineRecord[RunningEngine], info: ModelFile | None) -> tuple[int, int]:
        """Bytes in all and on GPUs, as measured (or declared); the file's size before a measure."""
        figures, _ = self.manager.memory_of(record)
        vram = sum(mib for pool, mib in figures.items() if pool.startswith("gpu"))
        total = figures["total"] if "total" in figures else figures.get(RAM_POOL, 0.0) + vram
        size = int(total * _MIB) if total > 0 else (info.size if info is not None else 0)
        return max(size, 0), max(int(vram * _MIB), 0)

    @staticmethod
    def _remaining(record: EngineRecord[RunningEngine], now: float) -> float:
        idle = record.idle_after
        if idle is None:
            return math.inf
        if record.busy:
            return idle
        return max(record.last_used + idle - now, 0.0)

    def _expires(self, record: EngineRecord[RunningEngine], now: float, wall: float) -> str:
        remaining = self._remaining(record, now)
        if math.isinf(remaining):
            return timestamp(time.time_ns() + NEVER_NS)
        return timestamp(int((wall + remaining) * 1e9))

    # ------------------------------------------------------------------ model requests

    def prepare(self, kind: Kind, data: dict[str, Any], key: Principal) -> Prepared:
        """Translate the request and find its model; raises BadRequest or ModelNotFound."""
        call = requests.TRANSLATE[kind](data)
        model = self.model(call.model, key, embed_route=kind in (Kind.EMBED, Kind.EMBEDDINGS))
        if not model.serves(call.endpoint.capability):
            raise BadRequest(f'"{clip(call.model)}" does not support {call.capability_name}')
        min_ctx = min(call.num_ctx, self.manager.largest_context(model, call.endpoint.capability))
        return Prepared(call, model, min_ctx)

    async def load(self, prepared: Prepared, arrived_ns: int) -> dict[str, Any]:
        """A request with nothing to infer: load the model (the variant for num_ctx, else the running
        one or the smallest), or with keep_alive 0 unload it; the answer Ollama gives for that."""
        call, model = prepared.call, prepared.model
        if call.action is Action.UNLOAD:
            await self.manager.keep_alive(model.name, 0.0)
        else:
            async with self.manager.lease(model, prepared.min_ctx, call.endpoint.capability, call.keep_alive):
                pass
        return answers.load_answer(call, arrived_ns)
