"""Small statistics helpers: every figure is a median with its spread."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """median / p99 / min / max / n of a sample (NaN-free)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": None, "p99": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(vals), digits),
        "p99": round(percentile(vals, 99), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "n": len(vals),
    }


def spread(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """A figure over repeats: median with min/max."""
    s = summary(values, digits)
    return {"median": s["median"], "min": s["min"], "max": s["max"], "n": s["n"]}


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(vals)) if vals else math.nan


def ms(seconds: float) -> float:
    return seconds * 1000.0


# --------------------------------------------------------------------------- report helpers


def fmt(s: dict[str, Any] | None, digits: int = 1) -> str:
    """A spread as 'median [min, max]' (the report's one way of showing a figure), '-' if empty."""
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def mid(s: dict[str, Any] | None) -> float | None:
    """The median of a spread, None when there is none (targets and plots take this one number)."""
    return None if not s else s.get("median")


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def target(benchmark: str, text: str, value: float | None, ok: bool | None, shown: str) -> dict[str, Any]:
    """One row of the targets table: met is None when there is no value to judge."""
    return {
        "benchmark": benchmark,
        "target": text,
        "value": value,
        "shown": shown,
        "met": bool(ok) if value is not None else None,
    }
