"""Memory a variant will use, estimated from its GGUF header and its launch arguments.

For a variant never measured, so that placement is right on its first load; a declared or a
measured figure always wins over this one. Pure: a :class:`~llmgw.modelfile.ModelFile` and the
arguments in, MiB out.

The rule follows llama.cpp (llama-server 0.10068, build 571d0d5), checked against its own log
lines and the RSS measured on gemma-3 270M in 7 configurations (the estimate was 1-8% high):

* **weights**: the tensors' sizes, from the header; with offload devices (``--device``, RPC
  workers), each layer's tensors go to the device llama.cpp assigns it (``--tensor-split``
  shares, even by default), the output layer to the last device (a copy of the token embedding
  when the model ties them), and the input embedding stays on the host;
* **KV cache**, per layer on the layer's device: ``cells x n_head_kv x (key_length x bytes(-ctk)
  + value_length x bytes(-ctv))``. Full-attention layers hold the whole context; sliding-window
  layers (gemma-2/3, gpt-oss...: the pattern is hard-coded per architecture in llama.cpp unless
  the file says ``sliding_window_pattern``) hold ``min(n_ctx, pad256(window x slots + ubatch))``
  cells with a unified cache, ``slots x min(n_ctx / slots, pad256(window + ubatch))`` without,
  the whole context with ``--swa-full``;
* **compute buffers**, per device: ``ubatch x 4 B x (10 n_embd + 2 n_ff)`` plus the attention
  masks, ``ubatch x 2 B`` per KV cell of each kind of layer (full, sliding);
* **overhead** on the host: 100 MiB (process, libraries, vocabulary, HTTP, output buffer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmgw.config import Variant
from llmgw.config.budget import TOTAL_POOL
from llmgw.modelfile import ModelFile

MIB = 1024 * 1024
OVERHEAD_MIB = 100.0
_PAD = 256
_AUTO_SLOTS = 4  # llama-server's -np auto: 4 slots sharing one unified KV cache
_DEFAULT_UBATCH = 512
_DEFAULT_BATCH = 2048

# Bytes per element of the KV cache types llama-server accepts for -ctk / -ctv.
_CACHE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "iq4_nl": 18 / 32,
}

# Every n-th layer attends to the whole context, the others to a sliding window: hard-coded per
# architecture in llama.cpp (set_swa_pattern); the file's sliding_window_pattern overrides it.
# A window size here is for architectures whose window is not in the file either.
_SWA_PATTERN: dict[str, tuple[int, int | None]] = {
    "gemma2": (2, None),
    "gemma3": (6, None),
    "gemma3n": (5, None),
    "gemma-embedding": (6, None),
    "cohere2": (4, None),
    "exaone4": (4, None),
    "gpt-oss": (2, None),
    "llama4": (4, 8192),
}

_FLAGS_WITH_VALUE = {
    "-c": "ctx",
    "--ctx-size": "ctx",
    "-np": "slots",
    "--parallel": "slots",
    "-ctk": "ctk",
    "--cache-type-k": "ctk",
    "-ctv": "ctv",
    "--cache-type-v": "ctv",
    "-ub": "ubatch",
    "--ubatch-size": "ubatch",
    "-b": "batch",
    "--batch-size": "batch",
    "-ngl": "ngl",
    "--gpu-layers": "ngl",
    "--n-gpu-layers": "ngl",
    "-ts": "split",
    "--tensor-split": "split",
}
_SWITCHES = {"-kvu": "kvu", "--kv-unified": "kvu", "-no-kvu": "no_kvu", "--no-kv-unified": "no_kvu"}


@dataclass(frozen=True)
class LaunchShape:
    """What an engine's arguments say about its memory."""

    context: int  # -c, total over the slots (0: the model's own)
    slots: int  # -np (0: auto)
    unified: bool  # one KV cache shared by the slots
    cache_k: str = "f16"
    cache_v: str = "f16"
    swa_full: bool = False
    ubatch: int = _DEFAULT_UBATCH
    gpu_layers: int | None = None  # -ngl (None: auto, every layer and the output on the devices)
    split: tuple[float, ...] | None = None  # -ts

    @classmethod
    def of(cls, args: Sequence[str], context: int) -> LaunchShape:
        """Read from llama-server's arguments (the last occurrence of a flag wins, as there);
        ``context``: the variant's, used when the arguments set none."""
        values: dict[str, str] = {}
        switches: dict[str, bool] = {}
        items = list(args)
        for i, arg in enumerate(items):
            name, has_inline, inline = arg.partition("=")
            if name in _FLAGS_WITH_VALUE:
                value = inline if has_inline else (items[i + 1] if i + 1 < len(items) else "")
                values[_FLAGS_WITH_VALUE[name]] = value
            elif name in _SWITCHES:
                switches["kvu"] = _SWITCHES[name] == "kvu"
            elif name == "--swa-full":
                switches["swa_full"] = True
        slots = _int(values.get("slots"), 0)
        slots = 0 if slots < 0 else slots
        batch = _int(values.get("batch"), _DEFAULT_BATCH)
        ubatch = min(_int(values.get("ubatch"), _DEFAULT_UBATCH), batch) or _DEFAULT_UBATCH
        ngl = values.get("ngl")
        gpu_layers = _int(ngl, -1) if ngl not in (None, "auto", "all") else None
        return cls(
            context=_int(values.get("ctx"), context),
            slots=slots,
            unified=switches.get("kvu", slots == 0),
            cache_k=values.get("ctk", "f16").lower(),
            cache_v=values.get("ctv", "f16").lower(),
            swa_full=switches.get("swa_full", False),
            ubatch=ubatch,
            gpu_layers=None if gpu_layers is None or gpu_layers < 0 else gpu_layers,
            split=_split(values.get("split")),
        )


