"""A real headless Chromium (Debian's, driven by Playwright) for the tests of the project's pages:
the gateway's demo page and the online-metrics page.

``headless_page`` opens one page and collects what a page must never do: load anything from
another origin, or log a JavaScript error. It saves a screenshot when the block ends, also when
the test failed there, so a failure can be looked at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium_path() -> str | None:
    explicit = os.environ.get("RECSYS_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def chromium_unavailable_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements.txt; scripts/setup.sh)"
    if chromium_path() is None:
        return "no Chromium binary (apt-get install chromium; or set RECSYS_CHROMIUM)"
    return None


@dataclass
class Watched:
    page: Any  # playwright.sync_api.Page
    elsewhere: list[str] = field(default_factory=list)  # requests to other origins
    errors: list[str] = field(default_factory=list)  # page errors and console errors

    def assert_clean(self) -> None:
        assert not self.elsewhere, f"the page loaded from other origins: {self.elsewhere}"
        assert not self.errors, self.errors


@contextmanager
def headless_page(origin: str, screenshot: Path, *, width: int = 1360,
                  height: int = 1000) -> Iterator[Watched]:
    """A page of a fresh headless Chromium that may load from ``origin`` (and data: URLs) only;
    ``screenshot`` is written when the block ends, whatever happened in it."""
    from playwright.sync_api import sync_playwright

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    # Chromium refuses its sandbox as root (CI containers); /dev/shm is small in containers.
    args = ["--disable-dev-shm-usage", "--disable-gpu"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            watched = Watched(browser.new_page(viewport={"width": width, "height": height}))
            watched.page.on("request", lambda r: None if r.url.startswith((origin, "data:"))
                            else watched.elsewhere.append(r.url))
            watched.page.on("pageerror", lambda exc: watched.errors.append(str(exc)))
            watched.page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
            try:
                yield watched
            finally:
                watched.page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
