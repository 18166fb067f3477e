"""ConfigLoader: Lua config -> validated dataclasses, and one precise ConfigError for every mistake."""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.config import (
    DEFAULT_TIMEOUTS,
    DEFAULT_TOKENIZE_BASE_ARGS,
    Config,
    ConfigError,
    ConfigLoader,
    ModelConfig,
    ServerConfig,
    Timeouts,
    Tokenization,
    Variant,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DEMO = ROOT / "llmgw" / "demo.lua"  # packaged: python -m llmgw --demo
HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DEFAULTS = Timeouts(health_check=5.0, engine_startup=120.0, engine_idle=0.0, engine_stop=15.0)


# -- writing Lua ---------------------------------------------------------------------------------


class Raw(str):
    """Lua source inserted verbatim (expressions, 4096.0 literals, functions...)."""


DELETE = object()  # with_value(): remove the key


def lua_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\{ord(char):03d}")
        else:
            out.append(char)  # the file is UTF-8, Lua strings are bytes
    return '"' + "".join(out) + '"'


def lua(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list | tuple):
        return "{ " + ", ".join(lua(item) for item in value) + " }"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def config_text(cfg: dict[str, Any]) -> str:
    return "\n".join(f"{name} = {lua(value)}" for name, value in cfg.items()) + "\n"


def with_value(cfg: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """Deep copy of cfg with the value at path (dict keys / 0-based list indices) replaced."""
    result = copy.deepcopy(cfg)
    target: Any = result
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return result


def base_config() -> dict[str, Any]:
    """Smallest valid config; tests corrupt one field of it."""
    return {
        "server": {"listen_v4": "127.0.0.1:7777"},
        "models": [
            {
                "name": "m",
                "engine": Raw("presets.engines.llamacpp"),
                "connect": "http://127.0.0.1:7778",
                "variants": [{"binary": "/bin/llama-server", "args": ["-c", 4096], "context": 4096}],
            }
        ],
    }


def write(directory: Path, text: str, name: str = "config.lua") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(directory: Path, text: str) -> Config:
    return ConfigLoader(str(write(directory, text))).load()


def load_error(directory: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(directory, text)
    return str(info.value)


# -- a full config -----------------------------------------------------------------------------

FULL = """
local function args_for(ctx) return { "-m", "/m/q.gguf", "--port", 7778, "-c", ctx, "--temp", 0.7 } end
server = {
  listen_v4 = { "127.0.0.1:7777", "0.0.0.0:8000", "localhost:9000" },
  listen_v6 = "[0:0::1]:7777",
  health_check_timeout = 3,
  engine_startup_timeout = 60.5,
  engine_idle_timeout = 0,
  engine_stop_timeout = 10,
  max_body_size = 1048576.0,
  queue_timeout = 30,
  completion_reserve = 512,
  shutdown_grace = 0,
  api_keys = { "key-one", "key-two" },
}
models = {
  {
    name = "qwen",
    engine = presets.engines.llamacpp,
    connect = "http://127.0.0.1:7778/",
    engine_idle_timeout = 300,
    health_check_timeout = 4,
    completion_reserve = 2048,
    primary = true,
    tokenization = { binary = "/bin/tok", extra_args = { "-m", "/m/q.gguf" },
                     extra_tokens_per_message = 8.0, extra_tokens = 3 },
    variants = {
      { binary = "/bin/ls", args = args_for(32768), context = 32768.0,
        engine_startup_timeout = 300, env = { CUDA_VISIBLE_DEVICES = "1", THREADS = 8 } },
      { binary = "/bin/ls", args = args_for(4096), context = 4096,
        connect = "http://[::1]:9000", engine_stop_timeout = 2 },
      { binary = "/bin/ls", args = args_for(8192), context = 8192, engine_idle_timeout = 0 },
    },
  },
  {
    name = "gemma",
    engine = "llama.cpp",
    tokenization = { binary = "/bin/tok2", base_args = { "--ids" } },
    variants = {
      { binary = "/bin/gemma", args = {}, context = 2048, connect = "http://localhost:7800" },
    },
  },
}
"""


def qwen_args(ctx: int) -> tuple[str, ...]:
    return ("-m", "/m/q.gguf", "--port", "7778", "-c", str(ctx), "--temp", "0.7")


def test_full_config_round_trips(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, FULL)
    server_timeouts = Timeouts(health_check=3.0, engine_startup=60.5, engine_idle=0.0, engine_stop=10.0)
    assert cfg.path == str(tmp_path / "config.lua")
    assert cfg.server == ServerConfig(
        listen=(("127.0.0.1", 7777), ("0.0.0.0", 8000), ("localhost", 9000), ("::1", 7777)),
        timeouts=server_timeouts,
        max_body_bytes=1048576,
        queue_timeout=30.0,
        completion_reserve=512,
        shutdown_grace=0.0,
        api_keys=("key-one", "key-two"),
    )
    assert isinstance(cfg.server.max_body_bytes, int)
    qwen = ModelConfig(
        name="qwen",
        engine="llama.cpp",
        variants=(
            Variant(
                index=2,
                binary="/bin/ls",
                args=qwen_args(4096),
                context=4096,
                connect="http://[::1]:9000",
                timeouts=Timeouts(health_check=4.0, engine_startup=60.5, engine_idle=300.0, engine_stop=2.0),
            ),
            Variant(
                index=3,
                binary="/bin/ls",
                args=qwen_args(8192),
                context=8192,
                connect="http://127.0.0.1:7778",
                timeouts=Timeouts(health_check=4.0, engine_startup=60.5, engine_idle=0.0, engine_stop=10.0),
            ),
            Variant(
                index=1,
                binary="/bin/ls",
                args=qwen_args(32768),
                context=32768,
                connect="http://127.0.0.1:7778",
                timeouts=Timeouts(health_check=4.0, engine_startup=300.0, engine_idle=300.0, engine_stop=10.0),
                env=(("CUDA_VISIBLE_DEVICES", "1"), ("THREADS", "8")),
            ),
        ),
        tokenization=Tokenization(
            binary="/bin/tok",
            args=(*DEFAULT_TOKENIZE_BASE_ARGS, "-m", "/m/q.gguf"),
            extra_tokens_per_message=8,
            extra_tokens=3,
        ),
        completion_reserve=2048,
    )
    gemma = ModelConfig(
        name="gemma",
        engine="llama.cpp",
        variants=(
            Variant(
                index=1,
                binary="/bin/gemma",
                args=(),
                context=2048,
                connect="http://localhost:7800",
                timeouts=server_timeouts,
            ),
        ),
        tokenization=Tokenization(binary="/bin/tok2", args=("--ids",), extra_tokens_per_message=0, extra_tokens=0),
    )
    assert cfg.models == (qwen, gemma)
    assert cfg.model_names() == ["qwen", "gemma"]
    assert cfg.model("qwen") is cfg.models[0]
    assert [v.context for v in cfg.models[0].variants] == sorted(v.context for v in cfg.models[0].variants)
    assert cfg.models[0].largest.context == 32768


def test_defaults_when_optional_keys_are_absent(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, config_text(base_config()))
    assert cfg.server == ServerConfig(listen=(("127.0.0.1", 7777),), timeouts=DEFAULTS)
    assert cfg.server.max_body_bytes == 64 * 1024 * 1024
    assert cfg.server.queue_timeout == 600.0
    assert cfg.server.completion_reserve == 1024
    assert cfg.server.shutdown_grace == 5.0
    assert cfg.server.api_keys == ()
    (model,) = cfg.models
    assert model.tokenization is None
    assert model.completion_reserve is None
    assert model.variants == (
        Variant(
            index=1,
            binary="/bin/llama-server",
            args=("-c", "4096"),
            context=4096,
            connect="http://127.0.0.1:7778",
            timeouts=DEFAULTS,
        ),
    )


def test_integral_floats_load_as_ints(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("models", 0, "variants", 0, "context"), Raw("40960.0"))
    cfg = with_value(cfg, ("models", 0, "variants", 0, "args"), ["-c", Raw("40960.0"), "-n", Raw("2^10"), 0.5])
    cfg = with_value(cfg, ("models", 0, "completion_reserve"), Raw("256.0"))
    cfg = with_value(cfg, ("server", "max_body_size"), Raw("1024 * 1024.0"))
    loaded = load_text(tmp_path, config_text(cfg))
    variant = loaded.models[0].variants[0]
    assert variant.context == 40960
    assert type(variant.context) is int
    assert variant.args == ("-c", "40960", "-n", "1024", "0.5")
    assert loaded.models[0].completion_reserve == 256
    assert type(loaded.models[0].completion_reserve) is int
    assert loaded.server.max_body_bytes == 1048576
    assert type(loaded.server.max_body_bytes) is int


def test_non_integral_float_is_rejected_where_an_int_is_expected(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("models", 0, "variants", 0, "context"), 4096.5)
    assert load_error(tmp_path, config_text(cfg)) == (
        'models[1] "m": variants[1].context must be a positive integer, got 4096.5'
    )


def test_concat_arrays(tmp_path: Path) -> None:
    text = config_text(base_config()) + (
        'local a = { "a", "b" }\n'
        'local b = { "c", nil, "ignored", x = "y" }\n'
        "local c = concat_arrays(a, b)\n"
        'models[1].variants[1].args = concat_arrays(c, { tostring(#a), b[3], tostring(#c), "end" })\n'
    )
    loaded = load_text(tmp_path, text)
    # ipairs stops at the first nil; non-array keys are dropped; the inputs are not modified
    assert loaded.models[0].variants[0].args == ("a", "b", "c", "2", "ignored", "3", "end")


def test_merge_tables(tmp_path: Path) -> None:
    text = config_text(base_config()) + (
        'local t1 = { "a", "b", x = "1", keep = "k" }\n'
        'local t2 = { "c", "d", x = "2", y = "3" }\n'
        "local m = merge_tables(t1, t2)\n"
        "models[1].variants[1].args = { m[1], m[2], m[3], m[4], m.x, m.y, m.keep, tostring(#m),\n"
        "  tostring(#t1), t1.x, tostring(t1.y) }\n"
        "local base = models[1].variants[1]\n"
        'models[1].variants[2] = merge_tables(base, { context = 8192, args = { "-c", 8192 } })\n'
    )
    loaded = load_text(tmp_path, text)
    small, big = loaded.models[0].variants
    assert small.args == ("a", "b", "c", "d", "2", "3", "k", "4", "2", "1", "nil")
    assert (big.context, big.args, big.binary) == (8192, ("-c", "8192"), "/bin/llama-server")


def test_helper_misuse_reports_the_config_line(tmp_path: Path) -> None:
    text = config_text(base_config()) + "\nlocal x = concat_arrays({}, 5)\n"
    message = load_error(tmp_path, text)
    assert "config.lua:4:" in message
    assert "concat_arrays: argument 2 must be a table, got number" in message
    message = load_error(tmp_path, config_text(base_config()) + "local y = merge_tables(nil, {})\n")
    assert "config.lua:3:" in message
    assert "merge_tables: argument 1 must be a table, got nil" in message


def test_example_config_loads(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmgw.config"):
        cfg = ConfigLoader(str(EXAMPLES / "config.example.lua")).load()
    assert not caplog.records  # the example uses only known keys
    assert cfg.server.listen == (("127.0.0.1", 7777), ("::1", 7777))
    assert len(cfg.models) == 2
    multi = [m for m in cfg.models if len(m.variants) == 2]
    assert multi
    assert multi[0].variants[0].context < multi[0].variants[1].context
    assert any(m.tokenization is not None for m in cfg.models)
    for model in cfg.models:
        for variant in model.variants:
            # the context the gateway believes in is the one llama-server is told to use
            assert variant.args[variant.args.index("-c") + 1] == str(variant.context)


@pytest.mark.parametrize("lib_dir", [None, "/opt/lib"])
def test_demo_config_loads(monkeypatch: pytest.MonkeyPatch, lib_dir: str | None) -> None:
    monkeypatch.setenv("LLMGW_LLAMA_SERVER", "/opt/bin/llama-server")
    monkeypatch.setenv("LLMGW_DEMO_MODEL", "/opt/models/gemma-3-270m.gguf")
    if lib_dir is None:
        monkeypatch.delenv("LLMGW_LLAMA_LIB", raising=False)
    else:
        monkeypatch.setenv("LLMGW_LLAMA_LIB", lib_dir)
    cfg = ConfigLoader(str(DEMO)).load()
    assert cfg.server.listen == (("127.0.0.1", 7777),)
    assert cfg.model_names() == ["gemma-3-270m", "gemma-3-270m-embed"]
    assert cfg.server.max_engines == 2  # the chat model and the embedding model side by side
    model, embed = cfg.models
    assert [v.context for v in model.variants] == [2048, 8192, 32768]
    for variant in model.variants:
        assert variant.binary == "/opt/bin/llama-server"
        assert variant.connect == "http://127.0.0.1:7778"
        assert variant.timeouts.engine_idle == 300.0
        assert variant.env == ((("LD_LIBRARY_PATH", lib_dir),) if lib_dir else ())
        assert variant.args == (
            "-m", "/opt/models/gemma-3-270m.gguf", "--host", "127.0.0.1", "--port", "7778",
            "-c", str(variant.context), "-np", "1", "--no-webui",
        )  # fmt: skip
    (variant,) = embed.variants
    assert variant.connect == "http://127.0.0.1:7779" and variant.endpoints == ("embeddings", "tokenize")
    assert variant.args[-3:] == ("--embeddings", "--pooling", "mean")


@pytest.mark.parametrize("missing", ["LLMGW_LLAMA_SERVER", "LLMGW_DEMO_MODEL"])
def test_demo_config_requires_its_environment(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setenv("LLMGW_LLAMA_SERVER", "/opt/bin/llama-server")
    monkeypatch.setenv("LLMGW_DEMO_MODEL", "/opt/models/gemma-3-270m.gguf")
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError) as info:
        ConfigLoader(str(DEMO)).load()
    message = str(info.value)
    assert "demo.lua:" in message
    assert f"{missing} is not set" in message


# -- warnings -----------------------------------------------------------------------------------


def test_unknown_keys_warn_but_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = with_value(base_config(), ("server", "dumps_dir"), "/tmp/dumps")
    cfg = with_value(cfg, ("server", "clear_dumps_on_start"), True)
    cfg = with_value(cfg, ("models", 0, "primary"), True)
    cfg = with_value(cfg, ("models", 0, "colour"), "blue")
    cfg = with_value(cfg, ("models", 0, "variants", 0, "tokenize"), True)
    with caplog.at_level(logging.WARNING, logger="llmgw.config"):
        loaded = load_text(tmp_path, config_text(cfg))
    assert loaded.models[0].name == "m"
    messages = [record.getMessage() for record in caplog.records]
    assert any("server" in m and "clear_dumps_on_start, dumps_dir" in m for m in messages)
    assert any('models[1] "m"' in m and "colour" in m for m in messages)
    assert any('models[1] "m": variants[1]' in m and "tokenize" in m for m in messages)
    assert not any("primary" in m for m in messages)
    assert all(r.name.startswith("llmgw.config") for r in caplog.records)


def test_config_output_does_not_reach_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_text(tmp_path, 'print("hello from lua")\n' + config_text(base_config()))
    assert "hello from lua" not in capsys.readouterr().out


def test_load_in_a_worker_thread_captures_only_that_thread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGHUP reloads run in a thread: the main thread's output must not be swallowed meanwhile."""
    text = 'print("from lua")\nos.execute("sleep 0.3")\nerror("late failure")\n'
    path = write(tmp_path, text)
    errors: list[str] = []

    def run() -> None:
        try:
            ConfigLoader(str(path)).load()
        except ConfigError as exc:
            errors.append(str(exc))

    worker = threading.Thread(target=run)
    worker.start()
    printed = 0
    while worker.is_alive():
        print(f"main-{printed}")
        printed += 1
        time.sleep(0.01)
    worker.join()
    out = capsys.readouterr().out
    assert errors == [f"Lua error: {path}:3: late failure"]
    assert printed > 0
    assert all(f"main-{i}" in out for i in range(printed))
    assert "from lua" not in out
    assert sys.stdout is not None and "ThreadCapture" not in type(sys.stdout).__name__


def test_api_keys_never_appear_in_errors(tmp_path: Path) -> None:
    for keys in (["secret-one", 12345], ["secret-one", True], "secret-one", ["secret-one", ""]):
        cfg = with_value(base_config(), ("server", "api_keys"), keys)
        message = load_error(tmp_path, config_text(cfg))
        assert message.startswith("server.api_keys")
        assert "secret-one" not in message
        assert "12345" not in message
    cfg = load_text(tmp_path, config_text(with_value(base_config(), ("server", "api_keys"), ["secret-one"])))
    assert "secret-one" not in repr(cfg)


# -- every validation error ---------------------------------------------------------------------

M = 'models[1] "m": '
V = M + "variants[1]"
FUNC = Raw("function() end")

ERRORS: list[tuple[tuple[Any, ...], Any, str]] = [
    # server
    (("server",), DELETE, "server is required (a table)"),
    (("server",), 5, "server must be a table, got 5"),
    (("server", "listen_v4"), DELETE, "server has no listener"),
    (("server", "listen_v4"), "none", "server has no listener"),
    (("server", "listen_v4"), "127.0.0.1", 'server.listen_v4 must be an IPv4 address and port like 127.0.0.1:7777, got "127.0.0.1"'),  # noqa: E501
    (("server", "listen_v4"), "127.0.0.1:0", 'server.listen_v4 has an invalid port in "127.0.0.1:0" (must be 1..65535)'),  # noqa: E501
    (("server", "listen_v4"), "127.0.0.1:65536", "server.listen_v4 has an invalid port"),
    (("server", "listen_v4"), "127.0.0.1:http", "server.listen_v4 has an invalid port"),
    (("server", "listen_v4"), "300.1.1.1:80", 'server.listen_v4 must be an IPv4 address and port like 127.0.0.1:7777, got "300.1.1.1:80"'),  # noqa: E501
    (("server", "listen_v4"), "example.com:80", "server.listen_v4 must be an IPv4 address"),
    (("server", "listen_v4"), "[::1]:7777", "server.listen_v4 must be an IPv4 address and port like 127.0.0.1:7777, got \"[::1]:7777\" (IPv6 addresses belong in listen_v6)"),  # noqa: E501
    (("server", "listen_v4"), ["127.0.0.1:1", "bad"], 'server.listen_v4[2] must be an IPv4 address and port like 127.0.0.1:7777, got "bad"'),  # noqa: E501
    (("server", "listen_v4"), ["127.0.0.1:1", 8080], "server.listen_v4[2] must be a non-empty string, got 8080"),
    (("server", "listen_v4"), ["127.0.0.1:1", "127.0.0.1:1"], "server.listen_v4[2] repeats the address of server.listen_v4[1]"),  # noqa: E501
    (("server", "listen_v4"), [], 'server.listen_v4 must not be an empty list (use "none" to disable it)'),
    (("server", "listen_v4"), True, 'server.listen_v4 must be an address, a list of addresses or "none", got true'),
    (("server", "listen_v4"), "", 'server.listen_v4 must be a non-empty string, got ""'),
    (("server", "listen_v6"), "::1:7777", 'server.listen_v6 must be an IPv6 address and port like [::1]:7777, got "::1:7777"'),  # noqa: E501
    (("server", "listen_v6"), "[127.0.0.1]:7777", "server.listen_v6 must be an IPv6 address"),
    (("server", "listen_v6"), "[::1]:99999", "server.listen_v6 has an invalid port"),
    (("server", "listen_v6"), {"a": "[::1]:1"}, 'server.listen_v6 must be an address, a list of addresses or "none", but has the key "a"'),  # noqa: E501
    (("server", "health_check_timeout"), 0, "server.health_check_timeout must be a positive number, got 0"),
    (("server", "health_check_timeout"), "5", 'server.health_check_timeout must be a positive number, got "5"'),
    (("server", "engine_startup_timeout"), -1, "server.engine_startup_timeout must be a positive number, got -1"),
    (("server", "engine_startup_timeout"), Raw("math.huge"), "server.engine_startup_timeout must be a positive number, got inf"),  # noqa: E501
    (("server", "engine_idle_timeout"), -0.5, "server.engine_idle_timeout must be a number >= 0, got -0.5"),
    (("server", "engine_idle_timeout"), True, "server.engine_idle_timeout must be a number >= 0, got true"),
    (("server", "engine_stop_timeout"), 0, "server.engine_stop_timeout must be a positive number, got 0"),
    (("server", "max_body_size"), 0, "server.max_body_size must be a positive integer, got 0"),
    (("server", "max_body_size"), 1.5, "server.max_body_size must be a positive integer, got 1.5"),
    (("server", "queue_timeout"), 0, "server.queue_timeout must be a positive number, got 0"),
    (("server", "completion_reserve"), False, "server.completion_reserve must be a positive integer, got false"),
    (("server", "shutdown_grace"), -1, "server.shutdown_grace must be a number >= 0, got -1"),
    (("server", "api_keys"), "k", "server.api_keys must be a list of strings, got a string"),
    (("server", "api_keys"), ["k", ""], "server.api_keys[2] must be a non-empty string, got a string"),
    # models
    (("models",), DELETE, "models is required (a non-empty list of model tables)"),
    (("models",), [], "models must be a non-empty list of model tables, got an empty table"),
    (("models",), {"qwen": {}}, 'models must be a non-empty list of model tables, but has the key "qwen"'),
    (("models",), "qwen", 'models must be a non-empty list of model tables, got "qwen"'),
    (("models", 0), "qwen", 'models[1] must be a model table, got "qwen"'),
    (("models", 0, "name"), DELETE, "models[1].name is required (a non-empty string)"),
    (("models", 0, "name"), "", 'models[1].name must be a non-empty string, got ""'),
    (("models", 0, "name"), 5, "models[1].name must be a non-empty string, got 5"),
    (("models", 0, "name"), FUNC, "models[1].name must be a non-empty string, got a function"),
    (("models", 0, "engine"), DELETE, M + 'engine is required (one of "llama.cpp")'),
    (("models", 0, "engine"), "vllm", M + 'engine is unknown: "vllm" (known engines: "llama.cpp")'),
    (("models", 0, "engine"), 1, M + "engine must be a non-empty string, got 1"),
    (("models", 0, "connect"), "127.0.0.1:7778", M + 'connect must be an http:// URL with host and port like http://127.0.0.1:7778, got "127.0.0.1:7778"'),  # noqa: E501
    (("models", 0, "completion_reserve"), 0, M + "completion_reserve must be a positive integer, got 0"),
    (("models", 0, "completion_reserve"), "x", M + 'completion_reserve must be a positive integer, got "x"'),
    (("models", 0, "engine_stop_timeout"), 0, M + "engine_stop_timeout must be a positive number, got 0"),
    (("models", 0, "engine_idle_timeout"), "never", M + 'engine_idle_timeout must be a number >= 0, got "never"'),
    (("models", 0, "variants"), DELETE, M + "variants is required (a non-empty list of variant tables)"),
    (("models", 0, "variants"), [], M + "variants must be a non-empty list of variant tables, got an empty table"),
    (("models", 0, "variants"), "v", M + 'variants must be a non-empty list of variant tables, got "v"'),
    (("models", 0, "variants", 0), 4096, V + " must be a variant table, got 4096"),
    # variants
    (("models", 0, "variants", 0, "binary"), DELETE, V + ".binary is required (a non-empty string)"),
    (("models", 0, "variants", 0, "binary"), "", V + '.binary must be a non-empty string, got ""'),
    (("models", 0, "variants", 0, "binary"), ["/bin/x"], V + ".binary must be a non-empty string, got a table"),
    (("models", 0, "variants", 0, "args"), DELETE, V + ".args is required (a list of strings)"),
    (("models", 0, "variants", 0, "args"), "-c 4096", V + '.args must be a list of strings, got "-c 4096"'),
    (("models", 0, "variants", 0, "args"), ["-c", True], V + ".args[2] must be a string or a number, got true"),
    (("models", 0, "variants", 0, "args"), ["-c", ["x"]], V + ".args[2] must be a string or a number, got a table"),
    (("models", 0, "variants", 0, "args"), ["-c", Raw("0/0")], V + ".args[2] must be a string or a number, got"),
    (("models", 0, "variants", 0, "args"), Raw('{ "-c", nil, "x" }'), V + ".args has a hole: [2] is nil"),
    (("models", 0, "variants", 0, "context"), DELETE, V + ".context is required (a positive integer)"),
    (("models", 0, "variants", 0, "context"), 0, V + ".context must be a positive integer, got 0"),
    (("models", 0, "variants", 0, "context"), -4096, V + ".context must be a positive integer, got -4096"),
    (("models", 0, "variants", 0, "context"), "abc", V + '.context must be a positive integer, got "abc"'),
    (("models", 0, "variants", 0, "context"), "4096", V + '.context must be a positive integer, got "4096"'),
    (("models", 0, "variants", 0, "context"), True, V + ".context must be a positive integer, got true"),
    (("models", 0, "variants", 0, "connect"), "https://127.0.0.1:7778", V + '.connect must be an http:// URL with host and port like http://127.0.0.1:7778, got "https://127.0.0.1:7778"'),  # noqa: E501
    (("models", 0, "variants", 0, "connect"), "http://127.0.0.1", V + ".connect must be an http:// URL"),
    (("models", 0, "variants", 0, "connect"), "http://127.0.0.1:99999", V + ".connect must be an http:// URL"),
    (("models", 0, "variants", 0, "connect"), "http://127.0.0.1:7778/v1", V + ".connect must be an http:// URL"),
    (("models", 0, "variants", 0, "connect"), "http://:7778", V + ".connect must be an http:// URL"),
    (("models", 0, "variants", 0, "connect"), 7778, V + ".connect must be a non-empty string, got 7778"),
    (("models", 0, "variants", 0, "env"), "A=1", V + '.env must be a table of NAME = value strings, got "A=1"'),
    (("models", 0, "variants", 0, "env"), ["A=1"], V + '.env must be a table of NAME = value strings, but has the key "1"'),  # noqa: E501
    (("models", 0, "variants", 0, "env"), {"A": True}, V + ".env.A must be a string or a number, got true"),
    (("models", 0, "variants", 0, "env"), {"A": {"B": "c"}}, V + ".env.A must be a string or a number, got a table"),
    (("models", 0, "variants", 0, "health_check_timeout"), -2, V + ".health_check_timeout must be a positive number, got -2"),  # noqa: E501
    (("models", 0, "variants", 0, "engine_idle_timeout"), -1, V + ".engine_idle_timeout must be a number >= 0, got -1"),
    # tokenization
    (("models", 0, "tokenization"), "/bin/tok", M + 'tokenization must be a table, got "/bin/tok"'),
    (("models", 0, "tokenization"), {}, M + "tokenization.binary is required (a non-empty string)"),
    (("models", 0, "tokenization"), {"binary": "t", "extra_args": "-m x"}, M + 'tokenization.extra_args must be a list of strings, got "-m x"'),  # noqa: E501
    (("models", 0, "tokenization"), {"binary": "t", "base_args": [False]}, M + "tokenization.base_args[1] must be a string or a number, got false"),  # noqa: E501
    (("models", 0, "tokenization"), {"binary": "t", "extra_tokens": -1}, M + "tokenization.extra_tokens must be a non-negative integer, got -1"),  # noqa: E501
    (("models", 0, "tokenization"), {"binary": "t", "extra_tokens_per_message": 1.5}, M + "tokenization.extra_tokens_per_message must be a non-negative integer, got 1.5"),  # noqa: E501
    # placement
    (("server", "max_engines"), 0, "server.max_engines must be a positive integer, got 0"),
    (("server", "max_engines"), 1.5, "server.max_engines must be a positive integer, got 1.5"),
    (("server", "memory_budget"), 0, "server.memory_budget must be a positive number, got 0"),
    (("server", "memory_budget"), "24G", 'server.memory_budget must be a number of MiB or a table of pools like { gpu0 = 24000, gpu1 = 24000 }, got "24G"'),  # noqa: E501
    (("server", "memory_budget"), {}, "server.memory_budget must be a number of MiB or a table of pools like { gpu0 = 24000, gpu1 = 24000 }, got an empty table"),  # noqa: E501
    (("server", "memory_budget"), [24000], "server.memory_budget must be a number of MiB or a table of pools like { gpu0 = 24000, gpu1 = 24000 }, but has the key [1]"),  # noqa: E501
    (("server", "memory_budget"), {"gpu0": -1}, "server.memory_budget.gpu0 must be a positive number, got -1"),
    (("server", "state_dir"), 5, "server.state_dir must be a non-empty string, got 5"),
    (("models", 0, "pinned"), "yes", M + 'pinned must be true or false, got "yes"'),
    (("models", 0, "exclusive"), 1, M + "exclusive must be true or false, got 1"),
    (("models", 0, "devices"), ["gpu0"], M + "devices needs server.memory_budget to be a table of pools"),
    (("models", 0, "variants", 0, "memory"), -5, V + ".memory must be a number of MiB (>= 0) or a table of MiB per pool, got -5"),  # noqa: E501
    (("models", 0, "variants", 0, "memory"), "8G", V + '.memory must be a number of MiB (>= 0) or a table of MiB per pool, got "8G"'),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "expected"), ERRORS, ids=[f"{e[0]}={e[1]!r}" for e in ERRORS])
def test_validation_error(tmp_path: Path, path: tuple[Any, ...], value: Any, expected: str) -> None:
    message = load_error(tmp_path, config_text(with_value(base_config(), path, value)))
    assert message.startswith(expected), message
    assert "\n" not in message


PLACEMENT = """
server = {
  listen_v4 = "127.0.0.1:7777",
  max_engines = 3,
  memory_budget = { gpu0 = 24000, gpu1 = 16000.0, ram = 64000 },
  state_dir = "/var/lib/llmgw",
}
models = {
  { name = "big", engine = presets.engines.llamacpp, connect = "http://127.0.0.1:7778",
    pinned = true, devices = { "gpu0", "gpu1" },
    variants = {
      { binary = "/bin/ls", args = {}, context = 4096, memory = 20000 },
      { binary = "/bin/ls", args = {}, context = 8192, memory = { gpu0 = 15000, gpu1 = 9000 } },
      { binary = "/bin/ls", args = {}, context = 16384, devices = { "gpu1" } },
    } },
  { name = "embed", engine = presets.engines.llamacpp, connect = "http://127.0.0.1:7779", exclusive = false,
    variants = { { binary = "/bin/ls", args = {}, context = 512, memory = 0 } } },
  { name = "solo", engine = presets.engines.llamacpp, connect = "http://127.0.0.1:7778", exclusive = true,
    variants = { { binary = "/bin/ls", args = {}, context = 512 } } },
}
"""


def test_placement_keys(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, PLACEMENT)
    assert cfg.server.max_engines == 3
    assert cfg.server.memory_budget == (("gpu0", 24000.0), ("gpu1", 16000.0), ("ram", 64000.0))
    assert cfg.server.state_dir == "/var/lib/llmgw"
    big, embed, solo = cfg.models
    assert big.pinned and not big.exclusive and solo.exclusive and not embed.exclusive and not embed.pinned
    small, mid, large = big.variants
    assert small.pools == mid.pools == ("gpu0", "gpu1")  # from the model's devices
    assert small.memory == (("gpu0", 10000.0), ("gpu1", 10000.0))  # a number is split over the pools
    assert mid.memory == (("gpu0", 15000.0), ("gpu1", 9000.0))
    assert large.pools == ("gpu1",) and large.memory is None  # the variant's own devices; measured
    assert embed.variants[0].pools == ("gpu0", "gpu1", "ram") and embed.variants[0].memory == (
        ("gpu0", 0.0), ("gpu1", 0.0), ("ram", 0.0))  # fmt: skip
    assert cfg.shared_addresses() == {"127.0.0.1:7778": ["big", "solo"]}
    summary = cfg.summary()
    assert "up to 3 engine(s) at once; memory budget: gpu0 24000 MiB, gpu1 16000 MiB, ram 64000 MiB" in summary
    assert "'big'" in summary and "pinned" in summary and "16384: measured on gpu1" in summary
    assert "models 'big', 'solo' share the engine address 127.0.0.1:7778: they never run together" in summary
    assert "'solo' (llama.cpp): 1 variant(s), context 512; memory 512: measured on gpu0+gpu1+ram; exclusive" in summary


def test_placement_defaults_keep_one_engine_and_no_budget(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, config_text(base_config()))
    assert cfg.server.max_engines == 1 and cfg.server.memory_budget == () and cfg.server.state_dir is None
    model = cfg.models[0]
    assert not model.pinned and not model.exclusive
    assert model.variants[0].pools == () and model.variants[0].memory is None
    assert "up to 1 engine(s) at once; memory budget: none (count only)" in cfg.summary()


def test_single_number_budget_is_one_total_pool(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("server", "memory_budget"), 32000)
    cfg = with_value(cfg, ("models", 0, "variants", 0, "memory"), 6000)
    loaded = load_text(tmp_path, config_text(cfg))
    assert loaded.server.memory_budget == (("total", 32000.0),)
    assert loaded.models[0].variants[0].pools == ("total",)
    assert loaded.models[0].variants[0].memory == (("total", 6000.0),)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ({"devices": ["gpu2"]}, V + ".devices[1] is not a pool of server.memory_budget (its pools: gpu0, gpu1)"),
        ({"devices": []}, V + ".devices must not be an empty list"),
        (
            {"devices": ["gpu0"], "memory": {"gpu1": 5}},
            V + '.memory names the pool "gpu1", which this variant does not use (its pools: gpu0)',
        ),
        (
            {"memory": {"gpu0": 30000}},
            V + ".memory declares 30000 MiB on gpu0, more than server.memory_budget allows there (24000 MiB): "
            "the variant could never start",
        ),
        ({"memory": 50000}, V + ".memory declares 25000 MiB on gpu0, more than server.memory_budget allows"),
        ({"memory": {"gpu0": "x"}}, V + '.memory.gpu0 must be a number of MiB (>= 0), got "x"'),
    ],
)
def test_placement_errors_with_a_pool_budget(tmp_path: Path, variant: dict[str, Any], expected: str) -> None:
    cfg = with_value(base_config(), ("server", "memory_budget"), {"gpu0": 24000, "gpu1": 24000})
    cfg["models"][0]["variants"][0].update(variant)
    message = load_error(tmp_path, config_text(cfg))
    assert message.startswith(expected), message


def test_connect_is_required_on_variant_or_model(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("models", 0, "connect"), DELETE)
    assert load_error(tmp_path, config_text(cfg)) == (
        V + ".connect is required (set connect on the variant or on its model)"
    )


def test_duplicate_model_name_names_both_indices(tmp_path: Path) -> None:
    cfg = base_config()
    other = copy.deepcopy(cfg["models"][0])
    cfg["models"].append(copy.deepcopy(other))
    cfg["models"][1]["name"] = "x"
    cfg["models"].append(other)
    assert load_error(tmp_path, config_text(cfg)) == 'models[3] "m": duplicate name, already used by models[1]'


def test_duplicate_context_names_both_variants(tmp_path: Path) -> None:
    cfg = base_config()
    variants = cfg["models"][0]["variants"]
    variants.append({"binary": "/b", "args": [], "context": 8192})
    variants.append({"binary": "/c", "args": [], "context": Raw("4096.0")})
    assert load_error(tmp_path, config_text(cfg)) == (
        'models[1] "m": variants[1] and variants[3] have the same context 4096'
    )


def test_models_with_a_hole(tmp_path: Path) -> None:
    text = config_text(base_config()) + "models = { nil, models[1] }\n"
    assert load_error(tmp_path, text) == "models has a hole: [1] is nil (misspelled variable?)"


def test_model_name_is_quoted_in_messages(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("models", 0, "name"), 'q"w')
    cfg = with_value(cfg, ("models", 0, "variants", 0, "context"), 0)
    assert load_error(tmp_path, config_text(cfg)).startswith('models[1] "q\\"w": variants[1].context')


# -- Lua and file errors ------------------------------------------------------------------------


def test_lua_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = 'server = { listen_v4 = "127.0.0.1:7777" }\nmodels = {\n  { name = "a" x },\n}\n'
    message = load_error(tmp_path, text)
    assert message.startswith("Lua error: ")
    assert f"{tmp_path / 'config.lua'}:3:" in message
    assert "'}' expected near 'x'" in message
    assert "traceback" not in message.lower()
    assert "\n" not in message


def test_lua_runtime_error_names_file_and_line(tmp_path: Path) -> None:
    text = config_text(base_config()) + "local t = nil\nlocal n = t.field\n"
    message = load_error(tmp_path, text)
    assert "config.lua:4:" in message
    assert "attempt to index a nil value" in message
    assert "traceback" not in message.lower()
    assert "loader.lua" not in message


def test_lua_error_call_is_reported(tmp_path: Path) -> None:
    text = 'print("noise")\nlocal function check() error("MODEL_DIR is not set") end\ncheck()\n'
    message = load_error(tmp_path, text)
    assert message == f"Lua error: {tmp_path / 'config.lua'}:2: MODEL_DIR is not set"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.lua"
    with pytest.raises(ConfigError) as info:
        ConfigLoader(str(path)).load()
    assert str(info.value) == f"config file not found: {path}"
    with pytest.raises(ConfigError) as info:
        ConfigLoader(str(tmp_path)).load()  # a directory is not a config file
    assert str(info.value) == f"config file not found: {tmp_path}"


def test_lua_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, config_text(base_config()))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError) as info:
        ConfigLoader(str(tmp_path / "config.lua")).load()
    assert str(info.value).startswith("no Lua interpreter found")


