"""Path patching: every path is ordinary patching of the sender (patching.sweep and the bridge's hooks); one path is an edge."""

import json

import pytest
import torch

from workbench import edges, engine, methods, patching, paths, tasks
from workbench.errors import InputError
from workbench.runs import run_edited, run_prompt


@pytest.fixture(scope="module", params=["circuits", "answer_key"])
def case(request):
    model = request.getfixturevalue(request.param)
    setup = tasks.induction_pairs(model, 1)[0]
    return model, setup, methods.prepare(model, setup)


def test_every_path_of_a_head_is_ordinary_patching_of_the_head(case):
    model, setup, pair = case
    w = pair.weights
    sweep = patching.sweep(model, setup, "z")  # the exact sweep: each head's output patched, by the sweep's own engine path
    for head in range(w.n_heads):
        for layer in range(w.n_layers):
            sender = edges.Sender("head", layer, head)
            r = paths.path_patch(model, pair, sender, paths.receiver_choices(w, sender))
            assert r.value == pytest.approx(float(sweep.raw[layer, head]), abs=2e-5)


def test_every_path_of_an_mlp_is_ordinary_patching_of_the_mlp(case):
    model, setup, pair = case
    w = pair.weights
    for layer in range(w.n_layers):
        name = f"blocks.{layer}.hook_mlp_out"
        edit = engine.Edit("replace", "mlp_out", layer, value=run_prompt(model, setup.clean, [name]).cache[name])
        logits, _ = run_edited(model, pair.base_tokens[None], [edit], last_only=True)
        sender = edges.Sender("mlp", layer)
        r = paths.path_patch(model, pair, sender, paths.receiver_choices(w, sender))
        assert r.value == pytest.approx(float(pair.metric(logits[:, -1])), abs=2e-5)


def test_one_path_is_the_exact_edge(case):
    model, _, pair = case
    exact = edges.exact_edges(model, [pair])
    index = {e.label: i for i, e in enumerate(exact.edges)}
    sender = edges.Sender("head", 0, 0)
    receivers = paths.receiver_choices(pair.weights, sender)
    r = paths.path_patch(model, pair, sender, receivers)
    expected = torch.tensor([float(exact.effect[index[f"L0H0 → {x.label}"]]) for x in receivers])
    torch.testing.assert_close(r.each, expected, atol=2e-5, rtol=1e-4)


def test_named_paths_and_bad_receivers(case):
    model, setup, pair = case
    r = paths.path_patch_named(model, setup, "denoising", "L0H0", ("logits",))
    assert r.receivers == ("logits",) and r.rows()[0]["receiver"] == "logits"
    with pytest.raises(InputError, match="before"):
        paths.path_patch(model, pair, edges.Sender("head", 1, 0), [edges.Receiver("q", 0, 0)])
    with pytest.raises(InputError, match="unknown receiver"):
        paths.path_patch_named(model, setup, "denoising", "L1H0", ("L0H1.q",))
    with pytest.raises(InputError, match="at least one"):
        paths.path_patch(model, pair, edges.Sender("head", 0, 0), [])


def test_patching_page_path_section():
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "4_Patching.py"), default_timeout=180)
    at.session_state["wb.model"] = "circuits"
    at.run()
    assert not at.exception and not at.error
    charts = len(at.get("plotly_chart"))  # nothing is path-patched until receivers are chosen
    at.selectbox(key="w.path_sender").set_value("L1H3")
    at.run()
    assert at.multiselect(key="w.path_receivers.L1H3").value == [] and len(at.get("plotly_chart")) == charts
    at.multiselect(key="w.path_receivers.L1H3").set_value(["logits"])
    at.run()
    assert any("Along the chosen paths" in m.value for m in at.markdown)
    at.multiselect(key="w.path_receivers.L1H3").set_value(["L1 MLP", "logits"])
    at.run()
    assert not at.exception
    bars = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]
    assert bars["y"] == ["L1H3 → L1 MLP", "L1H3 → logits", "L1H3 → all chosen"]
