"""Slot cache: an engine's KV cache kept on disk across its stops, restored into its successors."""

from llmgw.slotcache.cache import ModelStats, Restored, SlotCache

__all__ = ["ModelStats", "Restored", "SlotCache"]
