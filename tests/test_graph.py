"""The information-flow graph: the route the constructed and trained copying models use, the decomposition's
exactness, a hand computation on a one-layer model, faithfulness by ablation, every architecture family."""

from __future__ import annotations

import json

import pytest
import torch

from probes.__main__ import main as probe_main
from workbench import attention, families, graph, tasks
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
        route = graph.Ablation.of(L, n, [(1, final, after), (0, after, k)])
        rng = torch.Generator().manual_seed(0)
        randoms = []
        for _ in range(8):
            i = int(torch.randint(1, final + 1, (2,), generator=rng)[0])
            picks = {
                (int(torch.randint(0, 2, (1,), generator=rng)), q, int(torch.randint(0, q + 1, (1,), generator=rng))) for q in (i, final)
            }
            randoms.append(graph.Ablation.of(L, n, picks - {(1, final, after), (0, after, k)}))
        logits = graph.run_ablations(model, g.tokens, final, [graph.nothing(model, n), route, *randoms], None)
        metric = graph.graph_metric(g.answer, None).value(logits)
        assert int(logits[0].argmax()) == g.answer
        assert int(logits[1].argmax()) != g.answer and metric[1] < 0.2 * metric[0]  # the route ablated: no copy
        kept = [int(row.argmax()) == g.answer for row in logits[2:]]
        assert sum(kept) >= 7 and float(metric[2:].mean()) > 0.7 * float(metric[0])  # random edges: the copy stays


def test_the_graphs_top_links_matter_and_random_ones_do_not(circuits):
    pair = tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT, seed=2)[0]
    g = graph.build(circuits, pair.clean)
    f = graph.faithfulness(circuits, g, "zero", k=2)
    assert f.top_drop > 0.5 and abs(f.random_drop) < 0.2 and f.top_drop > 3 * abs(f.random_drop)


def test_a_graph_of_every_part_keeps_the_whole_metric_and_an_empty_one_says_so(english):
    prompt = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old"
    everything = graph.build(english, prompt, threshold=0.0)
    for ablation in graph.ABLATIONS:
        f = graph.faithfulness(english, everything, ablation, k=3)
        assert f.share == pytest.approx(1.0, abs=1e-4) and f.survives and f.answer_top1
    sparse = graph.build(english, prompt, threshold=0.9)  # only the residual path survives such a threshold
    assert not [edge for edge in sparse.edges if edge.ablatable]
    f = graph.faithfulness(english, sparse, "zero")
    assert f.share == pytest.approx(0.0, abs=1e-4) and not f.survives and "does NOT survive" in f.verdict


@pytest.mark.parametrize("contrastive", [False, True])
def test_incoming_importances_sum_to_one_and_the_parts_sum_to_the_residual(english, contrastive):
    prompt = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    run = graph.graph_run(english, prompt)
    tok = english.tokenizer
    direction = graph.contrast_direction(english, tok(" wife")["input_ids"][0], tok(" man")["input_ids"][0]) if contrastive else None
    positions = torch.arange(run.n_tokens)
    for step in graph.steps(english):
        inc = graph.incoming(english, run, step, positions, direction)
        summed = inc.residual + inc.attention.sum(1) + inc.bias + inc.mlp
        per_head = inc.heads_residual + inc.heads.sum((1, 2)) + inc.heads_rest
        assert torch.allclose(summed, torch.ones(run.n_tokens), atol=1e-5)
        assert torch.allclose(per_head, torch.ones(run.n_tokens), atol=1e-5)
        if step.attention:
            assert (inc.attention.triu(1) == 0).all()  # nothing from the future
        assert inc.error < 1e-4 * float(run[f"blocks.{step.layer}.hook_resid_post"].abs().max())


