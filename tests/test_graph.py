"""The information-flow graph's routes: the route the constructed and trained copying models use (and ablating it), any
position and contrastive mode, flows and the JSON document, bad input, the probe, every architecture family. The
decomposition is tested in test_graph_parts.py, a node's readings in test_graph_nodes.py, the faithfulness check in
test_graph_faithfulness.py."""

from __future__ import annotations

import json

import pytest
import torch

from probes.__main__ import main as probe_main
from workbench import attention, families, graph, graph_faithfulness, graph_parts, tasks
from workbench.errors import InputError
from workbench.model import load_model
from workbench.runs import run_prompt

LENGTH, REPEAT = 12, 5  # BOS + 12 random words, then the first 5 again: the answer is word 6


def _route(pair) -> tuple[int, int, int]:
    """(k, k + 1, final position): the earlier copy's current word, the word after it, and the prediction's position."""
    return REPEAT, REPEAT + 1, LENGTH + REPEAT


def _edges(g: graph.Graph) -> dict:
    return {(edge.kind, edge.layer, edge.source[1], edge.destination[1]): edge for edge in g.edges}


def _reaches_output(g: graph.Graph, node: tuple[int, int]) -> bool:
    """Whether the graph's edges lead from `node` up to the output node."""
    out = {}
    for edge in g.edges:
        out.setdefault(edge.source, []).append(edge.destination)
    todo, seen, top = [node], set(), (len(g.points) - 1, g.position)
    while todo:
        n = todo.pop()
        if n == top:
            return True
        if n not in seen:
            seen.add(n)
            todo += out.get(n, [])
    return False


@pytest.mark.parametrize("fixture", ["answer_key", "circuits"])
def test_the_graph_holds_the_induction_route_and_ablating_it_destroys_the_prediction(fixture, request):
    model = request.getfixturevalue(fixture)
    # the model's previous-token head, measured independently of the graph (attention on repeated random tokens)
    previous = attention.head_types_on_repeats(model).ranked("previous token", 1)[0]
    assert previous["layer"] == 0
    for pair in tasks.induction_pairs(model, 3, length=LENGTH, repeat=REPEAT, seed=1):
        k, after, final = _route(pair)
        g = graph.build(model, pair.clean)
        assert g.position == final and g.answer == pair.answer  # the model predicts the copy
        edges = _edges(g)
        induction, previous_token = edges[("attention", 1, after, final)], edges[("attention", 0, k, after)]
        assert max(range(4), key=lambda h: previous_token.heads[h]) == previous["head"]
        if fixture == "answer_key":  # its one induction head, by construction
            assert max(range(4), key=lambda h: induction.heads[h]) == 0
        # the earlier copy's next token, before layer 0, flows into the output through that route
        assert _reaches_output(g, (0, after)) and _reaches_output(g, previous_token.source)

        L, n = model.info.n_layers, len(g.tokens)
        route = graph_faithfulness.Ablation.of(L, n, [(1, final, after), (0, after, k)])
        rng = torch.Generator().manual_seed(0)
        randoms = []
        for _ in range(8):
            i = int(torch.randint(1, final + 1, (2,), generator=rng)[0])
            picks = {
                (int(torch.randint(0, 2, (1,), generator=rng)), q, int(torch.randint(0, q + 1, (1,), generator=rng))) for q in (i, final)
            }
            randoms.append(graph_faithfulness.Ablation.of(L, n, picks - {(1, final, after), (0, after, k)}))
        logits = graph_faithfulness.run_ablations(model, g.tokens, final, [graph_faithfulness.nothing(model, n), route, *randoms], None)
        metric = graph_faithfulness.graph_metric(g.answer, None).value(logits)
        assert int(logits[0].argmax()) == g.answer
        assert int(logits[1].argmax()) != g.answer and metric[1] < 0.2 * metric[0]  # the route ablated: no copy
        kept = [int(row.argmax()) == g.answer for row in logits[2:]]
        assert sum(kept) >= 7 and float(metric[2:].mean()) > 0.7 * float(metric[0])  # random edges: the copy stays


def test_any_position_and_contrastive_mode(circuits):
    pair = tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT, seed=1)[0]
    g = graph.build(circuits, pair.clean, position=LENGTH + 3)
    assert g.position == LENGTH + 3 and all(edge.destination[1] <= LENGTH + 3 and edge.source[1] <= edge.destination[1] for edge in g.edges)
    f = graph_faithfulness.faithfulness(circuits, g, "zero", k=3, draws=2)
    logits = run_prompt(circuits, pair.clean).logits[LENGTH + 3]
    assert f.full == pytest.approx(float(logits[g.answer] - logits.mean()), abs=1e-3)  # the metric at that position
    c = graph.build(circuits, pair.clean, answer=pair.answer, wrong=pair.wrong)
    assert c.contrastive and c.wrong == pair.wrong
    assert ("attention", 1, REPEAT + 1, LENGTH + REPEAT) in _edges(c)  # the copy is what separates answer from wrong
    f = graph_faithfulness.faithfulness(circuits, c, "zero", k=2)
    assert f.metric.startswith("logit difference") and f.full == pytest.approx(
        float(run_prompt(circuits, pair.clean).logits[-1, pair.answer] - run_prompt(circuits, pair.clean).logits[-1, pair.wrong]), abs=1e-3
    )


