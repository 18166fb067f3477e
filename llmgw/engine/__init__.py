"""Engine layer: processes, their HTTP clients, and the manager that schedules them."""

from llmgw.engine.engine_client import EngineClient, completion_budget
from llmgw.engine.engine_manager import EngineManager, RunningEngine
from llmgw.engine.engine_process import EngineProcess, EngineStatus
from llmgw.engine.http import EngineHTTPClient, UpstreamCall, UpstreamError, relay_headers
from llmgw.engine.llamacpp_engine import LlamaCppEngine
from llmgw.engine.standalone_tokenizer import StandaloneTokenizer

__all__ = [
    "EngineClient",
    "EngineHTTPClient",
    "EngineManager",
    "EngineProcess",
    "EngineStatus",
    "LlamaCppEngine",
    "RunningEngine",
    "StandaloneTokenizer",
    "UpstreamCall",
    "UpstreamError",
    "completion_budget",
    "relay_headers",
]