@dataclass(frozen=True)
class Estimate:
    """MiB on the host that runs llama-server, and on each offload device in ``--device`` order."""

    host: float
    devices: tuple[float, ...] = ()
    weights: float = 0.0  # of which: the weights, all copies included
    kv: float = 0.0  # the KV cache
    compute: float = 0.0  # compute buffers, every device's

    @property
    def total(self) -> float:
        return self.host + sum(self.devices)

    def __str__(self) -> str:
        return (
            f"{self.total:.0f} MiB (weights {self.weights:.0f}, KV cache {self.kv:.0f}, "
            f"compute {self.compute:.0f}, overhead {OVERHEAD_MIB:.0f})"
        )


def estimate(model: ModelFile, shape: LaunchShape, devices: int = 0) -> Estimate:
    """What an engine running ``model`` with ``shape`` uses, spread over ``devices`` offload devices."""
    n_layer = model.arch_int("block_count") or len(model.layer_bytes)
    n_ctx = _pad(shape.context if shape.context > 0 else (model.context_length or 4096))
    slots = shape.slots or _AUTO_SLOTS
    per_layer_kv = _kv_bytes_per_cell(model, n_layer, shape)
    cells = _cells(model, n_layer, n_ctx, slots, shape)
    kv = [cells[il] * per_layer_kv[il] for il in range(n_layer)]
    layer_weights = [model.layer_bytes[il] if il < len(model.layer_bytes) else 0 for il in range(n_layer)]
    others = dict(model.other_bytes)
    embedding = others.pop("token_embd.weight", 0)
    output = others.pop("output.weight", None)
    output_layer = (embedding if output is None else output) + others.pop("output_norm.weight", 0)
    rest = sum(others.values())  # odd tensors (rope factors...): on the host
    swa = _swa_layers(model, n_layer) if _window(model) is not None else [False] * n_layer
    masks = [n_ctx, *[cells[il] for il in range(n_layer) if swa[il]][:1]]  # full layers', sliding ones'
    compute = _compute_bytes(model, shape.ubatch, masks)

    if devices <= 0:
        weights = model.tensor_bytes
        host_only = (weights + sum(kv) + compute) / MIB + OVERHEAD_MIB
        return Estimate(host_only, (), weights / MIB, sum(kv) / MIB, compute / MIB)

    placed = _assign_layers(n_layer, devices, shape)
    host = float(embedding + rest)
    on_device = [0.0] * devices
    for il in range(n_layer):
        where = placed[il]
        if where is None:
            host += layer_weights[il] + kv[il]
        else:
            on_device[where] += layer_weights[il] + kv[il]
    output_device = placed[n_layer]
    if output_device is None:
        # Not offloaded: a tied output reads the host's embedding itself, no second copy.
        host += output_layer if output is not None else output_layer - embedding
    else:
        on_device[output_device] += output_layer
    buffers = len({where for where in placed}) * compute  # one per device used (None: the host)
    for device in {where for where in placed if where is not None}:
        on_device[device] += compute
    if any(where is None for where in placed[:n_layer]):
        host += compute
    weights = model.tensor_bytes + (embedding if output is None and output_device is not None else 0)
    return Estimate(
        host / MIB + OVERHEAD_MIB,
        tuple(mib / MIB for mib in on_device),
        weights / MIB,
        sum(kv) / MIB,
        buffers / MIB,
    )


