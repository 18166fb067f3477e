"""llmgw: an OpenAI-compatible gateway that runs the right llama-server for each request."""

__version__ = "0.1.0"
