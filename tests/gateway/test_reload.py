"""SIGHUP re-reads the config without dropping a running engine that did not change."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from conftest import ROOT, FakeModel, free_port, get_json, only_engine, wait_gateway_ready, write_config


def _wait_for(predicate: object, what: str, seconds: float = 15.0) -> None:
    assert callable(predicate)
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_keeps_unchanged_engine_refuses_broken_config_and_applies_changes(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.lua"
    alpha = FakeModel("alpha", [1024, 4096])
    write_config(config, [alpha], port)
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmgw", "-c", str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_gateway_ready(url, proc)
        get_json(url + "/load", {"model": "alpha"})
        pid = only_engine(get_json(url + "/running"))["pid"]

        # 1. A new model added, alpha untouched: the engine keeps running, the new model is listed.
        write_config(config, [alpha, FakeModel("beta", [2048])], port)
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "beta" in [m["id"] for m in get_json(url + "/v1/models")["data"]], "beta to be listed")
        assert only_engine(get_json(url + "/running"))["pid"] == pid

        # 2. A broken config is refused; the old one keeps serving.
        config.write_text("server = { listen_v4 = \n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "reload refused" in (tmp_path / "gateway.log").read_text(), "the refusal to be logged")
        assert [m["id"] for m in get_json(url + "/v1/models")["data"]] == ["alpha", "beta"]
        assert only_engine(get_json(url + "/running"))["pid"] == pid

        # 3. alpha's running variant changed: its engine is stopped (the next request starts the new one).
        write_config(config, [FakeModel("alpha", [1024, 4096], port=alpha.port, extra_args=["-np", "1"])], port)
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: only_engine(get_json(url + "/running")) is None, "the changed engine to be unloaded")
        _wait_for(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
            "the old engine to exit",
        )
        assert [m["id"] for m in get_json(url + "/v1/models")["data"]] == ["alpha"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert proc.returncode == 0


def _status(url: str, key: str) -> int:
    request = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_sighup_reads_key_files_again_through_python_m_llmgw(tmp_path: Path) -> None:
    port = free_port()
    config, key_file = tmp_path / "c.lua", tmp_path / "team.key"
    key_file.write_text("first-SECRET\n")
    keys = {"team": {"key_file": "team.key", "models": ["alpha"]}, "ops": {"key": "ops-SECRET", "admin": True}}
    write_config(config, [FakeModel("alpha", [1024]), FakeModel("beta", [1024])], port, keys=keys)
    log_path = tmp_path / "gateway.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmgw", "-c", str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: proc.poll() is not None or _up(url), "the gateway to listen")
        assert _status(url, "first-SECRET") == 200 and _status(url, "nope") == 401
        models = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Bearer first-SECRET"})
        with urllib.request.urlopen(models, timeout=30) as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["alpha"]

        key_file.write_text("second-SECRET\n")  # a rotated key: SIGHUP reads the file again
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _status(url, "second-SECRET") == 200, "the new key")
        assert _status(url, "first-SECRET") == 401

        key_file.unlink()  # a reload that cannot read it is refused: the keys in force stay
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "reload refused" in log_path.read_text(), "the refusal to be logged")
        assert "server.keys.team.key_file cannot be read" in log_path.read_text()
        assert _status(url, "second-SECRET") == 200 and _status(url, "ops-SECRET") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    assert proc.returncode == 0
    assert "SECRET" not in log_path.read_text()


def _up(url: str) -> bool:
    try:
        return _status(url, "") in (200, 401)
    except OSError:
        return False
