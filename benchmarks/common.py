"""What every benchmark gets: where to write, the real engine (if any), a logger."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    notes: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    def profile_path(self, name: str) -> Path | None:
        return self.workdir / f"{name}.prof" if self.profile else None
