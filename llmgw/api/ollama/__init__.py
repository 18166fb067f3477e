"""Ollama's native API (/api/chat, /api/generate, /api/embed, /api/tags...) in terms of the
llama.cpp routes the gateway already serves: requests translated (``requests``), answers
translated (``answers``), model details from GGUF headers (``models``), wire conventions (``wire``)."""

from llmgw.api.ollama.requests import Action, Kind, Translated

__all__ = ["Action", "Kind", "Translated"]
