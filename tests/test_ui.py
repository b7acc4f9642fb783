"""The Streamlit glue: shareable URLs, kept inputs."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _page(name: str, **params) -> AppTest:
    at = AppTest.from_file(str(ROOT / name), default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def test_a_link_restores_the_attention_view():
    prompt = "apple river stone cloud apple river stone"
    at = _page("pages/1_Attention.py", model="circuits", prompt=prompt, layer="1", head="2", pos="3")
    assert not at.exception, at.exception
    assert at.session_state["wb.model"] == "circuits" and at.text_area(key="w.prompt").value == prompt
    assert at.selectbox(key="w.layer").value == 1 and at.selectbox(key="w.head").value == 2
    assert at.selectbox(key="w.position").value == 3
    # and the page writes its state back into the URL
    assert at.query_params["layer"] in ("1", ["1"]) and at.query_params["model"] in ("circuits", ["circuits"])


def test_a_link_restores_the_patching_view():
    at = _page(
        "pages/4_Patching.py",
        model="circuits",
        clean="apple river stone cloud apple river",
        corrupted="apple river stone lemon apple river",
        site="z",
        direction="noising",
        metric="probability",
    )
    assert not at.exception and not at.error
    assert at.text_area(key="w.clean").value == "apple river stone cloud apple river"
    assert at.selectbox(key="w.site").value == "z" and at.radio(key="w.direction").value == "noising"
    assert at.selectbox(key="w.metric").value == "probability"


def test_a_bad_link_falls_back_to_defaults():
    at = _page("pages/1_Attention.py", model="circuits", layer="x", head="99", site="nonsense")
    assert not at.exception
    assert at.selectbox(key="w.layer").value == 0 and at.selectbox(key="w.head").value == 3  # clamped to the model


def test_selections_are_shared_between_pages():
    at = _page("pages/1_Attention.py", model="circuits", prompt="apple river stone")
    at.selectbox(key="w.layer").set_value(1)
    at.run()
    assert at.session_state["wb.layer"] == 1 and at.session_state["wb.prompt"] == "apple river stone"


def test_the_selected_position_is_outlined_the_same_way_everywhere():
    for page in ("app.py", "pages/4_Patching.py", "pages/5_Compare.py"):
        at = AppTest.from_file(str(ROOT / page), default_timeout=180)
        at.session_state["wb.model"] = "circuits"
        at.session_state["wb.position"] = 2
        at.run()
        assert not at.exception
        chips = "".join(m.value for m in at.markdown if "position 2" in m.value)
        assert "outline:2px solid #d62728" in chips, page


def test_a_link_restores_generation_and_lens_settings():
    at = _page("app.py", model="circuits", sampling="sample", temperature="0.7", new_tokens="5", top_p="0.9", seed="3", k="12")
    assert not at.exception
    assert at.radio(key="w.gen_mode").value == "sample" and at.number_input(key="w.gen_t").value == 0.7
    assert at.number_input(key="w.gen_n").value == 5 and at.number_input(key="w.gen_seed").value == 3
    assert at.slider(key="w.home_k").value == 12
    lens_page = _page("pages/2_Logit_lens.py", model="english", prompt="My dear sister,", target=" I")
    assert not lens_page.exception and lens_page.text_input(key="w.lens_typed").value == " I"


def test_links_with_values_outside_the_widgets_are_ignored():
    at = _page("app.py", model="circuits", temperature="99", new_tokens="-4", top_p="nan", k="1000", sampling="chaos")
    assert not at.exception
    assert at.number_input(key="w.gen_t").value == 1.0 and at.slider(key="w.home_k").value == 10
    at = _page("pages/1_Attention.py", model="circuits", layer="-5", head="-1")
    assert not at.exception and at.selectbox(key="w.layer").value == 0
