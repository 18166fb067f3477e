"""``peers`` and the pool keys in the config: what they give, and one precise error for each mistake
(a peer's api_key never quoted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_config import DELETE, base_config, config_text, load_error, load_text, with_value

from llmgw.config import PeerConfig, Peering
from llmgw.config.schema import default_node_name


def pooled(**server: Any) -> dict[str, Any]:
    cfg = base_config()
    cfg["server"]["peers"] = {"gpu-box": {"url": "http://10.0.0.2:7777", "api_key": "sekret-key"}}
    cfg["server"].update(server)
    return cfg


def test_no_peers_by_default(tmp_path: Path) -> None:
    config = load_text(tmp_path, config_text(base_config()))
    assert config.server.peering == Peering()
    assert config.server.node_name == default_node_name()
    assert "peer '" not in config.summary()


def test_peers_and_their_keys(tmp_path: Path) -> None:
    cfg = pooled(
        node_name="laptop",
        peer_check_interval=10,
        peer_check_timeout=1.5,
        peer_trip_after=2,
        peer_recover_after=4,
        peer_min_dwell=0,
        spill_queue=3,
    )
    cfg["server"]["peers"]["b"] = {"url": "http://[::1]:9000/", "models": ["qwen", "gemma", "qwen"], "weight": 2.5}
    config = load_text(tmp_path, config_text(cfg))
    assert config.server.node_name == "laptop"
    assert config.server.peering == Peering(
        peers=(
            PeerConfig("b", "http://[::1]:9000", None, ("qwen", "gemma"), 2.5),
            PeerConfig("gpu-box", "http://10.0.0.2:7777", "sekret-key"),
        ),
        check_interval=10.0,
        check_timeout=1.5,
        trip_after=2,
        recover_after=4,
        min_dwell=0.0,
        spill_queue=3,
    )
    assert config.server.peering.trip_bound == 10 + 2 * 1.5
    summary = config.summary()
    assert "peer 'gpu-box': http://10.0.0.2:7777, models all it lists, weight 1, with an API key" in summary
    assert "peer 'b': http://[::1]:9000, models 'qwen', 'gemma', weight 2.5, no API key" in summary
    assert "sekret" not in summary and "sekret" not in repr(config)


def test_the_check_timeout_follows_a_short_interval_unless_set(tmp_path: Path) -> None:
    config = load_text(tmp_path, config_text(pooled(peer_check_interval=0.5)))
    assert (config.server.peering.check_interval, config.server.peering.check_timeout) == (0.5, 0.5)
    error = load_error(tmp_path, config_text(pooled(peer_check_interval=1, peer_check_timeout=3)))
    assert error == "server.peer_check_timeout (3 s) is longer than server.peer_check_interval (1 s)"


def test_a_node_with_peers_may_serve_nothing_itself(tmp_path: Path) -> None:
    cfg = with_value(pooled(), ("models",), DELETE)
    config = load_text(tmp_path, config_text(cfg))
    assert config.models == ()
    assert "no local models: every request goes to a peer" in config.summary()
    assert load_text(tmp_path, config_text(with_value(pooled(), ("models",), []))).models == ()
    # Its default model may be one a peer has.
    assert load_text(tmp_path, config_text(pooled(default_model="qwen"))).server.default_model == "qwen"
    # Without peers, still an error.
    assert "models is required" in load_error(tmp_path, config_text(with_value(base_config(), ("models",), DELETE)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("url",), "server.peers.gpu-box.url is required (a non-empty string)"),
        (
            ("url", "https://10.0.0.2:7777"),
            'server.peers.gpu-box.url is https ("https://10.0.0.2:7777"): only http:// is spoken to peers',
        ),
        (
            ("url", "http://user:pw@10.0.0.2:7777"),
            "server.peers.gpu-box.url must not hold credentials (put the peer's key in api_key)",
        ),
        (
            ("url", "http://10.0.0.2"),
            'server.peers.gpu-box.url must be an http:// URL with host and port like http://gpu-box:7777, got "http://10.0.0.2"',
        ),
        (
            ("url", "http://10.0.0.2:7777/v1"),
            "server.peers.gpu-box.url must be an http:// URL with host and port like http://gpu-box:7777",
        ),
        (("api_key", 5), "server.peers.gpu-box.api_key must be a non-empty string, got a number"),
        (("api_key", ""), "server.peers.gpu-box.api_key must be a non-empty string, got a string"),
        (("models", []), "server.peers.gpu-box.models must not be empty"),
        (("models", "qwen"), 'server.peers.gpu-box.models must be a list of model names, got "qwen"'),
        (("weight", 0), "server.peers.gpu-box.weight must be a positive number, got 0"),
    ],
)
def test_peer_mistakes(tmp_path: Path, change: tuple[Any, ...], message: str) -> None:
    cfg = pooled()
    peer = cfg["server"]["peers"]["gpu-box"]
    if len(change) == 1:
        del peer[change[0]]
    else:
        peer[change[0]] = change[1]
    error = load_error(tmp_path, config_text(cfg))
    assert error.startswith(message), error
    assert "sekret" not in error


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ("http://x:1", 'server.peers must be a table of NAME = { url = "http://host:port", ... }, got "http://x:1"'),
        ([{"url": "http://x:1"}], "server.peers must be a table of NAME = {"),
        ({"bad name": {"url": "http://x:1"}}, 'server.peers has the peer name "bad name", which is not a name'),
        (
            {"a": {"url": "http://x:1"}, "b": {"url": "http://x:1"}},
            "server.peers.b.url is the url of server.peers.a too",
        ),
        ({"laptop": {"url": "http://x:1"}}, 'server.peers.laptop has this node\'s own name "laptop"'),
        ({"a": "http://x:1"}, "server.peers.a must be a table with url"),
    ],
)
def test_peers_table_mistakes(tmp_path: Path, peers: Any, message: str) -> None:
    cfg = base_config()
    cfg["server"].update(peers=peers, node_name="laptop")
    error = load_error(tmp_path, config_text(cfg))
    assert error.startswith(message), error


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("node_name", "my node", "server.node_name must be a name of letters, digits"),
        ("node_name", "", 'server.node_name must be a non-empty string, got ""'),
        ("peer_check_interval", 0, "server.peer_check_interval must be a positive number, got 0"),
        ("peer_trip_after", 0, "server.peer_trip_after must be a positive integer, got 0"),
        ("peer_recover_after", 1.5, "server.peer_recover_after must be a positive integer, got 1.5"),
        ("peer_min_dwell", -1, "server.peer_min_dwell must be a number >= 0, got -1"),
        ("spill_queue", 0, "server.spill_queue must be a positive integer, got 0"),
    ],
)
def test_pool_key_mistakes(tmp_path: Path, key: str, value: Any, message: str) -> None:
    error = load_error(tmp_path, config_text(pooled(**{key: value})))
    assert error.startswith(message), error
