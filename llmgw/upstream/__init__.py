"""Upstream: HTTP from the gateway to its engines (abortable calls, exact counting); the standalone tokenizer."""

from llmgw.upstream.client import EngineClient
from llmgw.upstream.http import EngineHTTPClient, UpstreamCall, UpstreamError, relay_headers
from llmgw.upstream.llamacpp import LlamaCppClient
from llmgw.upstream.standalone_tokenizer import StandaloneTokenizer

__all__ = [
    "EngineClient",
    "EngineHTTPClient",
    "LlamaCppClient",
    "StandaloneTokenizer",
    "UpstreamCall",
    "UpstreamError",
    "relay_headers",
]
