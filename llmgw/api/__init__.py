"""The protocols the gateway speaks: routes, how each counts and sizes a request, errors in each
protocol's shape, and the model name clients get back."""

from llmgw.api.endpoints import ROUTES, Endpoint, Protocol, Sizing, completion_budget, protocol_of
from llmgw.api.protocols import engine_error_body, error_body, stream_error_event
from llmgw.api.rewrite import ModelRewriter

__all__ = [
    "ROUTES",
    "Endpoint",
    "ModelRewriter",
    "Protocol",
    "Sizing",
    "completion_budget",
    "engine_error_body",
    "error_body",
    "protocol_of",
    "stream_error_event",
]