def test_non_utf8_string_is_a_config_error(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("models", 0, "name"), Raw('"\\255\\254"'))
    message = load_error(tmp_path, config_text(cfg))
    assert "UTF-8" in message


def test_relative_path_and_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    text = config_text(base_config()) + 'models[1].variants[1].binary = loader.workdir .. "llama-server"\n'
    write(sub, text)
    monkeypatch.chdir(tmp_path)
    cfg = ConfigLoader("conf/config.lua").load()
    assert cfg.path == "conf/config.lua"
    assert cfg.models[0].variants[0].binary == f"{sub}/llama-server"


# -- property tests ---------------------------------------------------------------------------


@dataclass
class Generated:
    cfg: dict[str, Any]
    server: ServerConfig
    models: tuple[ModelConfig, ...]


SECONDS = st.one_of(st.integers(1, 100_000), st.integers(1, 800_000).map(lambda n: n / 8))
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=16)
ARG = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=10),
    st.integers(-(2**40), 2**40),
)
ENV_NAME = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
PORT = st.integers(1, 65535)


def draw_timeouts(draw: st.DrawFn, table: dict[str, Any], base: Timeouts) -> Timeouts:
    """Maybe set each timeout on ``table``; return the cascaded result."""
    values = {}
    for attr, key, strategy in (
        ("health_check", "health_check_timeout", SECONDS),
        ("engine_startup", "engine_startup_timeout", SECONDS),
        ("engine_idle", "engine_idle_timeout", st.one_of(st.just(0), SECONDS)),
        ("engine_stop", "engine_stop_timeout", SECONDS),
    ):
        value = draw(st.one_of(st.none(), strategy))
        if value is None:
            values[attr] = getattr(base, attr)
        else:
            table[key] = value
            values[attr] = float(value)
    return Timeouts(**values)


