"""Engine layer: HTTP to engines (abortable calls, exact counting) and the standalone tokenizer."""

from llmgw.engine.engine_client import EngineClient
from llmgw.engine.http import EngineHTTPClient, UpstreamCall, UpstreamError, relay_headers
from llmgw.engine.llamacpp_engine import LlamaCppEngine
from llmgw.engine.standalone_tokenizer import StandaloneTokenizer

__all__ = [
    "EngineClient",
    "EngineHTTPClient",
    "LlamaCppEngine",
    "StandaloneTokenizer",
    "UpstreamCall",
    "UpstreamError",
    "relay_headers",
]
