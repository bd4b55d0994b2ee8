"""Headless Chromium for tests that look at pages as a person would, driven over the W3C WebDriver
protocol by Debian's chromedriver with plain httpx: no Selenium, no Playwright, no browser download.

`.ci/run` installs `chromium` and `chromium-driver`; when they are missing (a bare `pytest` run)
the tests install them here if they can, and skip, saying why, only when that is impossible.

Screenshots a test keeps (`Browser.keep_screenshot`) are written to the folder named by
`TEST_ARTIFACTS_DIR`, by default `var/test-artifacts/screenshots/` in the repository (ignored by git).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.redis_server import free_port
from tests.stack.conftest import ROOT, wait_for

ARTIFACTS_ENV = "TEST_ARTIFACTS_DIR"


def screenshots_dir() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "var" / "test-artifacts" / "screenshots")


CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]
SESSION_START_S = 60
START_ATTEMPTS = 3


def _found() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def chromium_and_driver() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages if need be."""
    found = _found()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium and chromedriver are not installed and apt-get is not usable here (not root or not Debian)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"cannot install chromium: `{' '.join(command)}` failed: {result.stderr.strip()[-300:]}")
    found = _found()
    if not found:
        pytest.skip("apt-get installed chromium but chromium or chromedriver is still not on PATH")
    return found


class Browser:
    """One Chromium session: open pages, run JavaScript in them, read their console, take screenshots."""

    def __init__(self, driver_url: str, chromium: str) -> None:
        self.http = httpx.Client(base_url=driver_url, timeout=30)
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": CHROMIUM_FLAGS},
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        try:
            started = self.http.post(
                "/session", json={"capabilities": {"alwaysMatch": capabilities}}, timeout=SESSION_START_S
            )
        except BaseException:
            self.http.close()
            raise
        assert started.status_code == 200, started.text
        self.session = f"/session/{started.json()['value']['sessionId']}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, self.session + path, json=body)
        assert response.status_code == 200, response.text
        return response.json()["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; `arguments` holds `args`) in the page; its return value."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def console(self) -> list[str]:
        """The console messages logged since the last call (CSP violations among them)."""
        return [str(entry["message"]) for entry in self._call("POST", "/se/log", {"type": "browser"})]

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))

    def keep_screenshot(self, name: str) -> Path:
        """A screenshot of the page kept as a test artifact, `<name>.png` in `screenshots_dir()`."""
        folder = screenshots_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.screenshot(path)
        print(f"screenshot kept: {path}")
        return path

    def close(self) -> None:
        try:
            self.http.delete(self.session)
        finally:
            self.http.close()


class _Driver:
    """A chromedriver process in its own process group, so that stopping it also stops its Chromium."""

    def __init__(self, driver: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def ready(self) -> bool:
        try:
            return bool(httpx.get(f"{self.url}/status", timeout=1).json()["value"]["ready"])
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _start(chromium: str, driver: str) -> tuple[_Driver, Browser]:
    """A driver with a session open. A start that hangs (seen once on a loaded CI machine: no answer
    to the new-session request in 30 s) is abandoned and tried afresh; starting the browser is not
    what these tests are about."""
    for attempt in range(1, START_ATTEMPTS + 1):
        process = _Driver(driver)
        try:
            wait_for(process.ready, timeout_s=30, interval_s=0.1, what="chromedriver")
            return process, Browser(process.url, chromium)
        except (httpx.TimeoutException, TimeoutError, AssertionError):
            process.stop()
            if attempt == START_ATTEMPTS:
                raise
        except BaseException:
            process.stop()
            raise
    raise AssertionError("unreachable")


@contextmanager
def browser() -> Iterator[Browser]:
    chromium, driver = chromium_and_driver()
    process, session = _start(chromium, driver)
    try:
        yield session
    finally:
        try:
            session.close()
        finally:
            process.stop()
