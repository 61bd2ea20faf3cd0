"""Real-browser harness: start the app as the README does and drive Debian's Chromium headless.

`streamlit run app.py` on a free loopback port; Playwright (Python) with
`executable_path=/usr/bin/chromium` (no browser download). Used by tests/test_e2e_browser.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def browser_missing_reason() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed (pip install -r requirements-dev.txt)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(env_extra: dict[str, str] | None = None, timeout: float = 90):
    """`streamlit run app.py` headless on loopback; yields its base URL, stops it afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    log_path = ROOT / "tests" / "artifacts" / f"streamlit-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited early; see {log_path}:\n{log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"streamlit did not answer on {url} within {timeout} s")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running...' status widget)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_ms,
    )
    page.wait_for_timeout(300)


def assert_no_exception(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    if boxes.count():
        raise AssertionError("Streamlit exception on the page:\n" + boxes.first.inner_text()[:2000])


def wait_text(page, text: str, timeout_ms: int = 240_000) -> None:
    """Wait until the main area shows `text` (what a person would wait for)."""
    page.wait_for_function(
        "t => (document.querySelector('[data-testid=\"stMain\"]') || document.body).innerText.includes(t)",
        arg=text,
        timeout=timeout_ms,
    )


def open_page(page, url: str) -> None:
    """Go to `url` and wait until the page has run, without an exception box."""
    page.goto(url)
    page.locator('[data-testid="stSidebar"]').wait_for(timeout=60_000)
    wait_idle(page)
    assert_no_exception(page)


# ------------------------------------------------------------------------------------------------
# Playwright's async API: several pages driven at once from one event loop (benchmarks/soak/)

POLL_MS = 250  # how often the async waits check a page (not every animation frame: many pages share the CPUs)


async def wait_idle_async(page, timeout_ms: int = 120_000) -> None:
    """`wait_idle` for an async Playwright page."""
    await page.wait_for_timeout(300)
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_ms,
        polling=POLL_MS,
    )
    await page.wait_for_timeout(300)


async def wait_text_async(page, text: str, timeout_ms: int = 240_000) -> None:
    """Wait until the main area of an async Playwright page shows `text`."""
    await page.wait_for_function(
        "t => (document.querySelector('[data-testid=\"stMain\"]') || document.body).innerText.includes(t)",
        arg=text,
        timeout=timeout_ms,
        polling=POLL_MS,
    )
