"""The APIs the gateway speaks: routes, how each counts and sizes a request, errors in each
dialect's shape, and the model name clients get back."""

from llmgw.api.endpoints import ROUTES, Dialect, Endpoint, Sizing, completion_budget, dialect_of
from llmgw.api.errors import engine_error_body, engine_error_status, error_body, stream_error_event
from llmgw.api.rewrite import ModelRewriter

__all__ = [
    "ROUTES",
    "Dialect",
    "Endpoint",
    "ModelRewriter",
    "Sizing",
    "completion_budget",
    "dialect_of",
    "engine_error_body",
    "engine_error_status",
    "error_body",
    "stream_error_event",
]