def test_one_layer_attention_edges_against_a_hand_computation(tmp_path):
    model = load_model(str(families.build("gpt2", tmp_path / "one", layers=1, width=16, heads=2, mlp=32)))
    prompt = "The cat sat on the mat"
    run = run_prompt(model, prompt, ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid"])
    b = model.bridge
    a = b.blocks[0].attn
    # by hand from the processed weights: embeddings, layer norm (folded: no gain), values, outputs of each (key, head)
    tokens = run.tokens
    x = (b.W_E[tokens] + b.W_pos[: len(tokens)]).detach()  # (pos, d_model)
    assert torch.allclose(x, run["blocks.0.hook_resid_pre"], atol=1e-5)
    normed = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=b.cfg.eps)
    ln = b.blocks[0].ln1
    if getattr(ln, "w", None) is not None:
        normed = normed * ln.w.detach() + ln.b.detach()
    v = torch.einsum("pd,hde->phe", normed, a.W_V.detach()) + (a.b_V.detach() if a.b_V is not None else 0)  # (pos, head, d_head)
    pattern = run["blocks.0.attn.hook_pattern"]  # (head, query, key)
    inc = graph.incoming(model, graph.graph_run(model, prompt), graph.steps(model)[0], torch.arange(len(tokens)))
    for i in range(len(tokens)):
        whole = run["blocks.0.hook_resid_mid"][i]
        parts = {("residual",): x[i], ("bias",): a.b_O.detach()}
        for j in range(i + 1):
            for h in range(2):
                parts[("head", j, h)] = pattern[h, i, j] * v[j, h] @ a.W_O[h].detach()
        total = sum(parts.values())
        assert torch.allclose(total, whole, atol=1e-4)  # the decomposition is exact

        def prox(part, whole=whole):
            return max(float(whole.abs().sum() - (whole - part).abs().sum()), 0.0)

        heads_total = sum(prox(p) for p in parts.values())
        summed = {j: parts[("head", j, 0)] + parts[("head", j, 1)] for j in range(i + 1)}
        edge_total = prox(parts[("residual",)]) + prox(parts[("bias",)]) + sum(prox(s) for s in summed.values())
        for j in range(i + 1):
            assert inc.attention[i, j] == pytest.approx(prox(summed[j]) / edge_total, abs=1e-5)
            for h in range(2):
                assert inc.heads[i, j, h] == pytest.approx(prox(parts[("head", j, h)]) / heads_total, abs=1e-5)
        assert inc.residual[i] == pytest.approx(prox(x[i]) / edge_total, abs=1e-5)


def test_any_position_and_contrastive_mode(circuits):
    pair = tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT, seed=1)[0]
    g = graph.build(circuits, pair.clean, position=LENGTH + 3)
    assert g.position == LENGTH + 3 and all(edge.destination[1] <= LENGTH + 3 and edge.source[1] <= edge.destination[1] for edge in g.edges)
    f = graph.faithfulness(circuits, g, "zero", k=3, draws=2)
    logits = run_prompt(circuits, pair.clean).logits[LENGTH + 3]
    assert f.full == pytest.approx(float(logits[g.answer] - logits.mean()), abs=1e-3)  # the metric at that position
    c = graph.build(circuits, pair.clean, answer=pair.answer, wrong=pair.wrong)
    assert c.contrastive and c.wrong == pair.wrong
    assert ("attention", 1, REPEAT + 1, LENGTH + REPEAT) in _edges(c)  # the copy is what separates answer from wrong
    f = graph.faithfulness(circuits, c, "zero", k=2)
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
        graph.faithfulness(circuits, graph.build(circuits, prompt), "gaussian")
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
    run = graph.graph_run(model, prompt)
    scale = float(run[f"blocks.{model.info.n_layers - 1}.hook_resid_post"].abs().max())
    assert g.error < 1e-4 * scale, name
    assert g.edges and g.nodes[0] == (len(g.points) - 1, g.position)
    for step in graph.steps(model):
        inc = graph.incoming(model, run, step, torch.arange(run.n_tokens))
        assert torch.allclose(inc.residual + inc.attention.sum(1) + inc.bias + inc.mlp, torch.ones(run.n_tokens), atol=1e-5)
        assert torch.allclose(inc.heads_residual + inc.heads.sum((1, 2)) + inc.heads_rest, torch.ones(run.n_tokens), atol=1e-5)
    # the pattern edit really removes attention: every edge gone equals every head's z zeroed
    n = run.n_tokens
    every = graph.everything(model, n)
    all_edges = graph.Ablation(every.edges, torch.zeros_like(every.mlps))
    logits = graph.run_ablations(model, g.tokens, g.position, [all_edges, graph.nothing(model, n)], None)
    assert torch.allclose(logits[1], run.logits[g.position], atol=1e-4)  # nothing ablated: the model's own logits
    from workbench.engine import Edit
    from workbench.runs import run_edited

    zeroed, _ = run_edited(model, g.tokens[None], [Edit("ablate", "z", layer) for layer in range(model.info.n_layers)])
    assert torch.allclose(logits[0], zeroed[0, g.position].float(), atol=1e-4)
    f = graph.faithfulness(model, graph.build(model, prompt, threshold=0.0), "mean", k=2, draws=2)
    assert f.share == pytest.approx(1.0, abs=1e-3)


