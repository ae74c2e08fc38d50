"""A headless Chromium driven through selenium, for the dashboard's end-to-end test:
sign in with a key, wait for what a page shows, record every URL the browser asked
for (Chrome's DevTools network log) and save screenshots."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from tests.e2e.operator_support import key_of
from tests.harness import wait_until

T = TypeVar("T")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WIDTH, HEIGHT = 1280, 860


def require_chromium() -> None:
    """Skip where Chromium is not installed; in CI (.ci/run installs it) fail instead."""
    if CHROMIUM and CHROMEDRIVER:
        return
    message = "the dashboard test needs Debian's chromium and chromium-driver"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    def __init__(self, base_url: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM or ""
        for argument in (
            "--headless=new",
            "--no-sandbox",  # the test may run as root in a container
            "--disable-dev-shm-usage",
            f"--window-size={WIDTH},{HEIGHT}",
            "--hide-scrollbars",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        inner = self.driver.execute_script("return window.innerHeight")
        self.chrome_height = HEIGHT - int(inner)  # the window's own bars, if any
        self.base_url = base_url
        self.shots = shots
        self.urls: list[str] = []
        self.console: list[dict[str, Any]] = []

    def quit(self) -> None:
        self.driver.quit()

    # --- pages --------------------------------------------------------------------

    def go(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        # Gone if the page reloads: a test checks that updates came without one.
        self.driver.execute_script("window.caoTestMarker = true")

    def not_reloaded(self) -> bool:
        return bool(self.driver.execute_script("return window.caoTestMarker === true"))

    def sign_in(self, who: str) -> None:
        """Forget any key, open the jobs page and enter `who`'s key in its prompt."""
        self.go("/dashboard")
        self.driver.execute_script("sessionStorage.clear()")
        self.go("/dashboard")
        field = self.until(lambda: self.visible("#key-input"), "the key prompt")
        field.send_keys(key_of(who) + "\n")
        self.until(lambda: self.text("#identity"), "the key to be accepted")

    def visible(self, css: str) -> Any:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        try:
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            return next((element for element in found if element.is_displayed()), None)
        except WebDriverException:  # replaced while we looked: look again
            return None

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        return str(
            self.driver.execute_script(f"return document.querySelector({css!r})?.innerText ?? ''")
        )

    def attribute(self, css: str, name: str) -> str | None:
        script = f"return document.querySelector({css!r})?.getAttribute({name!r}) ?? null"
        value = self.driver.execute_script(script)
        return None if value is None else str(value)

    def attributes(self, css: str, name: str) -> list[str | None]:
        """`name` of every element matching `css`, read at one instant."""
        script = (
            f"return [...document.querySelectorAll({css!r})].map(e => e.getAttribute({name!r}))"
        )
        return list(self.driver.execute_script(script))

    def until(self, predicate: Callable[[], T | None], what: str, timeout: float = 20) -> T:
        return wait_until(predicate, timeout, 0.05, what)

    def click(self, css: str) -> None:
        self.until(lambda: self.visible(css), f"{css} to show").click()

    # --- artefacts ----------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"dashboard-{name}.png"
        # The whole page, however long, at the width the dashboard is made for.
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(WIDTH, max(HEIGHT, int(height) + self.chrome_height))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(WIDTH, HEIGHT)
        print(f"screenshot: {path}")
        extra = os.environ.get("CAO_DASHBOARD_SCREENSHOTS")  # e.g. docs, to refresh them
        if extra:
            shutil.copy(path, Path(extra) / path.name)
        return path

    def drain_logs(self) -> None:
        """Move the browser's network and console logs into `urls` and `console`."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                self.urls.append(params["request"]["url"])
            elif message.get("method") == "Network.webSocketCreated":
                self.urls.append(params["url"])
        self.console.extend(self.driver.get_log("browser"))

    def origins(self) -> set[str]:
        return {f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" for url in self.urls}
