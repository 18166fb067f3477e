"""The routes that describe the server: ``/health``, ``/props``, ``/models``, ``/metrics``, and the
few llama-server routes the fake only answers with their fixed bodies."""

from __future__ import annotations

import json

from ..errors import ApiError, bad_request, not_supported, server_error
from ..options import N_CTX_TRAIN
from .base import BaseHandler

__all__ = [
    "AudioHandler",
    "HealthHandler",
    "LoraAdaptersHandler",
    "MetricsHandler",
    "ModelsHandler",
    "PropsHandler",
]


class HealthHandler(BaseHandler):
    """``/health``: what the gateway polls to know the engine is up (``--fake-health-flap`` breaks it)."""

    def get(self) -> None:
        if not self.engine.healthy_now():
            raise ApiError(503, "Loading model", "unavailable_error")
        self.send_json({"status": "ok"})


DEFAULT_PARAMS = {"seed": 4294967295, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "max_tokens": -1, "n_predict": -1}


class PropsHandler(BaseHandler):
    """``/props``: the per-slot context (the gateway learns an engine's context here) and the slots."""

    def get(self) -> None:
        options = self.engine.options
        template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"
        self.send_json(
            {
                "default_generation_settings": {"params": DEFAULT_PARAMS, "n_ctx": self.engine.reported_n_ctx},
                "total_slots": len(self.engine.slots),
                "model_alias": options.served_name,
                "model_path": options.model,
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": options.metrics,
                "chat_template": template,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "build_info": "fake",
                "is_sleeping": False,
            }
        )

    def post(self) -> None:
        raise not_supported("This server does not support changing global properties. Start it with `--props`")


class ModelsHandler(BaseHandler):
    """``/v1/models`` and ``/models``: llama-server's one model, in both its listing shapes."""

    def get(self) -> None:
        options = self.engine.options
        name = options.served_name
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": [""],
            "parameter_size": "",
            "quantization_level": "",
        }
        listed = {
            "name": name,
            "model": name,
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": ["completion"],
            "parameters": "",
            "details": details,
        }
        meta = {
            "vocab_type": 1,
            "n_vocab": 32000 + 10,
            "n_ctx": self.engine.reported_n_ctx,
            "n_ctx_train": N_CTX_TRAIN,
            "n_embd": options.fake_embedding_dim,
            "n_params": 0,
            "size": 0,
            "ftype": "fake",
        }
        model = {
            "id": name,
            "aliases": [name],
            "tags": [],
            "object": "model",
            "created": self.engine.created,
            "owned_by": "llamacpp",
            "meta": meta,
        }
        self.send_json({"models": [listed], "object": "list", "data": [model]})


class MetricsHandler(BaseHandler):
    """``/metrics`` (``--metrics``): llama-server's Prometheus counters, from the fake's own runs."""

    def get(self) -> None:
        if not self.engine.options.metrics:
            raise not_supported("This server does not support metrics endpoint. Start it with `--metrics`")
        m = self.engine.metrics
        busy = sum(slot.run is not None for slot in self.engine.slots)
        rows = [
            ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", m.prompt_tokens),
            ("prompt_seconds_total", "counter", "Prompt process time", m.prompt_seconds),
            ("tokens_predicted_total", "counter", "Number of generation tokens processed.", m.predicted_tokens),
            ("tokens_predicted_seconds_total", "counter", "Predict process time", m.predicted_seconds),
            ("n_decode_total", "counter", "Total number of llama_decode() calls", m.decodes),
            ("n_tokens_max", "counter", "Largest observed n_tokens.", m.n_tokens_max),
            (
                "prompt_tokens_seconds",
                "gauge",
                "Average prompt throughput in tokens/s.",
                m.prompt_tokens / m.prompt_seconds if m.prompt_seconds else 0,
            ),
            (
                "predicted_tokens_seconds",
                "gauge",
                "Average generation throughput in tokens/s.",
                m.predicted_tokens / m.predicted_seconds if m.predicted_seconds else 0,
            ),
            ("requests_processing", "gauge", "Number of requests processing.", busy),
            ("requests_deferred", "gauge", "Number of requests deferred.", 0),
            ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call", 0),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [
                f"# HELP llamacpp:{name} {help_text}",
                f"# TYPE llamacpp:{name} {kind}",
                f"llamacpp:{name} {value}",
            ]
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish("\n".join(lines) + "\n")


class LoraAdaptersHandler(BaseHandler):
    """``/lora-adapters``: none loaded; a POST is checked as llama-server checks it."""

    def get(self) -> None:
        self.send_json([])

    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise server_error(f"[json.exception.parse_error.101] parse error: {exc}") from None
        if not isinstance(body, list):
            raise bad_request("Request body must be an array")
        self.send_json([])


class AudioHandler(BaseHandler):
    """``/v1/audio/transcriptions``: the model has no audio input."""

    def post(self) -> None:
        raise not_supported("The current model does not support audio input.")
