"""The Attribution graph page through Streamlit's AppTest (real model, its shipped transcoders), and its probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import attribution_graph as ag
from workbench.model import load_model

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "apple river stone cloud tiger lemon apple river stone"


def _page(**params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "12_Attribution_graph.py"), default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def test_the_page_draws_the_graph_opens_a_feature_and_keeps_supernodes_in_the_link():
    model = load_model("circuits")
    g = ag.graph_of(model, PROMPT)
    top = g.top_features(2)
    node = g.node_id(top[0])
    groups = "pair: " + " ".join(g.node_id(i) for i in top)
    at = _page(model="circuits", prompt=PROMPT, node=node, supernodes=groups, factor="0")
    assert not at.exception, at.exception
    assert not at.error
    assert at.selectbox(key="w.node").value == node
    assert at.query_params["supernodes"] == groups and at.query_params["node"] == node
    charts = at.get("plotly_chart")
    assert len(charts) >= 4  # the graph, the feature on the prompt, its logit effect, the intervention
    spec = json.loads(charts[0].proto.spec)
    assert "Attribution graph" in spec["layout"]["title"]["text"]
    assert any(a.get("text") == "pair" for a in spec["layout"].get("annotations", []))  # the supernode drawn
    assert at.dataframe  # contexts, edges, next tokens

    def bars() -> list[str]:  # the intervention figure's bars
        return json.loads(at.get("plotly_chart")[3].proto.spec)["data"][0]["x"]

    assert not any(x.startswith("reference") for x in bars())  # the references only on request
    at.checkbox(key="w.ag_references").check().run()
    assert not at.exception and [x for x in bars() if x.startswith("reference")] == [
        "reference: real model's tangent",
        "reference: replacement model's tangent",
    ]


def test_a_bad_supernode_is_one_line_not_a_traceback():
    at = _page(model="circuits", prompt=PROMPT, supernodes="pair: 9_9_9")
    assert not at.exception
    assert at.error and "no node" in at.error[0].value


def test_the_probe_writes_the_graph_the_checks_and_the_export(tmp_path):
    from probes.__main__ import main

    assert main(["attribution-graph", "--model", "circuits", "--prompt", PROMPT, "--out", str(tmp_path), "--formats", "html"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["summary"]["checks"][0]["factor"] == 0.0
    doc = json.loads((tmp_path / "workbench-graph.json").read_text())
    assert doc["metadata"]["slug"] == "workbench-graph" and doc["nodes"] and doc["links"]
    viewer = json.loads((tmp_path / "viewer" / "workbench-graph.json").read_text())
    index = next(n["feature"] for n in viewer["nodes"] if n["feature_type"] == "cross layer transcoder")
    assert (tmp_path / "viewer" / "features" / "circuits" / f"{index}.json").is_file()
    assert main(["attribution-graph", "--model", "english", "--prompt", "", "--out", str(tmp_path / "bad")]) == 2


@pytest.fixture(autouse=True)
def _clear():
    import streamlit as st

    st.cache_resource.clear()


def test_a_users_transcoder_folder_is_read_and_a_wrong_one_is_one_line(tmp_path):
    import shutil

    shutil.copytree(Path(load_model("circuits").info.source) / "transcoders", tmp_path / "mine")
    at = _page(model="circuits", prompt=PROMPT, transcoders=str(tmp_path / "mine"))
    assert not at.exception and not at.error
    assert at.get("plotly_chart")
    at = _page(model="circuits", prompt=PROMPT, transcoders=str(tmp_path / "nothing-here"))
    assert not at.exception
    assert at.error and "no transcoder folders" in at.error[0].value


def _click(at: AppTest, chart: str, points: list[dict]) -> AppTest:
    """Reruns the page as a click in the browser does: the chart's widget state holds the selection, serialized as
    Streamlit's frontend sends it ({"selection": {"points": [...], "point_indices": [...], "box": [], "lasso": []}})."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    element = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(chart))
    assert element.proto.selection_mode  # drawn with on_select: a click reruns the page
    payload = {"selection": {"points": points, "point_indices": [p["point_index"] for p in points], "box": [], "lasso": []}}
    tree = at._tree
    states = tree.get_widget_states

    def with_click():
        ws = states()
        ws.widgets.append(WidgetState(id=element.proto.id, string_value=json.dumps(payload)))
        return ws

    tree.get_widget_states = with_click  # AppTest has no plotly chart widget to set: the state it would send, added
    return at.run()


def _point(spec: dict, node: str) -> dict:
    """The selection point of `node` in the drawn figure (its trace, index and coordinates), as plotly.js reports a click."""
    for c, trace in enumerate(spec["data"]):
        ids = trace.get("customdata") or []
        if node in ids:
            i = ids.index(node)
            return {"curve_number": c, "point_number": i, "point_index": i, "x": _values(trace["x"])[i],
                    "y": _values(trace["y"])[i], "customdata": node}  # fmt: skip
    raise AssertionError(f"{node} is not drawn")


def _values(v):
    """A plotly array as a list (plotly 6+ encodes numeric arrays as base64 `bdata`)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def test_clicking_a_feature_in_the_graph_opens_it_and_the_picker_still_works_after():
    model = load_model("circuits")
    g = ag.graph_of(model, PROMPT)
    first, second = (g.node_id(i) for i in g.top_features(2))
    at = _page(model="circuits", prompt=PROMPT)
    assert not at.exception and at.selectbox(key="w.node").value == ""
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    at = _click(at, "attribution-graph", [_point(spec, second)])
    assert not at.exception, at.exception
    assert at.selectbox(key="w.node").value == second and at.query_params["node"] == second
    layer, _pos, f = g.features[g.index_of(second)].tolist()
    assert any(f"Feature {f} of layer {layer}" in h.value for h in at.subheader)  # its dashboard is open
    # the old click, still in the chart's state, does not override a feature picked afterwards
    at.selectbox(key="w.node").set_value(first)
    at.run()
    assert at.selectbox(key="w.node").value == first
    # an edge (no customdata) selects nothing
    at = _click(at, "attribution-graph", [{"curve_number": 0, "point_number": 0, "point_index": 0, "x": 0, "y": 0}])
    assert at.selectbox(key="w.node").value == first