def draw_number(draw: st.DrawFn, value: int) -> Any:
    """An int, sometimes written as a Lua float literal (4096.0)."""
    return Raw(f"{value}.0") if draw(st.booleans()) else value


def draw_listen(draw: st.DrawFn, server: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    v4 = draw(st.lists(st.tuples(st.ip_addresses(v=4), PORT), max_size=3, unique_by=lambda a: (str(a[0]), a[1])))
    v6 = draw(st.lists(st.tuples(st.ip_addresses(v=6), PORT), max_size=2, unique_by=lambda a: (str(a[0]), a[1])))
    if not v4 and not v6:
        v4 = [(ipaddress.IPv4Address("127.0.0.1"), draw(PORT))]
    for key, addresses, fmt in (
        ("listen_v4", v4, "{}:{}"),
        ("listen_v6", v6, "[{}]:{}"),
    ):
        texts = [fmt.format(a.exploded if draw(st.booleans()) else str(a), p) for a, p in addresses]
        if not texts:
            if draw(st.booleans()):
                server[key] = "none"
        elif len(texts) == 1 and draw(st.booleans()):
            server[key] = texts[0]
        else:
            server[key] = texts
    return tuple((str(a), p) for a, p in [*v4, *v6])


@st.composite
def valid_configs(draw: st.DrawFn) -> Generated:
    server: dict[str, Any] = {}
    listen = draw_listen(draw, server)
    server_timeouts = draw_timeouts(draw, server, DEFAULTS)
    completion_reserve = draw(st.one_of(st.none(), st.integers(1, 10**6)))
    if completion_reserve is not None:
        server["completion_reserve"] = draw_number(draw, completion_reserve)
    api_keys = draw(st.lists(st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1)))
    if api_keys or draw(st.booleans()):
        server["api_keys"] = api_keys
    expected_server = ServerConfig(
        listen=listen,
        timeouts=server_timeouts,
        completion_reserve=completion_reserve or 1024,
        api_keys=tuple(api_keys),
    )

    models_lua: list[dict[str, Any]] = []
    models: list[ModelConfig] = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)):
        model: dict[str, Any] = {"name": name, "engine": Raw("presets.engines.llamacpp")}
        model_connect = None
        if draw(st.booleans()):
            model_connect = f"http://127.0.0.1:{draw(PORT)}"
            model["connect"] = model_connect + draw(st.sampled_from(["", "/"]))
        model_timeouts = draw_timeouts(draw, model, server_timeouts)
        reserve = draw(st.one_of(st.none(), st.integers(1, 10**6)))
        if reserve is not None:
            model["completion_reserve"] = reserve
        tokenization = None
        if draw(st.booleans()):
            extra = draw(st.lists(ARG, max_size=3))
            per_message, once = draw(st.integers(0, 100)), draw(st.integers(0, 100))
            model["tokenization"] = {
                "binary": "/bin/tok",
                "extra_args": extra,
                "extra_tokens_per_message": draw_number(draw, per_message),
                "extra_tokens": once,
            }
            tokenization = Tokenization("/bin/tok", (*DEFAULT_TOKENIZE_BASE_ARGS, *map(str, extra)), per_message, once)
        variants: list[Variant] = []
        model["variants"] = []
        contexts = draw(st.lists(st.integers(1, 2**31), min_size=1, max_size=4, unique=True))
        for index, context in enumerate(contexts, 1):
            args = draw(st.lists(ARG, max_size=5))
            variant: dict[str, Any] = {"binary": f"/bin/engine-{index}", "args": args}
            variant["context"] = draw_number(draw, context)
            connect = model_connect
            if model_connect is None or draw(st.booleans()):
                connect = f"http://localhost:{draw(PORT)}"
                variant["connect"] = connect
            env = draw(st.dictionaries(ENV_NAME, st.text(max_size=8), max_size=3))
            if env:
                variant["env"] = env
            timeouts = draw_timeouts(draw, variant, model_timeouts)
            model["variants"].append(variant)
            assert connect is not None
            variants.append(
                Variant(
                    index=index,
                    binary=f"/bin/engine-{index}",
                    args=tuple(map(str, args)),
                    context=context,
                    connect=connect,
                    timeouts=timeouts,
                    env=tuple(sorted(env.items())),
                )
            )
        models_lua.append(model)
        models.append(
            ModelConfig(
                name=name,
                engine="llama.cpp",
                variants=tuple(sorted(variants, key=lambda v: v.context)),
                tokenization=tokenization,
                completion_reserve=reserve,
            )
        )
    return Generated({"server": server, "models": models_lua}, expected_server, tuple(models))


