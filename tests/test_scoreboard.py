"""The scoreboard's measures by hand, and the scoreboard on the induction task of the circuits models."""

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from probes.__main__ import main as probes_main
from tests.references import gpt2_node_effects, hf_model
from workbench import methods, scoreboard, tasks
from workbench.errors import InputError


def test_spearman_by_the_textbook_formula():
    a = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0])
    b = torch.tensor([2.0, 7.0, 1.0, 8.0, 2.8, 1.8, 0.5])
    ra, rb = a.argsort().argsort().double() + 1, b.argsort().argsort().double() + 1
    n = len(a)
    assert scoreboard.spearman(a, b) == pytest.approx(1 - 6 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1)))
    assert scoreboard.spearman(a, a.exp()) == pytest.approx(1.0)
    assert scoreboard.spearman(a, -a) == pytest.approx(-1.0)
    assert scoreboard.ranks(torch.tensor([5.0, 1.0, 5.0])).tolist() == [2.5, 1.0, 2.5]  # ties share their mean rank


def test_recall_at_k():
    exact = torch.tensor([9.0, 8.0, 7.0, 0.0, 0.0])
    assert scoreboard.recall_at(2, torch.tensor([1.0, 0.0, 5.0, 0.0, 0.0]), exact) == 0.5
    # k beyond the components that matter: the top 3, the only non-zero ones
    assert scoreboard.recall_at(10, torch.tensor([0.1, 0.2, 0.05, 1.0, 1.0]), exact) == pytest.approx(1 / 3)
    assert scoreboard.recall_at(10, exact * 2, exact) == 1.0
    assert scoreboard.floored(torch.tensor([1e-8, -1e-3])).tolist() == [0.0, pytest.approx(-1e-3)]
    assert scoreboard.edge_sizes(110)[:3] == [0, 1, 2] and scoreboard.edge_sizes(110)[-1] == 110


@pytest.mark.parametrize("name", ["circuits", "answer_key"])
def test_scoreboard_on_the_induction_task(request, name):
    model = request.getfixturevalue(name)
    sb = scoreboard.run(model, scoreboard.task_pairs(model, "induction pairs", 2), "induction pairs")
    rows = {(r["level"], r["method"]): r for r in sb.table()}
    assert set(rows) == {(lv, m) for lv in ("nodes",) for m in ("exact", "AtP", "AtP*")} | {
        (lv, m) for lv in ("edges",) for m in ("exact", "EAP", "EAP-IG")
    }
    for level in ("nodes", "edges"):
        assert rows[(level, "exact")]["spearman"] == pytest.approx(1.0) and rows[(level, "exact")]["recall@10"] == 1.0
    for c in sb.curves:
        assert c.faithfulness[0] == pytest.approx(0.0, abs=1e-4)  # the empty circuit is the base run
        if c.level == "edges":
            assert c.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)  # every edge: the source run
    # the curve's first point after the empty circuit is the best single node by that method's ranking
    exact = sb.nodes["exact"]
    best = exact.magnitude.argmax()
    first = next(c for c in sb.curves if c.level == "nodes" and c.method == "exact").faithfulness[1]
    assert float(first) == pytest.approx(float(exact.effect[best]), abs=1e-4)
    assert all(r["seconds"] > 0 for r in sb.table())
    assert rows[("nodes", "AtP*")]["backward"] == model.info.n_layers + 1


def test_typed_pairs_and_their_mistakes(circuits):
    pairs = tasks.parse_pairs(
        circuits, "apple river stone cloud apple river stone | apple river stone lemon apple river stone | cloud | lemon"
    )
    tok = circuits.tokenizer
    assert len(pairs) == 1 and pairs[0].ids(tok) == (tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0])
    with pytest.raises(InputError, match="line 1 has 2"):
        tasks.parse_pairs(circuits, "a | b")
    with pytest.raises(InputError, match="at least one"):
        tasks.parse_pairs(circuits, "\n")
    with pytest.raises(InputError, match="unknown task"):
        scoreboard.task_pairs(circuits, "nonsense")


def test_copying_pairs_on_a_byte_level_vocabulary_say_what_to_do(english):
    with pytest.raises(InputError, match="type the pairs instead"):
        scoreboard.task_pairs(english, "induction pairs", 2)


PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "10_Methods.py")


def test_methods_page_draws_the_scoreboard_from_a_link():
    at = AppTest.from_file(PAGE, default_timeout=180)
    for k, v in dict(model="circuits", pairs="2", steps="2", top="4").items():
        at.query_params[k] = v
    at.run()
    assert not at.exception and not at.error
    gate = [b for b in at.button if b.label.startswith("Score the methods (~")]
    if gate:  # over the cost budget on this machine (cost.BUDGET_S): it runs only when asked
        assert not at.get("plotly_chart")
        gate[0].click()
        at.run()
        assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 3 and at.dataframe[0].value.shape[0] == 6
    assert at.number_input(key="w.pairs").value == 2 and at.slider(key="w.top").value == 4
    assert any("Recall@4" in c.value for c in at.caption)
    next(b for b in at.button if b.label.startswith("Exact-check")).click()
    at.run()
    assert not at.exception and at.dataframe[-1].value.shape[0] == 4


def test_methods_page_keeps_the_page_on_a_bad_typed_pair():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.query_params["model"] = "circuits"
    at.query_params["task"] = "typed pairs"
    at.run()
    assert not at.exception and not at.error  # the default typed pair is the shared prompt pair
    at.text_area(key="w.methods_typed").set_value("apple river | apple")
    next(b for b in at.button if b.label == "Score the methods").click()
    at.run()
    assert not at.exception and any("line 1 has 2" in e.value for e in at.error)


def test_scoreboard_probe(tmp_path, circuits):
    out = tmp_path / "scoreboard"
    argv = [
        "scoreboard",
        "--model",
        "circuits",
        "--pairs",
        "2",
        "--formats",
        "html",
        "--sender",
        "L0H0",
        "--receiver",
        "L1H3.v",
        "--out",
        str(out),
    ]
    assert probes_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and len(manifest["scoreboard"]) == 6
    from workbench import engine, mib

    circuit = mib.read(out / "circuit-EAP-IG-top10.json", engine.weights_of(circuits))  # MIB's JSON, read back
    assert circuit.size == 10 and "circuit-exact-top10.json" in manifest["files"]
    saved = json.loads((out / "nodes-exact.json").read_text())
    # the saved exact effects against plain transformers with forward hooks, each node patched on its own (not exact_nodes)
    hf = hf_model(circuits)
    nodes = [methods.Node(**n) for n in saved["nodes"]]
    assert len(nodes) == len(methods.nodes_of(engine.weights_of(circuits)))  # every node was scored
    ref = torch.stack([
        gpt2_node_effects(hf, p.base_tokens, p.source_tokens, nodes, p.measure.answer, p.measure.wrong, p.measure.kind)
        for p in methods.prepare_all(circuits, scoreboard.task_pairs(circuits, "induction pairs", 2))
    ]).mean(0)  # fmt: skip
    assert torch.allclose(torch.tensor(saved["effect"]), ref, atol=1e-4) and ref.abs().max() > 0.5
    assert (out / "path-patching.html").exists() and (out / "methods-faithfulness.html").exists()
    assert (
        probes_main(["scoreboard", "--model", "circuits", "--task", "typed pairs", "--typed", "a b | c", "--out", str(tmp_path / "x")]) == 2
    )
