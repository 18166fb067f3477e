"""Who a request comes from: the key it presents, matched against every configured key.

:class:`KeyRegistry` is built from one configuration (a reload builds a new one). A presented
key is hashed and compared, in constant time, with the hash of *every* configured key, with no
early exit, so neither the time taken nor anything else tells which key (if any) was close.
Without any key configured the gateway is open: every request is :data:`OPEN`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from llmgw.config import KeyConfig, ModelConfig, Priority


@dataclass(frozen=True)
class Principal:
    """A request's key, as the handlers and the request path see it: its name and what it may do,
    never the key itself."""

    name: str | None  # None: the gateway has no keys (anyone may do anything)
    models: frozenset[str] | None = None  # model names it may use; None: every model
    admin: bool = True
    priority: Priority = Priority.INTERACTIVE
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None

    @classmethod
    def of(cls, key: KeyConfig) -> Principal:
        return cls(
            key.name,
            None if key.models is None else frozenset(key.models),
            key.admin,
            key.priority,
            key.requests_per_minute,
            key.tokens_per_day,
            key.max_concurrent,
        )

    def sees(self, model: ModelConfig) -> bool:
        """Whether this key may use (and see listed) ``model``: the one check every route and
        every model listing makes, so a key cannot tell a model it may not use from one that
        does not exist."""
        return self.models is None or model.name in self.models


OPEN = Principal(None)


def presented_key(authorization: str | None, x_api_key: str | None) -> str:
    """The key a request presents: ``Authorization: Bearer KEY`` (any case of "Bearer"), else
    ``x-api-key: KEY`` (Anthropic's clients); "" when neither."""
    auth = authorization or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return (x_api_key or "").strip()


def _digest(text: str) -> bytes:
    # Hashing first makes every comparison the same length, so not even a key's length shows.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class KeyRegistry:
    def __init__(self, keys: tuple[KeyConfig, ...]) -> None:
        self._entries = [(_digest(key.secret), Principal.of(key)) for key in keys]
        self.principals = {principal.name: principal for _, principal in self._entries}

    def identify(self, given: str) -> Principal | None:
        """The principal whose key is ``given``; None for a missing or unknown key (401)."""
        if not self._entries:
            return OPEN
        digest = _digest(given)
        found: Principal | None = None
        for known, principal in self._entries:  # every one, no early exit
            if hmac.compare_digest(digest, known):
                found = principal
        return found if given else None