@HYPOTHESIS
@given(generated=valid_configs())
def test_generated_valid_configs_load(tmp_path: Path, generated: Generated) -> None:
    cfg = load_text(tmp_path, config_text(generated.cfg))
    assert cfg.server == generated.server
    assert cfg.server.api_keys == generated.server.api_keys  # excluded from repr, not from ==
    assert cfg.models == generated.models


def corruptions(cfg: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, st.SearchStrategy[Any]]]:
    """(path, label in the message, bad values) for every field of a generated config."""
    positive = st.one_of(st.integers(-1000, 0), st.sampled_from([True, False, "x", "", "12", -0.5, Raw("0/0")]))
    positive_int = st.one_of(positive, st.sampled_from([2.5, 0.25]))
    non_negative = st.one_of(st.integers(-1000, -1), st.sampled_from([True, "0", -0.25]))
    text = st.one_of(st.just(""), st.integers(), st.booleans())
    found: list[tuple[tuple[Any, ...], str, st.SearchStrategy[Any]]] = [
        (("server", "health_check_timeout"), "server.health_check_timeout", positive),
        (("server", "engine_idle_timeout"), "server.engine_idle_timeout", non_negative),
        (("server", "max_body_size"), "server.max_body_size", positive_int),
        (("server", "queue_timeout"), "server.queue_timeout", positive),
        (("server", "completion_reserve"), "server.completion_reserve", positive_int),
        (("server", "shutdown_grace"), "server.shutdown_grace", non_negative),
        (("server", "listen_v4"), "server.listen_v4", st.sampled_from(["", "1.2.3.4", "1.2.3.4:0", 7, False])),
    ]
    for i, model in enumerate(cfg["models"]):
        title = f"models[{i + 1}] {json.dumps(model['name'], ensure_ascii=False)}: "
        found.append((("models", i, "name"), f"models[{i + 1}].name", text))
        found.append((("models", i, "engine"), title + "engine", st.one_of(text, st.just("vllm"))))
        found.append((("models", i, "completion_reserve"), title + "completion_reserve", positive_int))
        found.append((("models", i, "engine_startup_timeout"), title + "engine_startup_timeout", positive))
        found.append((("models", i, "connect"), title + "connect", st.one_of(text, st.just("ftp://h:1"))))
        for j, _ in enumerate(model["variants"]):
            where = f"{title}variants[{j + 1}]"
            found.append((("models", i, "variants", j, "context"), where + ".context", positive_int))
            found.append((("models", i, "variants", j, "binary"), where + ".binary", text))
            found.append((("models", i, "variants", j, "args"), where + ".args", st.sampled_from(["x", 3, True])))
            found.append((("models", i, "variants", j, "connect"), where + ".connect", text))
            found.append(
                (("models", i, "variants", j, "engine_stop_timeout"), where + ".engine_stop_timeout", positive)
            )
    return found