def _local_gpu_pools(variant: Variant) -> list[str]:
    return [pool for pool in variant.pools if pool.startswith("gpu") and pool[3:].isdigit()]


def _local_devices(variant: Variant, shape: LaunchShape) -> int:
    """Offload devices on the engine's own host: its ``local_devices`` beside RPC workers, else
    its ``gpuN`` pools (unless ``-ngl 0`` keeps every layer on the host)."""
    if variant.rpc:
        return len(variant.local_devices)
    return len(_local_gpu_pools(variant)) if shape.gpu_layers != 0 else 0


def variant_estimate(model: ModelFile, variant: Variant) -> Estimate:
    """The estimate for a variant: its arguments, and its devices, local then its RPC workers'."""
    shape = LaunchShape.of(variant.launch_args, variant.context)
    devices = _local_devices(variant, shape) + sum(len(worker.devices) for worker in variant.rpc)
    return estimate(model, shape, devices)


def pool_figures(model: ModelFile, variant: Variant) -> dict[str, float]:
    """The estimate in the variant's memory pools (MiB per pool, as placement counts them).

    Offload devices, in ``--device`` order: the variant's local devices (its ``gpuN`` pools, in
    order; without them, its ``local_devices`` count on the host), then each RPC worker's, summed
    into the worker's pool. The host part goes to ``total`` (RSS plus GPU), else ``ram``. A
    variant without local pools gets its host part under ``total``, shown but not enforced.
    """
    pools = variant.pools
    gpu_pools = _local_gpu_pools(variant)
    locals_ = _local_devices(variant, LaunchShape.of(variant.launch_args, variant.context))
    figures = variant_estimate(model, variant)
    out: dict[str, float] = {}
    workers = {worker.name for worker in variant.rpc}
    local_pools = [pool for pool in pools if pool not in workers]
    if TOTAL_POOL in local_pools or not local_pools:
        host_pool: str | None = TOTAL_POOL
    else:
        host_pool = "ram" if "ram" in local_pools else None

    def add(pool: str | None, mib: float) -> None:
        if pool is not None:
            out[pool] = out.get(pool, 0.0) + mib

    add(host_pool, figures.host)
    for index, mib in enumerate(figures.devices[:locals_]):
        local_pool = gpu_pools[index] if index < len(gpu_pools) else None
        add(TOTAL_POOL if host_pool == TOTAL_POOL else (local_pool or host_pool), mib)
    at = locals_
    for worker in variant.rpc:
        share = sum(figures.devices[at : at + len(worker.devices)])
        at += len(worker.devices)
        add(worker.name if worker.name in pools else None, share)
    return {pool: round(mib, 1) for pool, mib in out.items()}


# ------------------------------------------------------------------------------ the parts


def _kv_bytes_per_cell(model: ModelFile, n_layer: int, shape: LaunchShape) -> list[float]:
    heads = model.arch("attention.head_count")
    heads_kv = model.arch("attention.head_count_kv")
    embd = model.arch_int("embedding_length") or 0
    first_heads = _per_layer(heads, n_layer)[0] if n_layer else 0
    fallback = embd // first_heads if first_heads else 0
    k_len = model.arch_int("attention.key_length") or fallback
    v_len = model.arch_int("attention.value_length") or fallback
    # Some architectures give sliding-window layers heads of their own size.
    k_swa = model.arch_int("attention.key_length_swa") or k_len
    v_swa = model.arch_int("attention.value_length_swa") or v_len
    b_k = _CACHE_BYTES.get(shape.cache_k, 2.0)
    b_v = _CACHE_BYTES.get(shape.cache_v, 2.0)
    kv_heads = _per_layer(heads_kv if heads_kv is not None else heads, n_layer)
    swa = _swa_layers(model, n_layer) if _window(model) is not None else [False] * n_layer
    return [
        kv_heads[il] * ((k_swa * b_k + v_swa * b_v) if swa[il] else (k_len * b_k + v_len * b_v))
        for il in range(n_layer)
    ]


