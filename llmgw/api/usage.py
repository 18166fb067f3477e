"""AnswerStats: prompt and generated tokens and tokens/s of one answer, read from what the engine sends.

llama-server puts ``timings`` (prompt_n, cache_n, predicted_n and the per-second rates) in its
last event or answer: the chat finish chunk (or the ``include_usage`` chunk), the last
/v1/completions and /completion chunk, and beside ``response`` in Responses'
``response.completed``. Anthropic Messages carry only ``usage`` (``message_start`` and
``message_delta``). The relay hands over only the events that hold one of the two words (a
cheap ``in`` test per chunk), and only their ``timings`` / ``usage`` objects are decoded, never
the whole answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MARKS = (b'"timings"', b'"usage"')  # an event holding neither is never parsed
_OBJECT = re.compile(r'"(timings|usage)"\s*:\s*(?=\{)')
_DECODER = json.JSONDecoder()


def worth_reading(data: bytes) -> bool:
    return MARKS[0] in data or MARKS[1] in data


@dataclass
class AnswerStats:
    prompt_tokens: int | None = None  # the whole prompt, cached part included
    cached_tokens: int | None = None
    generated_tokens: int | None = None
    prefill_tps: float | None = None  # prompt tokens processed per second (the engine's timings)
    decode_tps: float | None = None  # tokens generated per second
    stream_error: int | None = None  # status of the error event that ended a stream (its HTTP status was 200)

    def feed(self, data: bytes) -> None:
        """Take the ``timings`` and ``usage`` objects found in ``data`` (whole events or a whole answer);
        later ones win, field by field."""
        if not worth_reading(data):
            return
        text = data.decode("utf-8", "replace")
        for match in _OBJECT.finditer(text):
            try:
                value, _ = _DECODER.raw_decode(text, match.end())
            except ValueError:
                continue
            if not isinstance(value, dict):
                continue
            if match.group(1) == "timings":
                self._timings(value)
            else:
                self._usage(value)

    def _timings(self, timings: dict[str, Any]) -> None:
        prompt_n, cache_n, predicted_n = (_int(timings.get(k)) for k in ("prompt_n", "cache_n", "predicted_n"))
        if prompt_n is not None:
            self.prompt_tokens = prompt_n + (cache_n or 0)
            self.cached_tokens = cache_n
            # Nothing evaluated (all cached): the engine's rate is meaningless.
            self.prefill_tps = _rate(timings.get("prompt_per_second")) if prompt_n > 0 else None
        if predicted_n is not None:
            self.generated_tokens = predicted_n
            # One token takes no measurable time: llama-server then reports 1e6 tokens/s.
            self.decode_tps = _rate(timings.get("predicted_per_second")) if predicted_n > 1 else None

    def _usage(self, usage: dict[str, Any]) -> None:
        if "cache_read_input_tokens" in usage:  # Anthropic: input_tokens leaves the cached part out
            cached = _int(usage.get("cache_read_input_tokens")) or 0
            given = _int(usage.get("input_tokens"))
            if given is not None:
                self.prompt_tokens, self.cached_tokens = given + cached, cached
        else:
            prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            if prompt is not None:
                self.prompt_tokens = prompt
            details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
            if isinstance(details, dict) and _int(details.get("cached_tokens")) is not None:
                self.cached_tokens = _int(details.get("cached_tokens"))
        generated = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        if generated is not None:
            self.generated_tokens = generated

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_tps": None if self.prefill_tps is None else round(self.prefill_tps, 1),
            "decode_tps": None if self.decode_tps is None else round(self.decode_tps, 1),
        }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _rate(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e6:
        return float(value)
    return None
