"""The home page through Streamlit's AppTest: real model, real runs, no browser."""

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _app(model: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if model:
        at.session_state["wb.model"] = model
    return at.run()


def _form_button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


@pytest.mark.parametrize("model", ["english", "circuits"])
def test_home_page_renders_on_each_shipped_model(model):
    at = _app(model)
    assert not at.exception, at.exception
    assert not at.error
    charts = _charts(at)
    assert charts and charts[0]["data"][0]["type"] == "bar"
    assert any("BOS first" in s.value for s in at.subheader)


def test_generation_shows_each_step():
    at = _app("circuits")
    at.session_state["wb.prompt"] = "apple river stone cloud tiger piano apple river stone"
    at.run()
    _form_button(at, "Generate").click()
    at.run()
    assert not at.exception
    specs = _charts(at)
    assert any(s["data"][0]["type"] == "heatmap" for s in specs)
    assert any("cloud" in m.value for m in at.markdown)


def test_empty_prompt_shows_a_message_and_keeps_the_page():
    at = _app("english")
    at.text_area(key="w.prompt").set_value("   ")
    _form_button(at, "Run").click()
    at.run()
    assert not at.exception
    assert any("empty" in e.value for e in at.error)
    assert at.text_area(key="w.prompt").value == "   "


def test_bad_model_folder_keeps_the_previous_model():
    st.cache_resource.clear()
    at = _app("english")
    at.selectbox(key="w.model_choice").set_value("a local folder or cached hub model…")
    at.run()
    at.text_input(key="w.model_path").set_value("/no/such/folder")
    at.run()
    assert not at.exception
    assert any("no model folder" in e.value for e in at.sidebar.error)
    assert at.session_state["wb.model"] == "english"
    assert _charts(at)  # still working on the previous model
