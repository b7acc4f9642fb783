"""The whole app in a real browser: `streamlit run app.py` on loopback, driven by Debian's headless Chromium.

Every page: it loads, draws its figures, shows no error; the home page takes a typed prompt.
Screenshots go to screenshots/ (git-ignored).
"""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import capture  # noqa: E402  (the screenshot script owns the server and browser set-up)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test installs it)"),
]
SHOTS = ROOT / "screenshots"


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright

    port = capture.free_port()
    server = capture.start_server(port)
    try:
        with sync_playwright() as pw:
            browser = capture.launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield page, f"http://127.0.0.1:{port}"
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


def _settled(page, min_figures: int = 1) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {min_figures}", timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000)
    page.wait_for_timeout(500)
    assert page.locator("[data-testid=stException]").count() == 0
    assert "Traceback" not in page.inner_text("body")


def test_home_page_takes_a_prompt(browser_page):
    page, url = browser_page
    page.goto(url, timeout=60_000)
    _settled(page)
    box = page.get_by_role("textbox", name="Prompt")
    box.fill("The whale swam into the quiet harbour")
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("document.body.innerText.includes('␣harbour') || document.body.innerText.includes('␣har')", timeout=60_000)
    _settled(page)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "home.png"))


@pytest.mark.parametrize("name", ["attention", "lens", "attribution", "patching", "compare"])
def test_every_page_draws_its_figures(browser_page, name):
    page, url = browser_page
    page.goto(f"{url}/{capture.PAGES[name]}", timeout=60_000)
    _settled(page)
    errors = page.locator("[data-testid=stAlertContentError]")
    assert errors.count() == 0, errors.all_inner_texts()
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_a_shared_link_opens_the_same_view(browser_page):
    page, url = browser_page
    page.goto(f"{url}/Attention?model=circuits&prompt=apple+river+stone+apple+river&layer=1&head=0", timeout=60_000)
    _settled(page)
    body = page.inner_text("body")
    assert "␣apple" in body and "Layer 1, head 0" in body  # the circuits model's word tokens, the linked head