@HYPOTHESIS
@given(generated=valid_configs(), data=st.data())
def test_generated_broken_configs_name_the_field(tmp_path: Path, generated: Generated, data: st.DataObject) -> None:
    path, label, bad_values = data.draw(st.sampled_from(corruptions(generated.cfg)))
    bad = data.draw(bad_values)
    message = load_error(tmp_path, config_text(with_value(generated.cfg, path, bad)))
    assert message.startswith(label + " "), (message, label)
    if isinstance(bad, bool):
        assert message.endswith("got " + ("true" if bad else "false"))
    elif isinstance(bad, str) and not isinstance(bad, Raw) and label != "server.listen_v4":
        assert json.dumps(bad) in message


def test_summary_warns_when_pinned_models_can_fill_every_place(tmp_path: Path) -> None:
    cfg = with_value(base_config(), ("models", 0, "pinned"), True)
    assert "note: pinned model(s) 'm' can fill all 1 engine place(s)" in load_text(tmp_path, config_text(cfg)).summary()
    cfg = with_value(cfg, ("server", "max_engines"), 2)
    assert "note:" not in load_text(tmp_path, config_text(cfg)).summary()


# -- loading_feedback ----------------------------------------------------------------------------


def test_loading_feedback_defaults_to_comments_and_cascades_server_to_model(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, config_text(base_config()))
    assert cfg.server.loading_feedback == "comments"
    assert cfg.feedback(cfg.models[0]) == "comments"
    both = with_value(
        with_value(base_config(), ("server", "loading_feedback"), "none"),
        ("models", 0, "loading_feedback"),
        "reasoning",
    )
    cfg = load_text(tmp_path, config_text(both))
    assert (cfg.server.loading_feedback, cfg.feedback(cfg.models[0])) == ("none", "reasoning")


