"""A real headless Chromium for the e2e tests, driven through Selenium and Debian's chromedriver.

Debian's ``chromium`` and ``chromium-driver`` are installed with apt-get when missing (as root,
or with passwordless sudo); where that is impossible the tests that need a browser are skipped
with apt's own words. Chromium's own downloads (Playwright's, Selenium Manager's) are never used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APT_PACKAGES = ["chromium", "chromium-driver"]
# Known to work here as root; no network access of Chromium's own, a fresh profile each time.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def apt_install(packages: list[str]) -> str | None:
    """Install Debian packages; None on success, else why not (for a skip reason)."""
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    install = [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends"]
    out = subprocess.run([*install, *packages], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run([*sudo, "apt-get", "update"], capture_output=True, timeout=600)
        out = subprocess.run([*install, *packages], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return f"`{' '.join(install)} {' '.join(packages)}` failed: {(out.stderr or out.stdout)[-500:]}"
    return None


def ensure_chromium() -> str | None:
    """Make Chromium and its driver available; None when ready, else the reason they are not."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        failure = apt_install(APT_PACKAGES)
        if failure:
            return failure
    try:
        import selenium  # noqa: F401 - in the `test` extra
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def new_browser(profile: Path, width: int = 1400, height: int = 1000):  # -> selenium WebDriver
    """A fresh headless Chromium with an empty profile in ``profile`` (no cookies); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile.mkdir(parents=True, exist_ok=False)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def page_text(driver) -> str:
    """Everything the page shows as text."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_text(driver, check: Callable[[str], bool], timeout: float, what: str) -> str:
    """Poll the page's text until ``check`` holds; return it, or fail showing what was there."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page_text(driver)
        if check(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; the page shows:\n{text[:3000]}")


def screenshot(driver, name: str, fallback_dir: Path) -> Path:
    """Save a PNG to $RAYTORCH_SCREENSHOTS (e.g. docs/screenshots, for the README) or ``fallback_dir``."""
    directory = Path(os.environ.get("RAYTORCH_SCREENSHOTS") or fallback_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    driver.save_screenshot(str(path))
    return path
