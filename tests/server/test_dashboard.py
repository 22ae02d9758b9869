"""``/dashboard`` in a real headless browser: Debian's chromium driven by Selenium.

The page must load without console errors, its picture of the KV pages must change while
requests run (pages owned by running requests, a row per request) and return to empty after.
In CI (``CI`` set) a missing browser is a failure, not a skip: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import httpx
import pytest

MODEL = "smol"  # the served name (tests/server/conftest.py); importing conftest by name
# is ambiguous when several test folders run together

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _need_browser() -> None:
    have = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
    try:
        import selenium  # noqa: F401
    except ImportError:
        have = False
    if not have:
        if os.environ.get("CI"):
            pytest.fail("chromium, chromium-driver and selenium must be installed in CI")
        pytest.skip("needs chromium + chromium-driver (apt) and selenium (pip)")


@pytest.fixture()
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pagedllm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_needs_the_api_key(server):
    for path in ("/dashboard", "/dashboard/data"):
        assert httpx.get(server.base_url + path).status_code == 401
        wrong = httpx.get(server.base_url + path, params={"key": "nope"})
        assert wrong.status_code == 401
        assert httpx.get(server.base_url + path, headers=server.headers).status_code == 200
    page = httpx.get(server.base_url + "/dashboard", params={"key": server.api_key})
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing external


def _view(driver) -> dict:
    return driver.execute_script(
        "const s = window.pagedllmDashboard;"
        "return {frames: s.frames,"
        " owned: Number(document.getElementById('n-owned').textContent),"
        " shared: Number(document.getElementById('n-shared').textContent),"
        " rows: document.querySelectorAll('#requests tr.request').length,"
        " running: Number(document.getElementById('n-running').textContent),"
        " picture: document.getElementById('pages').toDataURL()};"
    )


def _wait_for(driver, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    view = _view(driver)
    while not predicate(view):
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard never showed it; last view: {view}")
        time.sleep(0.2)
        view = _view(driver)
    return view


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_dashboard_shows_pages_while_requests_run_and_empties_after(server, idle, browser):
    idle()
    browser.get(f"{server.base_url}/dashboard?key={server.api_key}")
    empty = _wait_for(browser, lambda v: v["frames"] >= 2, 30)
    assert empty["owned"] == 0 and empty["rows"] == 0 and empty["running"] == 0

    body = {
        "model": MODEL,
        "prompt": "Write a long story about pages of memory.",
        "max_tokens": 60,
        "temperature": 0,
        "ignore_eos": True,
    }
    results: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as c:
            results.append(c.post("/v1/completions", json=body).status_code)

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    busy = _wait_for(browser, lambda v: v["rows"] >= 2 and v["owned"] > 0, 120)
    assert busy["picture"] != empty["picture"]
    assert busy["running"] == busy["rows"]
    for t in threads:
        t.join(300)
    assert results == [200, 200, 200]
    after = _wait_for(browser, lambda v: v["rows"] == 0 and v["owned"] == 0, 30)
    assert after["shared"] == 0 and after["running"] == 0
    assert after["picture"] != busy["picture"]
    assert _errors(browser) == []
    # the throughput and KV-usage series saw the run
    history = httpx.get(server.base_url + "/dashboard/data", headers=server.headers).json()
    assert max(p["generation_tok_s"] for p in history["history"]) > 0
    assert max(p["kv_usage"] for p in history["history"]) > 0
