"""Scheduling layer: which engines run, and which requests use them or wait."""

from llmgw.scheduling.engine_manager import EngineManager

__all__ = ["EngineManager"]