def test_flows_and_the_json_document(circuits):
    import networkx as nx

    g = graph.build(circuits, tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT)[0].clean)
    doc = json.loads(json.dumps(g.document()))
    assert {"nodes", "links", "metadata"} <= set(doc) and len(doc["links"]) == len(g.edges)
    # the node-link format: networkx reads it back as the same graph
    read = nx.node_link_graph(doc, edges="links")
    assert read.number_of_nodes() == len(g.nodes) and read.number_of_edges() == len(g.edges)
    output = graph.node_id((len(g.points) - 1, g.position))
    assert all(nx.has_path(read, n, output) for n in read.nodes)  # every node is on a route to the output
    # the flow into every node equals the flow out of it (the output's flow is 1)
    for node in g.nodes:
        if node[0] > 0:
            assert sum(edge.flow for edge in g.edges if edge.destination == node) == pytest.approx(g.node_flow[node], abs=1e-6)
    for edge in g.edges:  # kept edges' weights sum to 1 per node
        assert sum(x.weight for x in g.edges if x.destination == edge.destination) == pytest.approx(1.0, abs=1e-6)


def test_bad_input_is_one_message(circuits, tmp_path, capsys):
    prompt = "apple river stone"
    with pytest.raises(InputError, match="threshold"):
        graph.build(circuits, prompt, threshold=1.5)
    with pytest.raises(InputError, match="outside the prompt"):
        graph.build(circuits, prompt, position=40)
    with pytest.raises(InputError, match="the same"):
        graph.build(circuits, prompt, answer=5, wrong=5)
    with pytest.raises(InputError, match="ablation"):
        graph_faithfulness.faithfulness(circuits, graph.build(circuits, prompt), "gaussian")
    assert probe_main(["graph", "--model", "circuits", "--prompt", prompt, "--threshold", "2", "--out", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "threshold" in errors[0]


def test_the_probe_writes_the_graph_and_its_check(tmp_path):
    out = tmp_path / "graph"
    argv = ["graph", "--model", "circuits", "--prompt", "apple river stone cloud tiger apple river", "--formats", "html", "--out", str(out)]
    assert probe_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["status"] == "done"
        and "graph-pos7.json" in manifest["files"]
        and "faithfulness-pos7.html" in manifest["files"]
        and "graph-pos7-by-head.html" in manifest["files"]
    )
    doc = json.loads((out / "graph-pos7.json").read_text())
    assert doc["metadata"]["answer_label"] == "␣stone" and doc["links"]


@pytest.fixture(scope="module", params=[*families.FAMILIES, "bloom"])
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    folder = families.build_bloom(folder) if request.param == "bloom" else families.build(request.param, folder)
    return request.param, load_model(str(folder))


def test_every_family_makes_an_exact_graph_and_its_ablations_act(family):
    name, model = family
    prompt = "The cat sat on the mat. The cat sat on the"
    g = graph.build(model, prompt, threshold=0.02)
    run = graph_parts.graph_run(model, prompt)
    scale = float(run[f"blocks.{model.info.n_layers - 1}.hook_resid_post"].abs().max())
    assert g.error < 1e-4 * scale, name
    assert g.edges and g.nodes[0] == (len(g.points) - 1, g.position)
    for step in graph_parts.steps(model):
        inc = graph_parts.incoming(model, run, step, torch.arange(run.n_tokens))
        assert torch.allclose(inc.residual + inc.attention.sum(1) + inc.bias + inc.mlp, torch.ones(run.n_tokens), atol=1e-5)
        assert torch.allclose(inc.heads_residual + inc.heads.sum((1, 2)) + inc.heads_rest, torch.ones(run.n_tokens), atol=1e-5)
    # the pattern edit really removes attention: every edge gone equals every head's z zeroed
    n = run.n_tokens
    every = graph_faithfulness.everything(model, n)
    all_edges = graph_faithfulness.Ablation(every.edges, torch.zeros_like(every.mlps))
    logits = graph_faithfulness.run_ablations(model, g.tokens, g.position, [all_edges, graph_faithfulness.nothing(model, n)], None)
    assert torch.allclose(logits[1], run.logits[g.position], atol=1e-4)  # nothing ablated: the model's own logits
    from workbench.engine import Edit
    from workbench.runs import run_edited

    zeroed, _ = run_edited(model, g.tokens[None], [Edit("ablate", "z", layer) for layer in range(model.info.n_layers)])
    assert torch.allclose(logits[0], zeroed[0, g.position].float(), atol=1e-4)
    f = graph_faithfulness.faithfulness(model, graph.build(model, prompt, threshold=0.0), "mean", k=2, draws=2)
    assert f.share == pytest.approx(1.0, abs=1e-3)
