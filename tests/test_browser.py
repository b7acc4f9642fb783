"""The whole app in a real browser: `streamlit run app.py` on loopback, driven by Debian's headless Chromium.

Every page: it loads, draws its figures, shows no error; the home page takes a typed prompt; a long
patching sweep is cancelled from its Cancel button and the page keeps its inputs.
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
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {min_figures}", timeout=300_000)
    page.wait_for_function("!document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000)
    page.wait_for_timeout(500)
    assert page.locator("[data-testid=stException]").count() == 0
    assert "Traceback" not in page.inner_text("body")


def test_home_page_takes_a_prompt(browser_page):
    page, url = browser_page
    page.goto(url, timeout=60_000)
    _settled(page)
    box = page.get_by_role("textbox", name="Prompt")
    box.fill("Erin and Vernon went to the market")  # the default (stories) model's own words
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("document.body.innerText.includes('␣Vernon') && document.body.innerText.includes('␣market')", timeout=60_000)
    _settled(page)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "home.png"))


@pytest.mark.parametrize(
    "name",
    [
        "attention",
        "lens",
        "attribution",
        "patching",
        "compare",
        "training",
        "graph",
        "intervene",
        "methods",
        "features",
        "tasks",
        "attribution_graph",
    ],
)
def test_every_page_draws_its_figures(browser_page, name):
    page, url = browser_page
    page.goto(f"{url}/{capture.PAGES[name]}", timeout=60_000)
    capture.ask_for_gated_work(page)  # the Methods scoreboard, for one, runs only on its button at this machine's speed
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


def test_a_long_sweep_is_cancelled_and_the_page_keeps_its_inputs(browser_page, tmp_path):
    from urllib.parse import urlencode

    from workbench import families

    page, url = browser_page
    # a GPT-2-small-deep random model (12 layers x 12 heads) and ~200 tokens, every head at every position: tens of
    # thousands of patched runs, so the sweep is still running when Cancel is clicked (the shipped models are too small)
    folder = families.build("gpt2", tmp_path / "deep", layers=12, width=192, heads=12, mlp=384, positions=512, init=0.02)
    prefix = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. " * 6
    clean, corrupted = prefix + "The cat sat on the mat. The cat sat on the", prefix + "The cat sat on the bed. The cat sat on the"
    link = urlencode(dict(model=str(folder), clean=clean, corrupted=corrupted, site="z_pos", metric="probability"))
    page.goto(f"{url}/Patching?{link}", timeout=60_000)
    _settled(page)
    page.get_by_role("button", name="Run the exact sweep").click()
    cancel = page.get_by_role("button", name="Cancel")
    cancel.wait_for(timeout=60_000)
    cancel.click()
    page.get_by_text("The exact sweep cancelled").wait_for(timeout=120_000)
    _settled(page)
    body = page.inner_text("body")
    assert "Correlation of the preview with the exact sweep" not in body  # no exact result: it was cancelled
    assert page.get_by_role("textbox", name="Clean prompt").input_value() == clean
    assert page.get_by_role("textbox", name="Corrupted prompt (same number of tokens)").input_value() == corrupted
    assert "z_pos: each head" in page.locator("[data-testid=stSelectbox]").filter(has_text="Site").inner_html()
    assert page.get_by_role("button", name="Run the exact sweep").is_visible()  # and it can be run again
    assert "site=z_pos" in page.url and "metric=probability" in page.url
