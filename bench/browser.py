"""Debian's Chromium, headless, driven by playwright-python (playwright's own browser download cannot work here):
for the page tests and `make screenshots`."""

import contextlib
import os
import pathlib

CHROMIUM = pathlib.Path("/usr/bin/chromium")
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


class ChromiumMissing(RuntimeError):
    pass


@contextlib.contextmanager
def launched():
    """One headless browser; `make test` and `make screenshots` install Debian's chromium when it is missing."""
    if not CHROMIUM.exists():
        raise ChromiumMissing(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # The sandbox needs user namespaces a root process in a container does not get.
        arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=arguments)
        try:
            yield browser
        finally:
            browser.close()
