"""The app's pages on a model run through nnsight (the same pages, unaware of the backend), through AppTest.

A remote model ("ndif://") goes through the same code with a server in between; no NDIF server runs
on this machine (see README, "Beyond one machine"), so the pages are opened on "nnsight:circuits".
"""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.slow
PAGES = Path(__file__).resolve().parents[1] / "pages"
MODEL = "nnsight:circuits"
PROMPT = "apple river stone cloud tiger apple river stone cloud tiger"


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=300)
    at.session_state["wb.model"] = MODEL
    at.session_state["wb.prompt"] = PROMPT
    return at.run()


@pytest.mark.parametrize("name", ["2_Logit_lens", "9_Intervene"])
def test_pages_run_on_nnsight(name):
    at = _page(name)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart")


def test_attention_page_shows_patterns_and_refuses_the_head_anatomy_in_one_line():
    at = _page("1_Attention")
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 6  # every view but the head's anatomy, which needs queries and keys
    assert [e.value for e in at.error] and all("nnsight backend has no site" in e.value and "\n" not in e.value for e in at.error)


def test_patching_page_runs_the_exact_sweep_through_nnsight():
    at = _page("4_Patching")
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Run the exact sweep").click()
    at.run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 2  # the attribution-patching preview and the exact sweep
    # path patching runs on the forward engine only: refused in one line
    assert all("forward engine" in e.value for e in at.error)


def test_a_server_that_does_not_answer_is_one_line_on_the_page_and_the_prompt_stays(tmp_path):
    import socket

    from workbench import families

    folder = families.build("gpt2", tmp_path / "gpt2")
    with socket.socket() as s:  # a port nobody listens on: the server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = AppTest.from_file(str(PAGES / "2_Logit_lens.py"), default_timeout=300)
    at.session_state["wb.model"] = f"ndif://127.0.0.1:{port}/{folder}"
    at.session_state["wb.prompt"] = "The cat sat on the mat"
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert errors and all("did not complete the request" in e and "\n" not in e for e in errors), errors
    assert at.session_state["wb.prompt"] == "The cat sat on the mat"


@pytest.mark.parametrize("probe", ["lens", "patching"])
def test_probes_take_an_nnsight_model(tmp_path, probe):
    import json

    from probes.__main__ import main as probes_main

    out = tmp_path / probe
    argv = [probe, "--model", MODEL, "--formats", "html", "--out", str(out)]
    if probe == "patching":
        argv += ["--site", "resid_pre"]
    assert probes_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["files"]


@pytest.mark.parametrize("path", [*sorted(PAGES.glob("*.py")), PAGES.parent / "app.py"], ids=lambda p: p.stem)
def test_every_page_opens_on_nnsight_and_refuses_what_it_cannot_run_in_one_line(path):
    at = AppTest.from_file(str(path), default_timeout=300)
    at.session_state["wb.model"] = MODEL
    at.run()
    assert not at.exception, at.exception
    for e in at.error:  # a view that needs the bridge's folded weights or the forward engine says so
        assert "\n" not in e.value and ("nnsight" in e.value or "forward engine" in e.value), e.value
