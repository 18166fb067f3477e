"""slot_cache in the config: where it applies, what it adds to an engine's command line, and one
precise error for each mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_config import base_config, config_text, load_error, load_text, with_value

from llmgw.config import SlotCache


def two_models(server_cache: Any = None, model_cache: Any = None) -> dict[str, Any]:
    cfg = base_config()
    cfg["models"].append(
        {
            "name": "embed",
            "engine": cfg["models"][0]["engine"],
            "connect": "http://127.0.0.1:7779",
            "variants": [{"binary": "/bin/llama-server", "args": ["-c", 512, "--embeddings"], "context": 512}],
        }
    )
    cfg["models"][0]["variants"].append({"binary": "/bin/llama-server", "args": ["-c", 8192], "context": 8192})
    if server_cache is not None:
        cfg["server"]["slot_cache"] = server_cache
    if model_cache is not None:
        cfg["models"][0]["slot_cache"] = model_cache
    return cfg


def test_off_unless_set(tmp_path: Path) -> None:
    config = load_text(tmp_path, config_text(two_models()))
    assert config.server.slot_cache is None
    assert all(m.slot_cache is None for m in config.models)
    assert all(v.launch_args == v.args for m in config.models for v in m.variants)


def test_a_server_cache_applies_to_every_model_and_adds_the_save_path(tmp_path: Path) -> None:
    config = load_text(tmp_path, config_text(two_models({"dir": str(tmp_path / "slots"), "max_mb": 512})))
    cache = SlotCache(str(tmp_path / "slots"), 512.0)
    chat, embed = config.models
    assert config.server.slot_cache == chat.slot_cache == embed.slot_cache == cache
    for variant in chat.variants:
        assert variant.slot_cache == cache
        assert variant.launch_args == (*variant.args, "--slot-save-path", cache.dir)
    # An embedding engine's slots hold nothing worth keeping: started as configured.
    assert embed.variants[0].slot_cache is None and embed.variants[0].launch_args == embed.variants[0].args
    summary = config.summary()
    assert f"slot cache {cache.dir} (up to 512 MiB): model(s) 'm', 'embed'" in summary
    assert "--swa-full" in summary


def test_a_model_overrides_or_turns_off_the_server_cache(tmp_path: Path) -> None:
    server = {"dir": str(tmp_path / "s"), "max_mb": 100}
    config = load_text(tmp_path, config_text(two_models(server, {"max_mb": 100, "dir": str(tmp_path / "m")})))
    assert config.models[0].slot_cache == SlotCache(str(tmp_path / "m"), 100.0)
    assert config.models[1].slot_cache == SlotCache(str(tmp_path / "s"), 100.0)
    config = load_text(tmp_path, config_text(two_models(server, False)))
    assert config.models[0].slot_cache is None and config.models[0].variants[0].launch_args == ("-c", "4096")
    config = load_text(tmp_path, config_text(two_models(None, {"dir": "relative/slots"})))
    assert config.models[0].slot_cache == SlotCache(str(Path("relative/slots").resolve()), 4096.0)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("server", "slot_cache"), "yes", 'server.slot_cache must be a table like { dir = "/var/cache/llmgw/slots"'),
        (("server", "slot_cache"), True, "server.slot_cache must be a table of dir and max_mb, or false"),
        (("server", "slot_cache"), {"max_mb": 10}, "server.slot_cache.dir is required"),
        (("server", "slot_cache"), {"dir": ""}, "server.slot_cache.dir must be a non-empty string"),
        (
            ("server", "slot_cache"),
            {"dir": "/x", "max_mb": 0},
            "server.slot_cache.max_mb must be a positive number, got 0",
        ),
        (
            ("models", 0, "slot_cache"),
            {"dir": "/x", "max_mb": "big"},
            'models[1] "m": slot_cache.max_mb must be a positive number, got "big"',
        ),
        (
            ("models", 0, "variants", 0, "args"),
            ["-c", 4096, "--slot-save-path", "/elsewhere"],
            'models[1] "m": variants[1].args has --slot-save-path, but slot_cache is set',
        ),
    ],
)
def test_mistakes_name_their_place(tmp_path: Path, path: tuple[Any, ...], value: Any, expected: str) -> None:
    cfg = (
        with_value(base_config(), ("models", 0, "slot_cache"), {"dir": "/x"}) if path[0] == "models" else base_config()
    )
    assert expected in load_error(tmp_path, config_text(with_value(cfg, path, value)))


def test_one_directory_has_one_budget(tmp_path: Path) -> None:
    cfg = two_models(None, {"dir": "/shared", "max_mb": 100})
    cfg["models"][1]["slot_cache"] = {"dir": "/shared", "max_mb": 200}
    message = load_error(tmp_path, config_text(cfg))
    assert 'models[2] "embed": slot_cache.max_mb is 200 but models[1] "m": slot_cache.max_mb is 100' in message


def test_unknown_keys_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = with_value(base_config(), ("server", "slot_cache"), {"dir": "/x", "max_gb": 1})
    load_text(tmp_path, config_text(cfg))
    assert "server.slot_cache: unknown key(s) ignored: max_gb" in caplog.text
