"""MemoryBook: how much memory each variant needs, per pool.

A variant's need is what it declares in the config, else the largest figure ever measured for
its launch (kept across restarts in the state file), else the estimate from its GGUF header
(llmgw.scheduling.estimate), else its pools whole: a variant neither measured nor estimated runs
alone in its pools until it has been measured once.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmgw.config import ModelConfig, Variant
from llmgw.config.budget import TOTAL_POOL
from llmgw.runtime import Usage

RAM_POOL = "ram"
_GPU_PREFIX = "gpu"


def in_pool(usage: Usage, pool: str) -> float | None:
    """The figure of a budget pool ("total", "ram", "gpuN", or an RPC worker's name); None for a
    pool no probe can see (its variants must declare ``memory``)."""
    if pool in usage.remote:
        return usage.remote[pool]
    if pool == TOTAL_POOL:
        return usage.rss_mib + sum(usage.gpu_mib.values())
    if pool == RAM_POOL:
        return usage.rss_mib
    index = pool.removeprefix(_GPU_PREFIX)
    if pool.startswith(_GPU_PREFIX) and index.isdigit():
        return usage.gpu_mib.get(int(index), 0.0)
    return None


def launch_key(model: ModelConfig, variant: Variant) -> str:
    return f"{model.name}/{variant.fingerprint}"


class MemoryBook:
    def __init__(self, budget: Mapping[str, float], measured: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.budget = dict(budget)
        self._measured: dict[str, dict[str, float]] = {k: dict(v) for k, v in (measured or {}).items()}
        self._estimated: dict[str, dict[str, float]] = {}

    def need(self, model: ModelConfig, variant: Variant) -> dict[str, float]:
        """MiB per pool the variant counts for in placement."""
        if not self.budget:
            return {}
        if variant.memory is not None:
            return {pool: mib for pool, mib in variant.memory if pool in self.budget}
        key = launch_key(model, variant)
        seen = self._measured.get(key, {})
        guess = self._estimated.get(key, {})
        return {
            pool: seen.get(pool, guess.get(pool, self.budget[pool])) for pool in variant.pools if pool in self.budget
        }

    def source(self, model: ModelConfig, variant: Variant) -> str:
        """'declared', 'measured', 'estimated' or 'unknown': where :meth:`need` takes its figure
        from ('measured' once every pool was measured; until then an estimate fills in)."""
        if variant.memory is not None:
            return "declared"
        key = launch_key(model, variant)
        seen = self._measured.get(key)
        if seen and all(pool in seen for pool in _pools(variant)):
            return "measured"
        return "estimated" if key in self._estimated else "unknown"

    def figures(self, model: ModelConfig, variant: Variant) -> dict[str, float]:
        """What is known of the variant's memory, budget or not: declared, else the largest
        measured, with the estimate for the pools not measured yet."""
        if variant.memory is not None:
            return dict(variant.memory)
        key = launch_key(model, variant)
        return {**self._estimated.get(key, {}), **self._measured.get(key, {})}

    def measured_of(self, model: ModelConfig, variant: Variant) -> dict[str, float]:
        """The largest figures measured for the variant's launch ({} before its first measurement)."""
        return dict(self._measured.get(launch_key(model, variant), {}))

    def estimate_of(self, model: ModelConfig, variant: Variant) -> dict[str, float]:
        """The estimate from the variant's GGUF header ({} when there is none)."""
        return dict(self._estimated.get(launch_key(model, variant), {}))

    def estimated(self, model: ModelConfig, variant: Variant, figures: Mapping[str, float]) -> bool:
        """Keep the estimate of a variant; True when it is new or changed."""
        key = launch_key(model, variant)
        if self._estimated.get(key) == dict(figures):
            return False
        self._estimated[key] = dict(figures)
        return True

    def record(self, model: ModelConfig, variant: Variant, usage: Usage) -> bool:
        """Keep the largest figure seen per pool; True when that changed anything."""
        pools = _pools(variant)
        seen = self._measured.setdefault(launch_key(model, variant), {})
        changed = False
        for pool in pools:
            value = in_pool(usage, pool)
            if value is not None and value > seen.get(pool, -1.0):
                seen[pool] = round(value, 1)
                changed = True
        return changed

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {key: dict(pools) for key, pools in self._measured.items()}


def _pools(variant: Variant) -> tuple[str, ...]:
    """The pools a variant is measured in: its budget pools, or "total" when there is no budget."""
    return variant.pools or (TOTAL_POOL,)
