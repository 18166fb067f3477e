"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

The gateway runs as a subprocess with an API key and a fake engine that takes a moment to load.
The test enters the key once, watches the model go from unloaded to loading to loaded after a
request, sees the request in the activity table and engine log lines arrive, saves a screenshot
(``LLMGW_UI_SCREENSHOT=docs/ui.png`` refreshes the README's picture), then clicks Unload and sees
the model unloaded. Without chromium or selenium it is skipped, unless LLMGW_REQUIRE_UI is set
(the tox env ``ui`` sets it, so CI fails loudly instead).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, FakeModel, free_port, wait_gateway_ready, write_config

pytestmark = pytest.mark.ui

KEY = "ui-test-key"
WAIT = 30.0  # hang guard for each step (a shared 2-core machine); never a performance claim
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def _need(what: str) -> None:
    if os.environ.get("LLMGW_REQUIRE_UI"):
        pytest.fail(f"the browser test needs {what} (scripts/chromium.sh installs chromium and chromium-driver)")
    pytest.skip(f"no {what}")


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium (pip install llmgw[ui])")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        _need("chromium and chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="llmgw-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    model = FakeModel(
        "demo-model",
        [4096],
        # Delays give the screenshot plausible tokens/s; the load delay a visible "loading" state.
        extra_args=["--fake-load-delay", "2", "--fake-prompt-delay", "0.05", "--fake-token-delay", "0.02"],
        events=tmp_path / "events.jsonl",
        model_extra={"aliases": ["gpt-4o-mini"]},
    )
    write_config(tmp_path / "config.lua", [model], port, api_keys=[KEY], engine_idle_timeout=600)
    log = (tmp_path / "gateway.log").open("w")  # a file, not a pipe: nobody reads it while the test runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmgw", "-c", str(tmp_path / "config.lua")], cwd=ROOT, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_gateway_ready(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _chat(url: str, results: list[int], request_id: str, model: str = "demo-model", stream: bool = True) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count to ten"}],
        "max_tokens": 24,
        "stream": stream,
    }
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", "X-Request-Id": request_id},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        response.read()
        results.append(response.status)


def test_the_page_shows_loading_activity_logs_and_unloads(browser: Any, gateway: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT, poll_frequency=0.1)

    def text(selector: str) -> str:
        """The text of the element now (read in the page: the tables are redrawn as events arrive)."""
        found = browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e && e.textContent;", selector
        )
        return str(found or "")

    def cells(selector: str) -> list[str]:
        script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent);"
        return [str(c) for c in browser.execute_script(script, selector)]

    def status() -> str:
        return text('#models tr[data-model="demo-model"] td.status')

    browser.get(gateway + "/ui/")
    # The gateway wants a key: the page asks once, and keeps it in this browser.
    key_input = wait.until(
        lambda d: d.find_element(By.ID, "key") if d.find_element(By.ID, "key").is_displayed() else None
    )
    key_input.send_keys(KEY)
    browser.find_element(By.ID, "key-save").click()
    wait.until(lambda _: status() == "unloaded")
    wait.until(lambda _: text("#conn") == "live")

    results: list[int] = []
    request = threading.Thread(target=_chat, args=(gateway, results, "ui-req-1"))
    request.start()
    try:
        wait.until(lambda _: status().startswith("loading"))
        wait.until(lambda _: status() == "loaded")
    finally:
        request.join(WAIT)
    assert results == [200]

    wait.until(lambda _: cells('#activity tr[data-id="ui-req-1"] td')[5:8] == ["200", "6", "24"])
    assert cells('#activity tr[data-id="ui-req-1"] td')[2] == "api_keys[1]"  # the key's name, never the key
    wait.until(lambda _: "log_server_r" in text("#log"))
    _chat(gateway, results, "ui-req-2", model="gpt-4o-mini", stream=False)  # an alias: the model's row
    wait.until(
        lambda _: cells('#activity tr[data-id="ui-req-2"] td')[3:6] == ["demo-model", "/v1/chat/completions", "200"]
    )
    wait.until(lambda _: cells('#keys tr[data-key="api_keys[1]"] td')[3:6] == ["2", "12", "48"])  # usage per key
    assert KEY not in browser.page_source
    wait.until(lambda _: cells('#models tr[data-model="demo-model"] td')[5] == "0")  # in flight

    shot = Path(os.environ.get("LLMGW_UI_SCREENSHOT") or Path(tempfile.gettempdir()) / "llmgw-ui.png")
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    browser.find_element(By.CSS_SELECTOR, 'button.unload[data-model="demo-model"]').click()
    wait.until(lambda _: status() == "unloaded")
    assert browser.find_elements(By.CSS_SELECTOR, 'button.load[data-model="demo-model"]')


def _spawn(tmp_path: Path, name: str, models: list[FakeModel], port: int, **server: Any) -> subprocess.Popen[bytes]:
    config = tmp_path / f"{name}.lua"
    write_config(config, models, port, state_dir=str(tmp_path / f"state-{name}"), **server)
    log = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "llmgw", "-c", str(config)], cwd=ROOT, stdout=log, stderr=log)
    log.close()  # the child has its own copy
    wait_gateway_ready(f"http://127.0.0.1:{port}", proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_page_shows_peers_and_their_breakers(browser: Any, tmp_path: Path) -> None:
    """A gateway with a peer: the page lists the peer's models (where they are served, no load
    button: the peer decides for its own) and the peer with its breaker, which opens when the
    peer goes away."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT, poll_frequency=0.1)
    port_a, port_b = free_port(), free_port()
    procs = [_spawn(tmp_path, "b", [FakeModel("remote-model", [4096])], port_b, node_name="box-b")]
    try:
        peers = {"box-b": {"url": f"http://127.0.0.1:{port_b}"}}
        procs.append(
            _spawn(
                tmp_path, "a", [], port_a, node_name="box-a", peers=peers, peer_check_interval=0.5, peer_trip_after=1
            )
        )

        def text(selector: str) -> str:
            found = browser.execute_script(
                "const e = document.querySelector(arguments[0]); return e && e.textContent;", selector
            )
            return str(found or "")

        browser.get(f"http://127.0.0.1:{port_a}/ui/")
        wait.until(lambda _: "on box-b" in text('#models tr[data-model="remote-model"]'))
        assert not browser.find_elements(By.CSS_SELECTOR, '#models button[data-model="remote-model"]')
        wait.until(lambda _: text('#peers tr[data-peer="box-b"] .badge') == "closed")
        assert "this node: box-a" in text("#node-name")
        _stop(procs[0])  # the peer goes away: its breaker opens, and the page hears it
        wait.until(lambda _: text('#peers tr[data-peer="box-b"] .badge') in ("open", "recovering"))
    finally:
        for proc in procs:
            _stop(proc)