# ---- the ablations (and mean ablation's fill) against plain transformers -------------------------------------


@torch.no_grad()
def _hf_ablated_logits(hf, tokens: torch.Tensor, cut: torch.Tensor, gone: torch.Tensor, ref_tokens: torch.Tensor | None) -> torch.Tensor:
    """(d_vocab,) plain transformers' last-position logits of tokens (n,) with attention edges and MLPs removed, written
    out from graph.py's module doc: every layer's pattern held at the clean run's (transformers' output_attentions);
    a removed edge (layer, query, key) drops that key's term pattern · v from every head's z at the query; mean
    ablation adds back the mean over the reference runs (ref_tokens (R, n)) of the removed terms, and sets a removed
    MLP's output to its mean there; zero ablation adds nothing. cut (layer, n, n), gone (layer, n) bool.

    transformer-lens's compatibility mode folds each head's constant output (b_V + β_ln1 · W_V) into b_O, so its v
    is transformers' v minus that constant, and the constant is never removed (tests/test_conventions.py).
    """
    blocks = hf.transformer.h
    d, H = hf.config.n_embd, hf.config.n_head
    E = d // H
    constant = [(b.ln_1.bias @ b.attn.c_attn.weight[:, 2 * d :] + b.attn.c_attn.bias[2 * d :]).view(H, E) for b in blocks]
    seen: dict = {}
    grab = [
        b.attn.c_attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("v", i), out[..., 2 * d :]))
        for i, b in enumerate(blocks)
    ]
    grab += [b.mlp.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("mlp", i), out)) for i, b in enumerate(blocks)]
    try:
        clean = [p[0] for p in hf(tokens[None], output_attentions=True).attentions]  # per layer (head, q, k)
        fills, mlp_means = [], []
        if ref_tokens is not None:
            attn = hf(ref_tokens, output_attentions=True).attentions
            for i in range(len(blocks)):
                v = seen[("v", i)].reshape(len(ref_tokens), -1, H, E) - constant[i]  # (R, k, head, E)
                fills.append(torch.einsum("rhqk,qk,rkhe->qhe", attn[i], cut[i].float(), v) / len(ref_tokens))
                mlp_means.append(seen[("mlp", i)].mean(0))  # (n, d_model)
    finally:
        for h in grab:
            h.remove()

    hooks = []
    for i, b in enumerate(blocks):
        held = clean[i] * (1 - cut[i].float())  # (head, q, k)

        def z_of(m, args, i=i, held=held):
            v = seen[("v", i)][0].reshape(-1, H, E) - constant[i]  # (k, head, E) this run's values
            z = torch.einsum("hqk,khe->qhe", held, v) + constant[i]  # (q, head, E)
            if fills:
                z = z + fills[i]
            return (z.reshape(1, -1, d),)

        def mlp_of(m, args, out, i=i):
            keep = (~gone[i]).float()[None, :, None]
            return out * keep + (0 if not mlp_means else (1 - keep) * mlp_means[i])

        hooks.append(b.attn.c_attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("v", i), out[..., 2 * d :])))
        hooks.append(b.attn.c_proj.register_forward_pre_hook(z_of))
        hooks.append(b.mlp.register_forward_hook(mlp_of))
    try:
        return hf(tokens[None]).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()


