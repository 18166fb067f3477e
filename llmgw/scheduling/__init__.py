"""Scheduling layer: which engines run, and which requests use them or wait."""

from llmgw.scheduling.engine_manager import EngineManager, ManagerHooks, Reservation, new_scheduler

__all__ = ["EngineManager", "ManagerHooks", "Reservation", "new_scheduler"]
