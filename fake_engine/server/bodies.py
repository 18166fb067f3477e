"""Reading request bodies as llama-server does: prompts given as text, ids or lists of both, and
the checks of ``messages`` and ``input`` shared by the generation and counting routes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..fake_llama_tokenize import tokenize
from .errors import bad_request, server_error

__all__ = ["BAD_PROMPT", "check_input", "check_messages", "counted", "is_token", "mixed_ids", "prompt_ids"]

BAD_PROMPT = (
    '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt string, '
    "or a list of mixed strings & tokens."
)


def is_token(value: Any) -> bool:
    """An integer that is not a bool (JSON ``true`` is not a token id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def mixed_ids(items: Sequence[Any]) -> list[int]:
    """Ids kept as given, strings tokenized without BOS."""
    ids: list[int] = []
    for item in items:
        ids.extend([item] if is_token(item) else tokenize(item))
    return ids


def prompt_ids(value: Any) -> list[list[int]]:
    """The prompts of a ``prompt``/``input``/``content`` value, as token ids (llama-server's rule):
    a string (tokenized with BOS), a list of ids and/or strings (one prompt, kept as given, strings
    without BOS), or a list of those (several prompts)."""

    def single(item: Any) -> list[int]:
        if isinstance(item, str):
            return tokenize(item, add_special=True)
        if isinstance(item, list) and all(is_token(v) or isinstance(v, str) for v in item):
            return mixed_ids(item)
        raise server_error(BAD_PROMPT)

    if isinstance(value, list) and value and any(is_token(v) for v in value):
        return [single(value)]
    if isinstance(value, list) and value:
        return [single(item) for item in value]
    return [single(value)]


def check_messages(body: Mapping[str, Any], status: int = 400) -> None:
    """llama-server's checks of ``messages`` (400 for OpenAI routes, 500 for Anthropic ones)."""
    if "messages" not in body:
        raise bad_request("'messages' is required") if status == 400 else server_error("'messages' is required")
    if not isinstance(body["messages"], list):
        raise bad_request("Expected 'messages' to be an array")


def check_input(body: Mapping[str, Any]) -> None:
    """The Responses routes need ``input`` (llama-server's 400)."""
    if "input" not in body:
        raise bad_request("'input' is required")


def counted(count: Callable[[Mapping[str, Any]], Any], body: Mapping[str, Any]) -> Any:
    """``count(body)``, a body the counting rule cannot read being llama-server's 400."""
    try:
        return count(body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
