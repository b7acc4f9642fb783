"""The Streamlit glue: shareable URLs, kept inputs."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import attention, ui
from workbench.model import load_model

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
    strongest = attention.head_types_on_repeats(load_model("circuits")).ranked("induction", 1)[0]
    assert at.selectbox(key="w.layer").value == strongest["layer"]  # "x" ignored: the page's default, the best induction head
    assert at.selectbox(key="w.head").value == 3  # 99 clamped to the model


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
    assert at.radio(key="w.sampling").value == "sample" and at.number_input(key="w.temperature").value == 0.7
    assert at.number_input(key="w.new_tokens").value == 5 and at.number_input(key="w.seed").value == 3
    assert at.number_input(key="w.top_p").value == 0.9 and at.slider(key="w.k").value == 12
    lens_page = _page("pages/2_Logit_lens.py", model="english", prompt="My dear sister,", tracked=" I")
    assert not lens_page.exception and lens_page.text_input(key="w.tracked").value == " I"


def test_links_with_values_outside_the_widgets_are_ignored():
    at = _page("app.py", model="circuits", temperature="99", new_tokens="-4", top_p="nan", k="1000", sampling="chaos")
    assert not at.exception
    assert at.number_input(key="w.temperature").value == 1.0 and at.slider(key="w.k").value == 10
    assert at.radio(key="w.sampling").value == "greedy (most likely)"
    at = _page("pages/1_Attention.py", model="circuits", layer="-5", head="-1")
    strongest = attention.head_types_on_repeats(load_model("circuits")).ranked("induction", 1)[0]
    assert not at.exception and at.selectbox(key="w.layer").value == strongest["layer"]  # the page's default


def test_a_page_restores_only_what_it_declares():
    # the attention page does not know the patching page's site: its link is not read into that widget
    at = _page("pages/1_Attention.py", model="circuits", prompt="apple river stone", site="z", method="saliency")
    assert not at.exception
    assert "w.site" not in at.session_state and "w.method" not in at.session_state
    assert set(at.query_params) <= {"model", "prompt", "layer", "head", "pos"}


def test_a_link_is_read_once_per_page_and_then_the_widgets_rule():
    at = _page("pages/4_Patching.py", model="circuits", site="z", direction="noising")
    at.selectbox(key="w.site").set_value("resid_pre")
    next(b for b in at.button if b.label == "Preview").click()  # the site is in the page's form
    at.run()
    assert not at.exception and at.selectbox(key="w.site").value == "resid_pre"  # the link's "z" is not read again
    assert at.query_params["site"] in ("resid_pre", ["resid_pre"])


def test_an_undeclared_widget_key_is_refused_with_the_fix():
    view = ui.View("Example", "", params=(ui.choice("site", ["a", "b"]),))
    assert view.key("site") == "w.site" and view.key("model") == ui.MODEL
    with pytest.raises(KeyError, match="declare it"):
        view.key("layer")


def test_parameters_read_only_values_their_widget_accepts():
    assert ui.number("n", int, 1, 10).read("4") == 4 and ui.number("n", int, 1, 10).read("11") is None
    assert ui.number("t", float, 0.0, 1.0).read("nan") is None and ui.number("t", float, 0.0, 1.0).read("x") is None
    assert ui.choice("c", ["a"]).read("a") == "a" and ui.choice("c", ["a"]).read("b") is None


def test_a_bounded_cache_drops_the_least_recently_used():
    cache = ui.Bounded(2)
    cache.put("a", 1)
    cache.put("b", None)  # None is a result like any other
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is ui.Bounded.MISSING and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def _cached_script():
    import streamlit as st

    from workbench import ui
    from workbench.model import load_model

    calls = st.session_state.setdefault("calls", [])

    def analysis(model, n, progress=None):
        calls.append(n)
        return n * 10

    remembered = ui.Cached(analysis, entries=2, per_session=True)
    model = load_model("circuits")
    st.session_state["peeked"] = remembered.peek(model, 1)
    for n in st.session_state.get("ask", []):
        remembered(model, n, progress=lambda done, total: True)


def test_per_session_cache_is_bounded_and_ignores_the_progress_callback():
    at = AppTest.from_function(_cached_script, default_timeout=120)
    at.session_state["ask"] = [1, 1, 2]
    at.run()
    assert not at.exception and at.session_state["calls"] == [1, 2] and at.session_state["peeked"] is None
    at.session_state["ask"] = [3]  # the peek at 1 makes 2 the least recently used: the third result pushes it out
    at.run()
    assert at.session_state["peeked"] == 10
    at.session_state["ask"] = [2]
    at.run()
    assert at.session_state["peeked"] == 10 and at.session_state["calls"] == [1, 2, 3, 2]
    caches = at.session_state[ui.SESSION_CACHES]
    assert len(caches) == 1 and all(len(c) <= 2 for c in caches.values())


def _cancel_script():
    import streamlit as st
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from workbench import ui
    from workbench.errors import InputError

    def work(progress):
        """Like the library's sweeps: stop through the cancel path when progress returns False."""
        for done in range(1, 11):
            if progress(done, 10) is False:
                st.session_state["stopped_at"] = done
                raise InputError(f"cancelled after {done} of 10")
        st.session_state["finished"] = True

    def interrupted_at_3(done, total):
        if done == 3:
            raise StopException()  # what Streamlit raises from a drawing call once Cancel is clicked

    with ui.progress("Work") as report:
        report.update = interrupted_at_3
        work(report)
    st.session_state["after"] = True  # never reached: the stop goes ahead


