"""What /api/tags, /api/show and /api/ps say about a model, from its GGUF header and its config.

Pure functions of a :class:`~llmgw.modelfile.ModelFile` (None when the file cannot be read: every
field then has a plain fallback, so a listed model never fails /api/show, which would abort
GitHub Copilot's whole model list).

Capabilities are heuristics, as Ollama's own are (it reads its Go templates):

* ``completion``: a variant serves chat or completions and is not started for embeddings
  or rerank (``--embeddings``, ``--reranking``);
* ``embedding``: a variant started with ``--embeddings`` serves embeddings, or the GGUF has a
  pooling type (an embedding model);
* ``tools`` / ``thinking``: the GGUF chat template mentions ``tools`` / thinking markers
  (``enable_thinking``, ``<think>``, ``reasoning_content``, ``thinking``), or the model is gpt-oss;
* ``vision``: a variant has ``--mmproj``, or the GGUF a vision encoder;
* ``insert``: the GGUF has fill-in-the-middle tokens (what llama-server's /infill needs).

The digest is not the file's sha256 (hashing gigabytes per listing is out of the question): it
is the sha256 of the file's real path, size and modification time, so it changes when the file does.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

from llmgw.config import ModelConfig, Variant
from llmgw.modelfile import ModelFile, model_path

_EMBEDDING_FLAGS = frozenset({"--embedding", "--embeddings"})
_NOT_GENERATION_FLAGS = _EMBEDDING_FLAGS | {"--reranking", "--rerank"}
_PROJECTOR_FLAGS = ("-mm", "--mmproj")
_THINKING_MARKS = ("enable_thinking", "<think>", "reasoning_content", "thinking")
_SHORT_ARRAY = 5  # longer arrays show as [] in model_info, as Ollama shows them without "verbose"


def file_of(model: ModelConfig) -> str | None:
    """The model's GGUF file: the first variant's ``-m``."""
    for variant in model.variants:
        path = model_path(variant.args)
        if path:
            return path
    return None


def projector_of(model: ModelConfig) -> str | None:
    for variant in model.variants:
        path = _flag(variant.args, _PROJECTOR_FLAGS)
        if path:
            return path
    return None


def _flag(args: Sequence[str], names: Sequence[str]) -> str | None:
    items = list(args)
    for i, arg in enumerate(items):
        name, has_value, value = arg.partition("=")
        if name in names:
            return value if has_value else (items[i + 1] if i + 1 < len(items) else None)
    return None


def _flags(variant: Variant) -> set[str]:
    return {arg.partition("=")[0] for arg in variant.args}


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 268098176 is ``268.10M``, 8030261248 is ``8.0B``."""
    if n >= 1_000_000_000:
        value = n / 1e9
        return f"{value:.0f}B" if value == int(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1e6
        return f"{value:.0f}M" if value == int(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}K"
    return str(n)


def details(info: ModelFile | None, projector: bool) -> dict[str, Any]:
    family = info.architecture if info is not None else ""
    families = [family] if family else []
    if projector:
        families.append("clip")
    size = ""
    if info is not None:
        label = info.metadata.get("general.size_label")
        size = human_number(info.parameters) if info.parameters else (label if isinstance(label, str) else "")
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": families,
        "parameter_size": size,
        "quantization_level": info.quantization if info is not None else "",
    }


def digest(info: ModelFile | None, model: ModelConfig) -> str:
    """64 hex digits that change when the model file does (not the file's own hash: see the module)."""
    if info is not None:
        identity = f"{os.path.realpath(info.path)}\0{info.size}\0{info.mtime!r}"
    else:
        identity = "\0".join([model.name, *model.variants[0].args])
    return hashlib.sha256(identity.encode()).hexdigest()


def capabilities(model: ModelConfig, info: ModelFile | None) -> list[str]:
    found: list[str] = []
    generation = any(
        variant.serves("chat") or variant.serves("completions")
        for variant in model.variants
        if not _flags(variant) & _NOT_GENERATION_FLAGS
    )
    pooling = info is not None and info.arch("pooling_type") is not None
    embedding = pooling or any(
        variant.serves("embeddings") and _flags(variant) & _EMBEDDING_FLAGS for variant in model.variants
    )
    if generation and not pooling:
        found.append("completion")
    if embedding:
        found.append("embedding")
    template = (info.chat_template if info is not None else None) or ""
    if "completion" in found and "tools" in template:
        found.append("tools")
    if "completion" in found and (
        any(mark in template for mark in _THINKING_MARKS) or (info is not None and info.architecture == "gptoss")
    ):
        found.append("thinking")
    if projector_of(model) or (info is not None and info.arch("vision.block_count") is not None):
        found.append("vision")
    if info is not None and {"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id"} <= set(
        info.metadata
    ):
        found.append("insert")
    return found or ["completion"]


def _value(value: Any) -> Any:
    """A metadata value as JSON can hold it (a NaN float cannot)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_value(item) for item in value]
    return value


def model_info(info: ModelFile | None, context: int) -> dict[str, Any]:
    """The GGUF's metadata as Ollama shows it, ``<arch>.context_length`` capped at ``context`` (the
    largest variant's): clients size their prompts from it (Copilot does), and a model trained for
    128k tokens served with 8k would get prompts no variant holds."""
    if info is None:
        return {"general.architecture": "unknown", "unknown.context_length": context}
    shown: dict[str, Any] = {}
    for key, value in info.metadata.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        if isinstance(value, list) and info.array_lengths.get(key, len(value)) > _SHORT_ARRAY:
            shown[key] = []
        else:
            shown[key] = _value(value)
    shown["general.parameter_count"] = info.parameters
    arch = info.architecture or "unknown"
    shown.setdefault("general.architecture", arch)
    trained = info.context_length
    shown[f"{arch}.context_length"] = min(trained, context) if trained else context
    return shown


def parameters(context: int) -> str:
    """Ollama's ``parameters`` text: one padded ``key value`` line per default it would apply."""
    return f"{'num_ctx':<30} {context}"


def modelfile(name: str, path: str | None) -> str:
    source = path or "(no GGUF file found in the variants' arguments)"
    return f"# Modelfile generated by llmgw\n# FROM {name}\n\nFROM {source}\n"


def license_of(info: ModelFile | None) -> str:
    if info is None:
        return ""
    value = info.metadata.get("general.license")
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    return value if isinstance(value, str) else ""