def _cells(model: ModelFile, n_layer: int, n_ctx: int, slots: int, shape: LaunchShape) -> list[int]:
    """KV cells each layer holds (all slots together)."""
    swa = _swa_layers(model, n_layer)
    window = _window(model)
    if window is None or shape.swa_full or not any(swa):
        return [n_ctx] * n_layer
    if shape.unified:
        swa_cells = min(n_ctx, _pad(window * slots + shape.ubatch))
    else:
        swa_cells = slots * min(n_ctx // slots, _pad(window + shape.ubatch))
    return [swa_cells if swa[il] else n_ctx for il in range(n_layer)]


def _window(model: ModelFile) -> int | None:
    window = model.arch_int("attention.sliding_window")
    if window:
        return window
    known = _SWA_PATTERN.get(model.architecture)
    return known[1] if known is not None else None


def _swa_layers(model: ModelFile, n_layer: int) -> list[bool]:
    """Which layers use the sliding window (llama.cpp: layer il does unless il % n == n - 1)."""
    pattern = model.arch("attention.sliding_window_pattern")
    if isinstance(pattern, list) and pattern and all(isinstance(x, bool) for x in pattern):
        return [bool(pattern[il]) if il < len(pattern) else bool(pattern[-1]) for il in range(n_layer)]
    period = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else None
    if period is None:
        known = _SWA_PATTERN.get(model.architecture)
        if known is None:
            return [False] * n_layer
        period = known[0]
    return [period == 0 or il % period < period - 1 for il in range(n_layer)]


def _compute_bytes(model: ModelFile, ubatch: int, masks: list[int]) -> float:
    embd = model.arch_int("embedding_length") or 0
    ff_values = _per_layer(model.arch("feed_forward_length"), 1)
    ff = max(ff_values) if ff_values and max(ff_values) > 0 else 4 * embd
    # One f16 attention mask per kind of layer (full, sliding): a row of ubatch per KV cell.
    mask = ubatch * 2 * sum(masks)
    return ubatch * 4 * (10 * embd + 2 * ff) + mask


def _assign_layers(n_layer: int, devices: int, shape: LaunchShape) -> list[int | None]:
    """The device of each layer (and, last, of the output layer), or None for the host: llama.cpp
    offloads the last ``-ngl`` of the ``n_layer + 1`` (layers, then output), splitting them by the
    cumulative ``--tensor-split`` shares."""
    offloaded = n_layer + 1 if shape.gpu_layers is None else min(shape.gpu_layers, n_layer + 1)
    first = n_layer + 1 - offloaded
    shares = list(shape.split or ())[:devices]
    shares += [0.0] * (devices - len(shares))
    if not shape.split or not any(shares):
        shares = [1.0] * devices
    total = sum(shares)
    bounds = []
    running = 0.0
    for share in shares:
        running += share / total
        bounds.append(running)
    placed: list[int | None] = []
    for il in range(n_layer + 1):
        if il < first:
            placed.append(None)
            continue
        at = (il - first) / offloaded
        device = next((d for d, bound in enumerate(bounds) if at < bound), devices - 1)
        placed.append(device)
    return placed


def _per_layer(value: object, n_layer: int) -> list[int]:
    """A hyperparameter given once or per layer (some architectures vary it per layer)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * max(n_layer, 1)
    if isinstance(value, list):
        numbers = [x for x in value if isinstance(x, int) and not isinstance(x, bool)]
        if numbers:
            return [numbers[il] if il < len(numbers) else numbers[-1] for il in range(max(n_layer, 1))]
    return [0] * max(n_layer, 1)


def _pad(n: int) -> int:
    return (n + _PAD - 1) // _PAD * _PAD


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _split(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        shares = tuple(float(part) for part in text.replace("/", ",").split(","))
    except ValueError:
        return None
    return shares if shares and all(share >= 0 for share in shares) else None
