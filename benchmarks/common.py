"""What every benchmark gets (where to write, the real engine, a logger) and what it gives the report."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.harness import RealFiles

_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
    "under pale moonlight near old stone bridges and rivers that carry leaves toward distant hills"
)
WORDS = tuple(_TEXT.split())


def words(n: int, offset: int = 0) -> str:
    """``n`` ordinary words (deterministic), so prompt sizes are predictable on both engines."""
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(n))


def chat(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@dataclass
class Ctx:
    workdir: Path  # configs, logs, profiles of this run
    real: RealFiles | None = None
    profile: bool = False  # run gateways under cProfile (profiles land in workdir)
    quiet: bool = False
    t0: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    def profile_path(self, name: str) -> Path | None:
        return self.workdir / f"{name}.prof" if self.profile else None


Results = dict[str, Any]  # a module's results in one run: benchmark name -> its result (only those that ran)
Target = dict[str, Any]  # one row of the targets table (stats.target)


class Benchmark(Protocol):
    """What the runner and the report need from a benchmark module. Every module in ``report.MODULES``
    is one (mypy checks it), so each renders its own figures and the report only puts them together."""

    __name__: str  # a module's own: "benchmarks.switch"; its last part names the plot file

    @property
    def NAMES(self) -> tuple[str, ...]:
        """The benchmarks it runs: ``--only`` names and keys of results.json."""

    @property
    def NEEDS_REAL(self) -> tuple[str, ...]:
        """Those of ``NAMES`` that need the real llama-server (skipped without it)."""

    def run(self, ctx: Ctx, name: str, params: Any) -> Awaitable[dict[str, Any]]:
        """Run one of ``NAMES`` with its plan's parameters; the result is JSON."""

    def targets(self, results: Results) -> list[Target]:
        """Its rows of the targets table."""

    def section(self, results: Results) -> str:
        """Its part of RESULTS.md, headings included."""

    def headlines(self, results: Results) -> dict[str, float | None]:
        """The figures ``--compare`` puts side by side (stable names across runs)."""

    def plot(self, results: Results, path: Path) -> bool:
        """Draw its figure into ``path`` (matplotlib is there); False when it has none."""

    def blockers(self, results: Results, row: Target) -> str:
        """For one of its targets not met: the measured parts that stand in the way ('' if nothing to add)."""
