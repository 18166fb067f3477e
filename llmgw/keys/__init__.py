"""API keys: who a request comes from (registry), what it may do and how much (limits), and what
each key used (usage). Below the server: the handlers ask, nothing here knows of Tornado."""

from llmgw.keys.gate import Admission, KeyGate
from llmgw.keys.registry import OPEN, KeyRegistry, Principal, presented_key

__all__ = ["OPEN", "Admission", "KeyGate", "KeyRegistry", "Principal", "presented_key"]
