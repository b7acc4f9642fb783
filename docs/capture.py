"""Screenshots of the app for the README: python docs/capture.py [page ...].

Starts `streamlit run app.py` on loopback, opens each page in Debian's headless Chromium
(Playwright, which downloads no browser here), waits for the figures, and saves docs/<page>.png.
The real-browser test (tests/test_browser.py) drives the app with the same server and browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "home": "",
    "attention": "Attention",
    "lens": "Logit_lens",
    "attribution": "Attribution",
    "patching": "Patching",
    "compare": "Compare",
    "training": "Training",
    "graph": "Graph",
    "intervene": "Intervene",
    "methods": "Methods",
    "features": "Features",
    "tasks": "Tasks",  # the default model's tasks
    "attribution_graph": "Attribution_graph",
}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
        "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the streamlit server did not start within 60 s")


def launch(pw):
    """Debian's Chromium, headless, with the flags this closed network needs."""
    import shutil

    return pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)


# Work that a page runs only on request (ui.gate: above the cost model's budget) waits behind a button that
# carries its estimate, "Score the methods (~40 s)"; a screenshot of the page asks for it, as a user would.
GATE_BUTTON = r"\(~[^()]*\)$"


def _idle(page, timeout_ms: int) -> None:
    """Waits until no script run is going on: Streamlit's "Running" indicator is gone, and stays gone for a second."""
    for _ in range(3):
        page.wait_for_function("!document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout_ms)
        page.wait_for_timeout(1000)
        if not page.locator("[data-testid=stStatusWidget]").count():
            return


# a click in the page's own JavaScript: a run in progress redraws its elements, and a button found by one call
# may be detached before the next call clicks it (CI saw the Attribution gate detached for 30 s on end)
CLICK_GATE = """pattern => {
    const re = new RegExp(pattern);
    const button = [...document.querySelectorAll('button')].find(b => re.test(b.innerText.trim()) && !b.disabled);
    if (!button) return false;
    button.click();
    return true;
}"""


def ask_for_gated_work(page, timeout_ms: int = 300_000) -> None:
    """Waits until the page shows a figure or a gated button; clicks every gated button it shows."""
    page.wait_for_function(
        "document.querySelectorAll('.js-plotly-plot').length > 0 || "
        f"[...document.querySelectorAll('button')].some(b => new RegExp({json.dumps(GATE_BUTTON)}).test(b.innerText.trim()))",
        timeout=timeout_ms,
    )
    _idle(page, timeout_ms)
    for _ in range(3):  # each click reruns the page, which may then show the next gate
        if not page.evaluate(CLICK_GATE, GATE_BUTTON):
            break
        from playwright.sync_api import TimeoutError as Timeout

        with contextlib.suppress(Timeout):  # the run the click starts: its indicator may come and go before this looks
            page.wait_for_selector("[data-testid=stStatusWidget]", timeout=10_000)
        _idle(page, timeout_ms)


def main(pages: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_server(port)
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name in pages:
                page.goto(f"http://127.0.0.1:{port}/{PAGES[name]}", timeout=60_000)
                ask_for_gated_work(page)
                page.wait_for_selector(".js-plotly-plot", timeout=120_000)
                page.wait_for_timeout(2500)  # let plotly finish drawing
                page.screenshot(path=str(ROOT / "docs" / f"{name}.png"), full_page=False)
                print(f"wrote docs/{name}.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main(sys.argv[1:] or list(PAGES))
