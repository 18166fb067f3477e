"""Request filters a model applies before counting: ``strip`` removes fields, ``set`` forces them,
``completion_limit`` caps the completion budget of every route (llama-swap's stripParams and
setParams, plus the budget cap clients that always ask for 32000 tokens need)."""

from __future__ import annotations

import copy
from typing import Any

from llmgw.api.endpoints import Endpoint
from llmgw.config import ModelConfig


def apply_filters(model: ModelConfig, endpoint: Endpoint, data: dict[str, Any]) -> bool:
    """Change ``data`` in place; True when anything was applied (the body must then be re-encoded)."""
    if not (model.strip_fields or model.set_fields or model.completion_limit is not None):
        return False
    for key in model.strip_fields:
        data.pop(key, None)
    for key, value in model.set_fields:
        data[key] = copy.deepcopy(value)
    if model.completion_limit is not None:
        endpoint.cap_budget(data, model.completion_limit)
    return True
