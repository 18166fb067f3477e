"""The memory estimate from a GGUF header and the launch arguments (llmgw.scheduling.estimate).

The KV figures below are llama-server's own (``llama_kv_cache: size = ...`` at ``-lv 4``) for
gemma-3 270M, whose shape the synthetic file copies; the estimate must give them exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llmgw.config import RpcWorker, Timeouts, Variant
from llmgw.modelfile import ModelFile, read
from llmgw.scheduling.estimate import MIB, OVERHEAD_MIB, LaunchShape, estimate, pool_figures

LAYERS = 18
LAYER_FLOATS = 1024  # f32 elements per layer: 4 KiB of weights each
EMBD_FLOATS = 64 * 1024  # 256 KiB of token embedding


def gemma_like(
    path: Path, *, tied: bool = True, arch: str = "gemma3", window: int | None = 512, **extra: Any
) -> ModelFile:
    """gemma-3 270M's attention shape: 18 layers, one KV head of 256 + 256, a 512-token window."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(32768)
    writer.add_block_count(LAYERS)
    writer.add_embedding_length(640)
    writer.add_feed_forward_length(2048)
    writer.add_head_count(4)
    writer.add_head_count_kv(1)
    writer.add_key_length(256)
    writer.add_value_length(256)
    if window is not None:
        writer.add_sliding_window(window)
    for key, value in extra.items():
        getattr(writer, f"add_{key}")(value)
    writer.add_tensor("token_embd.weight", np.zeros((EMBD_FLOATS,), dtype=np.float32))
    if not tied:
        writer.add_tensor("output.weight", np.zeros((EMBD_FLOATS // 2,), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.zeros((256,), dtype=np.float32))
    for il in range(LAYERS):
        writer.add_tensor(f"blk.{il}.attn_q.weight", np.zeros((LAYER_FLOATS // 2,), dtype=np.float32))
        writer.add_tensor(f"blk.{il}.ffn_up.weight", np.zeros((LAYER_FLOATS // 2,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return read(str(path))


def kv_mib(model: ModelFile, args: list[str]) -> float:
    return round(estimate(model, LaunchShape.of(args, 4096)).kv, 2)


@pytest.mark.parametrize(
    ("args", "kv"),
    [
        (["-c", "2048"], 6.0 + 30.0),
        (["-c", "8192"], 24.0 + 37.5),
        (["-c", "32768"], 96.0 + 37.5),
        (["-c", "32768", "-np", "1"], 96.0 + 15.0),
        (["-c", "32768", "--swa-full"], 96.0 + 480.0),
        (["-c", "8192", "-ctk", "q8_0", "-ctv", "q8_0"], 12.75 + 19.92),
        (["-np", "2", "-c", "4096"], 12.0 + 30.0),
        (["-np", "2", "-c", "4096", "-kvu"], 12.0 + 22.5),  # by the rule: 1536 cells (not measured)
    ],
)
def test_the_kv_cache_is_what_llama_server_allocates(tmp_path: Path, args: list[str], kv: float) -> None:
    model = gemma_like(tmp_path / "g.gguf")
    assert kv_mib(model, args) == pytest.approx(kv, abs=0.01)


def test_without_a_sliding_window_every_layer_holds_the_whole_context(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "l.gguf", arch="llama", window=None)
    assert kv_mib(model, ["-c", "8192"]) == pytest.approx(18 * 8.0)  # 1 KiB per cell and layer


def test_the_file_s_own_pattern_wins_over_the_architecture_s(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "p.gguf", sliding_window_pattern=2)  # every 2nd layer full: 9 and 9
    assert kv_mib(model, ["-c", "8192"]) == pytest.approx(9 * 8.0 + 9 * 2.5)


def test_the_context_defaults_to_the_variant_s_and_a_zero_to_the_model_s(tmp_path: Path) -> None:
    assert LaunchShape.of(["-m", "x"], 4096).context == 4096
    model = gemma_like(tmp_path / "g.gguf")
    assert (
        estimate(model, LaunchShape.of(["-c", "0"], 4096)).total
        == estimate(model, LaunchShape.of(["-c", "32768"], 4096)).total
    )


def test_arguments_are_read_as_llama_server_reads_them() -> None:
    shape = LaunchShape.of(["--ctx-size=8192", "-np", "3", "-ub", "4096", "-b", "1024", "-ngl", "10", "-ts", "3,1"], 1)
    assert (shape.context, shape.slots, shape.unified, shape.ubatch, shape.gpu_layers) == (8192, 3, False, 1024, 10)
    assert shape.split == (3.0, 1.0)
    auto = LaunchShape.of(["-np", "-1", "-ngl", "auto"], 1)
    assert (auto.slots, auto.unified, auto.gpu_layers) == (0, True, None)


def test_the_parts_add_up(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "g.gguf")
    for devices in (0, 1, 3):
        parts = estimate(model, LaunchShape.of(["-c", "8192"], 8192), devices)
        assert parts.total == pytest.approx(parts.weights + parts.kv + parts.compute + OVERHEAD_MIB)


def test_layers_are_split_over_devices_as_llama_cpp_assigns_them(tmp_path: Path) -> None:
    """Two devices, even split: layers 0-9 on the first and 10-17 plus the output on the second
    (19 places, cut at 0.5); the input embedding stays on the host; a tied output is a copy."""
    model = gemma_like(tmp_path / "g.gguf")
    shape = LaunchShape.of(["-c", "2048"], 2048)
    split = estimate(model, shape, devices=2)
    layer = LAYER_FLOATS * 4 / MIB
    embd = EMBD_FLOATS * 4 / MIB
    kv_full, kv_swa = 2048 * 1024 / MIB, 2048 * 1024 / MIB  # -c 2048: the window covers it all
    first, second = split.devices
    compute = split.compute / 2  # one buffer per device
    # Layers 0..9: full attention at 5; 10..17: full at 11 and 17.
    assert first == pytest.approx(10 * layer + 9 * kv_swa + 1 * kv_full + compute)
    assert second == pytest.approx(8 * layer + 6 * kv_swa + 2 * kv_full + embd + 256 * 4 / MIB + compute)
    assert split.host == pytest.approx(embd + OVERHEAD_MIB)
    uneven = estimate(model, LaunchShape.of(["-c", "2048", "-ts", "3,1"], 2048), devices=2)
    assert uneven.devices[0] > uneven.devices[1] - embd  # 15 layers against 3


def test_an_untied_output_goes_to_the_last_device_and_no_embedding_copy(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "u.gguf", tied=False)
    one = estimate(model, LaunchShape.of(["-c", "2048"], 2048), devices=1)
    local = estimate(model, LaunchShape.of(["-c", "2048"], 2048))
    assert one.weights == local.weights  # no copy of the embedding
    assert one.total == pytest.approx(local.total)  # the same parts, only elsewhere
    assert one.host == pytest.approx(EMBD_FLOATS * 4 / MIB + OVERHEAD_MIB)


def test_no_gpu_layers_keeps_everything_on_the_host(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "g.gguf")
    shape = LaunchShape.of(["-c", "2048", "-ngl", "0"], 2048)
    kept = estimate(model, shape, devices=2)
    assert kept.devices == (0.0, 0.0)


def variant(pools: tuple[str, ...], args: list[str], rpc: tuple[RpcWorker, ...] = ()) -> Variant:
    timeouts = Timeouts(5, 60, 0, 5)
    return Variant(
        1, "llama-server", ("-m", "g.gguf", *args), 2048, "http://127.0.0.1:1", timeouts, pools=pools, rpc=rpc
    )


def test_the_estimate_lands_in_the_variant_s_pools(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "g.gguf")
    whole = estimate(model, LaunchShape.of(["-c", "2048"], 2048)).total
    assert pool_figures(model, variant(("total",), ["-c", "2048"])) == {"total": pytest.approx(whole, abs=0.1)}
    assert pool_figures(model, variant(("ram",), ["-c", "2048"])) == {"ram": pytest.approx(whole, abs=0.1)}
    assert pool_figures(model, variant((), ["-c", "2048"])) == {"total": pytest.approx(whole, abs=0.1)}
    on_gpu = pool_figures(model, variant(("gpu0", "ram"), ["-c", "2048"]))
    assert set(on_gpu) == {"gpu0", "ram"} and on_gpu["ram"] == pytest.approx(
        EMBD_FLOATS * 4 / MIB + OVERHEAD_MIB, abs=0.1
    )


def test_rpc_workers_count_in_their_own_pools(tmp_path: Path) -> None:
    model = gemma_like(tmp_path / "g.gguf")
    w1 = RpcWorker("w1", "10.0.0.2:50052", memory=1000)
    w2 = RpcWorker("w2", "10.0.0.3:50052", devices=("CUDA0", "CUDA1"), memory=1000)
    w3 = RpcWorker("w3", "10.0.0.4:50052")  # no memory declared: not a pool
    figures = pool_figures(model, variant(("ram", "w1", "w2"), ["-c", "2048"], (w1, w2, w3)))
    split = estimate(model, LaunchShape.of(["-c", "2048"], 2048), devices=4)
    assert figures["w1"] == pytest.approx(split.devices[0], abs=0.1)
    assert figures["w2"] == pytest.approx(split.devices[1] + split.devices[2], abs=0.1)
    assert figures["ram"] == pytest.approx(split.host, abs=0.1)
    assert set(figures) == {"ram", "w1", "w2"}
