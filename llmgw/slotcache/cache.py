"""SlotCache: the KV cache of an engine survives its stop.

Before an engine stops (switch, eviction, idle unload, reload, unload, shutdown), every slot
holding a prompt is saved to the model's cache directory. Before the first requests to a new
engine of that model are forwarded, the saved slot that best matches each request's prompt is
restored into a slot the engine has not used yet, so the engine reuses that prefix instead of
processing the whole conversation again. Files are keyed by model and by the launch arguments
that shape the KV cache (llmgw.slotcache.keys), so a slot saved by a small-context variant
restores into a larger one. The directory keeps to its budget by deleting the least recently
used files.

Nothing here ever fails a request: a save or restore that goes wrong (disk full, corrupt file,
an engine that refuses) is logged, and the request goes on without the cache.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from dataclasses import dataclass, field

from llmgw.config import Config, ModelConfig, Variant
from llmgw.config import SlotCache as SlotCacheConfig
from llmgw.slotcache.index import Entry, SlotIndex, pack
from llmgw.slotcache.keys import launch_key
from llmgw.slotcache.store import SlotFileError, SlotStore, read_tokens
from llmgw.upstream.client import EngineClient
from llmgw.upstream.http import UpstreamError

logger = logging.getLogger(__name__)

_SLOTS_TIMEOUT = 10.0
_CACHE_N = re.compile(rb'"(?:cache_n|cache_read_input_tokens|cached_tokens)"\s*:\s*(\d+)')
_PER_TOKEN = re.compile(rb'"prompt_per_token_ms"\s*:\s*([0-9.eE+-]+)')


@dataclass
class ModelStats:
    """What the cache did for one model (read by /metrics)."""

    hits: int = 0  # a saved slot restored for a request
    misses: int = 0  # a new engine's request found no saved slot to restore
    errors: int = 0  # a restore the engine refused or that failed
    saves: int = 0
    save_errors: int = 0
    evictions: int = 0
    tokens_restored: int = 0
    tokens_reused: int = 0  # of those, the prompt tokens the engine reported as cached
    seconds_saved: float = 0.0  # tokens reused x the engine's prompt time per token on that request


@dataclass
class _Dir:
    config: SlotCacheConfig
    store: SlotStore
    index: SlotIndex
    usable: bool
    bytes_per_token: dict[str, float] = field(default_factory=dict)  # learned per launch key


@dataclass
class _Fresh:
    """A new engine while it may still take saved slots."""

    pending: bool
    restored: set[int] = field(default_factory=set)  # slot ids filled by a restore
    used: set[str] = field(default_factory=set)  # entries restored into it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Restored:
    """A slot restored for a request; :meth:`observe` reads the engine's answer to learn what it
    reused (``cache_n``) and the time that saved."""

    model: str
    tokens: int
    stats: ModelStats
    _cache_n: int | None = None
    _per_token_ms: float | None = None
    _tail: bytes = b""

    def observe(self, chunk: bytes | None) -> None:
        """Each chunk of the answer, then None at its end."""
        if chunk is not None:
            data = self._tail + chunk
            self._tail = data[-128:]  # a field cut between two chunks is seen in the next
            if self._cache_n is None and (found := _CACHE_N.search(data)):
                self._cache_n = int(found.group(1))
            if self._per_token_ms is None and (per := _PER_TOKEN.search(data)):
                try:
                    self._per_token_ms = float(per.group(1))
                except ValueError:
                    self._per_token_ms = None
            return
        if self._cache_n is None:
            return
        self.stats.tokens_reused += self._cache_n
        if self._per_token_ms is not None:
            self.stats.seconds_saved += self._cache_n * self._per_token_ms / 1000.0
        if self._cache_n == 0 and self.tokens > 1:
            logger.warning(
                "model %r: %d tokens were restored but the engine reused none of them; sliding-window "
                "models (gemma-2/3, ...) need --swa-full in their args for that",
                self.model,
                self.tokens,
            )


class SlotCache:
    def __init__(self, config: Config) -> None:
        self._dirs: dict[str, _Dir] = {}
        self._fresh: weakref.WeakKeyDictionary[EngineClient, _Fresh] = weakref.WeakKeyDictionary()
        self.stats: dict[str, ModelStats] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Directories and budgets from a (new) config; directories already read are kept."""
        for model in config.models:
            cache = model.slot_cache
            if cache is None:
                continue
            known = self._dirs.get(cache.dir)
            if known is not None:
                known.config = cache
                continue
            store = SlotStore(cache.dir)
            usable = store.prepare()
            entries = store.scan() if usable else []
            self._dirs[cache.dir] = _Dir(cache, store, SlotIndex(entries), usable)
            if entries:
                logger.info("slot cache %s: %d saved slot(s) found", cache.dir, len(entries))
        for directory in self._dirs.values():
            self._enforce(directory)

    def _dir(self, model: ModelConfig, variant: Variant) -> _Dir | None:
        cache = variant.slot_cache
        if cache is None or model.slot_cache is None:
            return None
        directory = self._dirs.get(cache.dir)
        return directory if directory is not None and directory.usable else None

    def _stats(self, model: str) -> ModelStats:
        return self.stats.setdefault(model, ModelStats())

    def files(self) -> dict[str, tuple[int, int]]:
        """Per model: saved files and their bytes."""
        out: dict[str, tuple[int, int]] = {}
        for directory in self._dirs.values():
            for entry in directory.index.entries.values():
                count, size = out.get(entry.model, (0, 0))
                out[entry.model] = (count + 1, size + entry.size)
        return out

    # ----------------------------------------------------------------- saving

    async def save(self, model: ModelConfig, variant: Variant, client: EngineClient, timeout: float) -> None:
        """Save every slot of the engine that holds a prompt (it is about to stop)."""
        self._fresh.pop(client, None)
        directory = self._dir(model, variant)
        if directory is None or not client.saves_slots:
            return
        slots = await client.slots(min(timeout, _SLOTS_TIMEOUT))
        if slots is None:
            logger.warning("model %r: the engine did not list its slots; none saved", model.name)
            return
        key = launch_key(model, variant)
        for slot in slots:
            n_tokens, slot_id = slot.get("n_prompt_tokens"), slot.get("id")
            if (
                not isinstance(n_tokens, int)
                or n_tokens <= 0
                or not isinstance(slot_id, int)
                or slot.get("is_processing")
            ):
                continue
            await self._save_slot(directory, model, key, client, slot_id, n_tokens, timeout)

    async def _save_slot(
        self,
        directory: _Dir,
        model: ModelConfig,
        key: str,
        client: EngineClient,
        slot_id: int,
        n: int,
        timeout: float,
    ) -> None:
        stats = self._stats(model.name)
        budget = directory.config.max_bytes
        estimate = int(n * directory.bytes_per_token.get(key, 0.0))
        if estimate > budget:
            logger.info(
                "model %r: slot %d (%d tokens, ~%d bytes) is over the cache budget; not saved",
                model.name,
                slot_id,
                n,
                estimate,
            )
            return
        self._evict(directory, directory.index.over_budget(budget, extra=estimate))
        temp, name = directory.store.new_temp(key)
        started = time.monotonic()
        try:
            reply = await client.slot_action(slot_id, "save", temp, timeout)
            if reply.status != 200 or not isinstance(reply.data, dict):
                raise SlotFileError(f"the engine answered {reply.status}: {reply.body[:200]!r}")
            n_saved, n_written = reply.data.get("n_saved"), reply.data.get("n_written")
            if not isinstance(n_saved, int) or not isinstance(n_written, int) or n_saved <= 0:
                raise SlotFileError(f"unexpected answer {reply.body[:200]!r}")
            tokens = pack(read_tokens(directory.store.dir / temp, n_saved, n_written))
            if directory.index.same_as(key, tokens) is not None:
                directory.store.discard(temp)  # restored and not used since: nothing new to keep
                return
            entry = Entry(name, key, model.name, tokens, n_written, time.time())
            if n_written > budget:
                raise SlotFileError(f"{n_written} bytes, over the cache budget of {budget}")
            directory.store.commit(temp, entry)
        except (UpstreamError, SlotFileError, OSError) as exc:
            directory.store.discard(temp)
            stats.save_errors += 1
            logger.warning("model %r: slot %d not saved: %s", model.name, slot_id, exc)
            return
        stats.saves += 1
        directory.bytes_per_token[key] = n_written / max(entry.n_tokens, 1)
        for old in directory.index.add(entry):
            directory.store.delete(old)  # its tokens are a prefix of the new file's: it serves no prompt better
        self._evict(directory, directory.index.over_budget(budget, keep=entry.name))
        logger.info(
            "model %r: slot %d saved (%d tokens, %.1f MB) in %.0f ms",
            model.name,
            slot_id,
            entry.n_tokens,
            n_written / 1e6,
            (time.monotonic() - started) * 1000,
        )

    def _evict(self, directory: _Dir, victims: list[Entry]) -> None:
        for entry in victims:
            directory.index.remove(entry.name)
            directory.store.delete(entry)
            self._stats(entry.model).evictions += 1
            logger.info("slot cache %s: %s evicted (least recently used)", directory.store.dir, entry.name)

    def _enforce(self, directory: _Dir) -> None:
        self._evict(directory, directory.index.over_budget(directory.config.max_bytes))

    # ----------------------------------------------------------------- restoring

    def pending(self, model: ModelConfig, variant: Variant, client: EngineClient) -> bool:
        """Whether requests to this engine should first be offered a restore (a new engine of a
        model with saved slots, while it has slots it never used). Cheap: checked on every request."""
        fresh = self._fresh.get(client)
        if fresh is None:
            directory = self._dir(model, variant)
            has = directory is not None and directory.index.has_key(launch_key(model, variant))
            fresh = _Fresh(pending=has and client.saves_slots)
            self._fresh[client] = fresh
        return fresh.pending

    async def restore(
        self,
        model: ModelConfig,
        variant: Variant,
        client: EngineClient,
        n_ctx: int,
        prompt: list[int] | None,
        n_prompt: int,
        timeout: float,
    ) -> Restored | None:
        """Restore the saved slot that best matches the prompt (its token ids; None when they
        cannot be had, then ``n_prompt`` tokens counted) into a slot the engine has not used."""
        fresh = self._fresh.get(client)
        directory = self._dir(model, variant)
        if fresh is None or not fresh.pending or directory is None or not client.saves_slots:
            return None
        stats = self._stats(model.name)
        async with fresh.lock:
            if not fresh.pending:
                return None
            slots = await client.slots(min(timeout, _SLOTS_TIMEOUT))
            free = sorted(
                s["id"]
                for s in slots or []
                if isinstance(s.get("id"), int) and "id_task" not in s and s["id"] not in fresh.restored
            )
            if not free:
                fresh.pending = False  # every slot has been used: what it holds is newer than any file
                return None
            key = launch_key(model, variant)
            found = directory.index.best(key, None if prompt is None else pack(prompt), n_prompt, n_ctx, fresh.used)
            if found is None:
                stats.misses += 1
                return None
            entry, common = found
            slot_id = free[0]
            started = time.monotonic()
            try:
                reply = await client.slot_action(slot_id, "restore", f"{entry.name}.bin", timeout)
            except UpstreamError as exc:
                stats.errors += 1
                logger.warning("model %r: restoring %s failed (%s); going on without it", model.name, entry.name, exc)
                return None
            restored = reply.data.get("n_restored") if isinstance(reply.data, dict) else None
            if reply.status != 200 or not isinstance(restored, int):
                stats.errors += 1
                logger.warning(
                    "model %r: the engine refused to restore %s (%d: %s); removing it, going on without it",
                    model.name,
                    entry.name,
                    reply.status,
                    reply.body[:200].decode("utf-8", "replace"),
                )
                directory.index.remove(entry.name)
                directory.store.delete(entry)
                return None
            fresh.restored.add(slot_id)
            fresh.used.add(entry.name)
            if len(fresh.restored) >= len(slots or []):
                fresh.pending = False
            entry.used_at = time.time()
            directory.store.touch(entry)
            stats.hits += 1
            stats.tokens_restored += restored
            logger.info(
                "model %r: restored %d saved tokens into slot %d in %.0f ms (%d in common with the prompt)",
                model.name,
                restored,
                slot_id,
                (time.monotonic() - started) * 1000,
                common,
            )
            return Restored(model.name, restored, stats)

    def forget(self, client: EngineClient) -> None:
        self._fresh.pop(client, None)