def _reference_tokens(model, tokens: torch.Tensor, n: int = 8, seed: int = 0) -> torch.Tensor:
    """(n, pos) the mean ablation's reference prompts as graph.py's module doc defines them: BOS kept, then random
    ordinary tokens drawn with the seed."""
    gen = torch.Generator().manual_seed(seed)
    special = set(model.tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(min(model.info.d_vocab, len(model.tokenizer))) if i not in special])
    return torch.stack(
        [torch.cat([tokens[:1], ordinary[torch.randint(0, len(ordinary), (len(tokens) - 1,), generator=gen)]]) for _ in range(n)]
    )


@pytest.mark.parametrize("ablation", graph.ABLATIONS)
def test_ablations_and_the_mean_fill_equal_plain_transformers_by_hand(circuits, ablation):
    """graph.run_ablations (the engine, frozen clean patterns, the mean fill from graph.reference) against the same
    removals written out on plain transformers, for ablations of every size: none, all, random halves, the graph's
    outside; and faithfulness's numbers at the default threshold (neither 1 nor 0 by construction) recomputed."""
    from tests.references import hf_model

    hf = hf_model(circuits)
    pair = tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT, seed=3)[0]
    g = graph.build(circuits, pair.clean)
    n, L = g.position + 1, circuits.info.n_layers
    tokens = g.tokens[:n]
    ref_tokens = _reference_tokens(circuits, tokens) if ablation == "mean" else None
    ref = graph.reference(circuits, tokens) if ablation == "mean" else None
    every = graph.everything(circuits, n)
    inside = graph.graph_ablation(circuits, n, list(g.edges))
    outside = graph.Ablation(every.edges & ~inside.edges, every.mlps & ~inside.mlps)
    gen = torch.Generator().manual_seed(0)
    halves = [
        graph.Ablation(
            every.edges & (torch.rand(every.edges.shape, generator=gen) < 0.5), every.mlps & (torch.rand(L, n, generator=gen) < 0.5)
        )
        for _ in range(2)
    ]
    ablations = [graph.nothing(circuits, n), every, outside, *halves]
    ours = graph.run_ablations(circuits, g.tokens, g.position, ablations, ref, graph.clean_patterns(circuits, tokens))
    want = torch.stack([_hf_ablated_logits(hf, tokens, a.edges, a.mlps, ref_tokens) for a in ablations])
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731 (logits up to a constant per row: the unembedding's bias)
    assert torch.allclose(centred(ours), centred(want), atol=1e-4), (centred(ours) - centred(want)).abs().amax(-1)
    assert (centred(want[1]) - centred(want[0])).abs().max() > 1.0  # the ablations matter, so the comparison can fail
    f = graph.faithfulness(circuits, g, ablation, k=2)
    m = graph.graph_metric(g.answer, g.wrong).value(want)
    full, empty, kept = float(m[0]), float(m[1]), float(m[2])
    assert (f.full, f.empty, f.kept) == (pytest.approx(full, abs=2e-3), pytest.approx(empty, abs=2e-3), pytest.approx(kept, abs=2e-3))
    assert f.share == pytest.approx((kept - empty) / (full - empty), abs=1e-3) and 0.05 < f.share < 1.5