@pytest.mark.parametrize("where", [("server",), ("models", 0)])
def test_loading_feedback_must_be_a_known_mode(tmp_path: Path, where: tuple[Any, ...]) -> None:
    bad = with_value(base_config(), (*where, "loading_feedback"), "thinking")
    message = load_error(tmp_path, config_text(bad))
    assert 'loading_feedback must be one of "reasoning", "comments", "none", got "thinking"' in message


@pytest.mark.parametrize(
    ("args", "parallel", "per_slot"),
    [
        ((), 0, 8192),  # llama-server's auto: 4 slots sharing a unified cache
        (("-np", "1"), 1, 8192),
        (("-np", "2"), 2, 4096),
        (("--parallel=4",), 4, 2048),
        (("-np", "4", "-kvu"), 4, 8192),
        (("--parallel", "2", "--kv-unified"), 2, 8192),
        (("-np", "2", "-np", "8"), 8, 1024),  # the last one wins, as llama-server reads it
    ],
)
def test_a_variants_slot_context_follows_its_parallel_slots(
    args: tuple[str, ...], parallel: int, per_slot: int
) -> None:
    variant = Variant(1, "/bin/llama-server", ("-c", "8192", *args), 8192, "http://127.0.0.1:1", DEFAULT_TIMEOUTS)
    assert (variant.parallel, variant.slot_context) == (parallel, per_slot)


def test_ollama_version_defaults_and_must_be_dotted_numbers(tmp_path: Path) -> None:
    assert load_text(tmp_path, config_text(base_config())).server.ollama_version == "0.12.0"
    cfg = load_text(tmp_path, config_text(with_value(base_config(), ("server", "ollama_version"), "0.13.2")))
    assert cfg.server.ollama_version == "0.13.2"
    for bad in ("v0.12", "0.12.0+local", "latest", "1"):
        message = load_error(tmp_path, config_text(with_value(base_config(), ("server", "ollama_version"), bad)))
        assert "ollama_version must be a version of dotted numbers" in message, message


def test_latest_is_ollamas_default_tag_on_every_name(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, config_text(with_value(base_config(), ("models", 0, "aliases"), ["alias"])))
    model = cfg.models[0]
    for name in (model.name, f"{model.name}:latest", f"{model.name}:LATEST", "alias", "alias:latest"):
        assert cfg.model(name) is model, name
    assert cfg.model(f"{model.name}:7b") is None and cfg.model(":latest") is None
