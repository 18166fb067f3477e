"""RPC workers in the config: what a variant's command line gets, its pools, and one precise
error for each mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_config import base_config, config_text, load_error, load_text, with_value

from llmgw.config import RpcWorker

WORKERS = {
    "w1": {"address": "10.0.0.2:50052", "agent": "http://10.0.0.2:7790", "memory": 8000},
    "w2": {"address": "box2:50052", "devices": ["CUDA0", "CUDA1"], "api_key": "k2"},
}


def rpc_config(**variant: Any) -> dict[str, Any]:
    cfg = with_value(base_config(), ("server", "rpc_workers"), WORKERS)
    cfg["server"]["memory_budget"] = {"ram": 20000}
    cfg["models"][0]["variants"][0].update(variant)
    return cfg


def test_workers_become_rpc_device_and_split_arguments(tmp_path: Path) -> None:
    config = load_text(tmp_path, config_text(rpc_config(rpc=["w1", "w2"], tensor_split=[1, 2, 2])))
    assert config.server.rpc_workers == (
        RpcWorker("w1", "10.0.0.2:50052", ("CPU",), "http://10.0.0.2:7790", None, 8000.0),
        RpcWorker("w2", "box2:50052", ("CUDA0", "CUDA1"), None, "k2", None),
    )
    variant = config.models[0].variants[0]
    assert variant.launch_args == (
        "-c", "4096",
        "--rpc", "10.0.0.2:50052,box2:50052",
        "--device", "RPC0,RPC1,RPC2",  # explicit: a worker that cannot be reached fails the start at once
        "--tensor-split", "1,2,2",
    )  # fmt: skip
    # w1 lends memory: a pool of its own, besides the host's; w2 declares none: not counted.
    assert variant.pools == ("ram", "w1") and config.server.pools == (("ram", 20000.0), ("w1", 8000.0))


def test_a_model_s_workers_cascade_and_local_devices_come_first(tmp_path: Path) -> None:
    cfg = rpc_config(local_devices=["CUDA0"], tensor_split=[2, 1])
    cfg["models"][0]["rpc"] = ["w1"]
    variant = load_text(tmp_path, config_text(cfg)).models[0].variants[0]
    assert variant.rpc_args == ("--rpc", "10.0.0.2:50052", "--device", "CUDA0,RPC0", "--tensor-split", "2,1")


def test_without_rpc_nothing_changes(tmp_path: Path) -> None:
    variant = load_text(tmp_path, config_text(rpc_config())).models[0].variants[0]
    assert variant.launch_args == ("-c", "4096") and variant.rpc == () and variant.pools == ("ram",)


def test_the_launch_fingerprint_covers_the_workers(tmp_path: Path) -> None:
    one = load_text(tmp_path, config_text(rpc_config(rpc=["w1"]))).models[0].variants[0]
    two = load_text(tmp_path, config_text(rpc_config(rpc=["w1", "w2"]))).models[0].variants[0]
    plain = load_text(tmp_path, config_text(base_config())).models[0].variants[0]
    assert len({one.fingerprint, two.fingerprint, plain.fingerprint}) == 3


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("server", "rpc_workers"), {}, "server.rpc_workers must be a table of NAME = {"),
        (("server", "rpc_workers", "w1", "address"), "10.0.0.2", 'server.rpc_workers.w1.address must be a "host:port"'),
        (("server", "rpc_workers", "w1", "address"), "[::1]:50052", "llama.cpp takes no IPv6 here"),
        (("server", "rpc_workers", "w1", "address"), "h:0", "has an invalid port"),
        (("server", "rpc_workers", "w2", "address"), "10.0.0.2:50052", "address repeats the address of rpc_workers.w1"),
        (("server", "rpc_workers", "w1", "agent"), "ftp://x:1", "agent must be an http:// or https:// URL"),
        (("server", "rpc_workers", "w1", "devices"), [], "devices must not be an empty list"),
        (("server", "rpc_workers", "w1", "devices"), ["CUDA 0"], 'must be a llama.cpp device name like "CUDA0"'),
        (("server", "rpc_workers", "w1", "memory"), 0, "server.rpc_workers.w1.memory must be a positive number"),
        (("server", "rpc_workers", "ram"), {"address": "h:1"}, 'a worker "ram", which is also a memory pool'),
        (("models", 0, "variants", 0, "rpc"), ["w3"], 'variants[1].rpc[1] is not a worker of server.rpc_workers: "w3"'),
        (("models", 0, "variants", 0, "rpc"), ["w1", "w1"], 'rpc[2] repeats "w1"'),
        (("models", 0, "variants", 0, "rpc"), [], "rpc must not be an empty list"),
        (("models", 0, "variants", 0, "tensor_split"), [1, 1], "tensor_split has 2 share(s), but the variant has 1"),
        (("models", 0, "variants", 0, "tensor_split"), [0], "tensor_split must give some device a share above 0"),
        (("models", 0, "variants", 0, "tensor_split"), [-1], "tensor_split[1] must be a number >= 0"),
        (("models", 0, "variants", 0, "args"), ["-c", 4096, "-ts", "1"], "variants[1].args has -ts, but rpc is set"),
        (("models", 0, "variants", 0, "args"), ["--device=CUDA0"], "variants[1].args has --device, but rpc is set"),
        (("models", 0, "variants", 0, "memory"), {"w1": 9000}, "declares 9000 MiB on w1, more than"),
    ],
)
def test_mistakes_name_their_place(tmp_path: Path, path: tuple[Any, ...], value: Any, expected: str) -> None:
    cfg = with_value(rpc_config(rpc=["w1"]), path, value)
    assert expected in load_error(tmp_path, config_text(cfg))


def test_split_keys_need_workers(tmp_path: Path) -> None:
    message = load_error(tmp_path, config_text(rpc_config(tensor_split=[1])))
    assert 'models[1] "m": variants[1].tensor_split needs rpc = { ... }' in message
