"""Chromium for the page's tests: one browser for the whole package (the image
page's tests and video mode's share it), a fresh page per test.

Debian's Chromium (`/usr/bin/chromium`), driven by Playwright's Python package;
Playwright never downloads a browser here: it launches the system one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 760}


def posted_to(suffix: str) -> Callable[[object], bool]:
    """A `page.expect_response` predicate: a POST whose URL ends with `suffix`."""

    def matches(response) -> bool:  # playwright's Response
        return response.url.endswith(suffix) and response.request.method == "POST"

    return matches


is_upload = posted_to("/v1/images")
is_segment = posted_to("/segment")
is_automatic = posted_to("/automatic-masks")
is_video_upload = posted_to("/v1/videos")
is_prompt = posted_to("/prompts")
is_propagate = posted_to("/propagate")


@pytest.fixture(scope="package")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page that records console errors and every URL it requests."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.errors = []
    page.urls = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.urls.append(r.url))
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()