def test_cancel_stops_the_work_through_its_cancel_path_and_lets_streamlit_stop():
    at = AppTest.from_function(_cancel_script, default_timeout=60).run()
    assert not at.exception and not at.error
    assert at.session_state["stopped_at"] == 3
    assert "finished" not in at.session_state and "after" not in at.session_state


def test_a_cancelled_sweep_stops_between_batches(circuits):
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException

    from workbench import patching, tasks
    from workbench.errors import InputError

    seen = []

    def update(done, total):
        seen.append(done)
        if len(seen) == 2:
            raise RerunException(None)

    report = ui.Reporter(update)
    tok = circuits.tokenizer
    pair = tasks.Pair(
        "apple river stone cloud apple river",
        "apple river stone lemon apple river",
        tok(" cloud")["input_ids"][0],
        tok(" lemon")["input_ids"][0],
    )
    with pytest.raises(InputError, match="cancelled after"):
        patching.sweep(circuits, pair, "z_pos", progress=report)
    assert len(seen) == 2 and isinstance(report.interrupted, RerunException) and report(99, 100) is False


# the glossary's words on every page (labels, captions, markdown, options…): tests/test_vocabulary.py


def test_cache_keys_are_values_not_identities():
    import torch

    from workbench.tasks import Pair
    from workbench.ui.cache import _frozen  # the key maker itself, private to the ui's cache

    a, b = Pair("x y", "x z", 1, 2), Pair("x y", "x z", 1, 2)
    assert _frozen([a, {"k": [1, 2]}]) == _frozen([b, {"k": [1, 2]}])
    assert _frozen(a) != _frozen(Pair("x y", "x z", 1, 3))
    assert _frozen(Pair("x y", "x z", " y", " z")) != _frozen(Pair("x y", "x z", " y", " w"))  # answers as strings too
    with pytest.raises(TypeError, match="cannot be one"):
        _frozen([torch.zeros(2)])  # equal tensors would never hit the cache


def test_the_graph_page_restores_its_link_and_shows_a_picked_edge():
    prompt = "apple river stone cloud tiger piano apple river stone"
    at = _page("pages/7_Graph.py", model="circuits", prompt=prompt, pos="7", threshold="0.1", ablation="zero", k="2", edges="by head")
    assert not at.exception
    assert not at.error
    assert [w.value for w in at.warning if "survive" in w.value] or [s.value for s in at.success if "keeps" in s.value]  # the verdict
    assert at.number_input(key="w.threshold").value == pytest.approx(0.1)
    assert at.selectbox(key="w.position").value == 7
    assert at.radio(key="w.ablation").value == "zero" and at.radio(key="w.edges").value == "by head"
    assert at.query_params["threshold"] == "0.1" and at.query_params["pos"] == "7"
    assert len(at.get("plotly_chart")) == 2  # the graph and its faithfulness
    at.selectbox(key="w.graph_edge").set_value(0).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3 and at.dataframe  # the edge's heads (or neurons) and the lens at its node
    attention_edges = [i for i, opt in enumerate(at.selectbox(key="w.graph_edge").options) if opt.startswith("attention")]
    at.selectbox(key="w.graph_edge").set_value(attention_edges[0] - 1).run()  # options start with "—"
    assert not at.exception and at.selectbox(key="w.graph_head").value in range(4)
    assert len(at.get("plotly_chart")) == 4  # graph, the edge's heads, the head's pattern, faithfulness


def test_the_app_opens_on_the_stories_model_and_names_words_it_does_not_know():
    at = _page("pages/1_Attention.py")
    assert not at.exception, at.exception
    assert at.session_state["wb.model"] == "stories" and at.text_area(key="w.prompt").value == ui.example_prompt("stories")
    assert not at.warning  # the example is the world's own words
    at = _page("pages/1_Attention.py", prompt="Erin saw a whale and a submarine")
    assert not at.exception, at.exception
    (note,) = [w.value for w in at.warning if "does not know" in w.value]
    assert "'whale', 'submarine'" in note and "<unk>" in note
    assert at.selectbox(key="w.layer").value is not None  # the views still run


def test_importing_the_ui_leaves_the_process_allocator_alone_and_a_page_sets_it():
    """long.map_large_allocations changes the whole process's malloc: a notebook or test importing ui must not get it;
    the server gets it when its first page runs (ui.View.start)."""
    import subprocess
    import sys

    code = (
        "import workbench.long as l; calls = []; l.map_large_allocations = lambda: calls.append(1)\n"
        "from workbench import ui; print(len(calls))\n"
        "ui.serving_allocator(); ui.serving_allocator(); print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == ["0", "1"]  # none at import; once per process however many pages run
