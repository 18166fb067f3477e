"""Models layer: which variant of which model serves a request."""

from llmgw.models.model_selector import ModelSelector, Selection

__all__ = ["ModelSelector", "Selection"]
