"""Long prompts' attribution graphs: computed a batch of targets at a time within the memory budget.

- A graph computed in small batches equals the one computed in a single backward pass (every edge to
  1e-5), and pruning on the computed rows alone equals circuit-tracer's pruning of the whole (node,
  node) adjacency (written out here as a dense reference).
- On the English model at 250 tokens (its context is 256) with a budget the full graph would exceed,
  the plan cuts the feature rows, torch's profiler measures the peak of the tensors allocated while
  the graph is built below the plan, and the cut graph still composes: each node's edges, the
  features left out and its constant sum to its pre-activation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from workbench import attribution_graph as ag
from workbench import attribution_graph_plan as graph_plan
from workbench import attribution_graph_pruning as pruning
from workbench import families
from workbench.errors import InputError
from workbench.model import load_model
from workbench.runs import encode
from workbench.transcoder import Transcoder

MB = 2**20


def peak_bytes(fn) -> tuple[int, object]:
    """(the peak of torch's allocations made while `fn` runs, above their level before; fn's result), from the
    profiler's record of every allocation and free in order: not sampled, so no brief peak is missed."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        out = fn()
    events = sorted((e for e in p.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    level = top = 0
    for e in events:
        level += e.nbytes()
        top = max(top, level)
    return top, out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random 3-layer GPT-2 with random TopK transcoders (the last with a skip path)."""
    folder = families.build("gpt2", tmp_path_factory.mktemp("gpt2"), layers=3, width=32, heads=4, mlp=64, positions=128)
    model = load_model(str(folder))
    tcs = {layer: Transcoder.random(layer, 32, 64, 6, skip=layer == 2, seed=layer) for layer in range(3)}
    return model, tcs


def _dense_prune(A, weights, n_features, n_keep_tail, node_threshold, edge_threshold):
    """circuit-tracer's prune_graph on the whole (node, node) adjacency, as this module computed it before it
    pruned the computed rows alone: the reference."""
    influence = pruning.influence_of(pruning.normalize(A), weights)
    node_mask = influence >= pruning._threshold(influence, node_threshold)
    node_mask[-n_keep_tail:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = pruning.normalize(pruned)
    edge_scores = norm * (pruning.influence_of(norm, weights) + weights)[:, None]
    edge_mask = (edge_scores >= pruning._threshold(edge_scores.flatten(), edge_threshold)) & (pruned != 0)
    body = slice(0, A.shape[0] - n_keep_tail)
    previous = None
    while previous is None or not torch.equal(previous, node_mask):
        previous = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[body] &= edge_mask[:, body].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
    return node_mask, edge_mask, influence


def test_a_graph_computed_in_batches_equals_the_one_computed_at_once(small):
    model, tcs = small
    prompt = " ".join(["the cat sat on the mat and the dog ran"] * 4)
    once = ag.build(model, prompt, tcs, dataclasses.replace(ag.CONFIG, batch=10_000, budget_bytes=2**40))
    blocks = ag.build(model, prompt, tcs, dataclasses.replace(ag.CONFIG, batch=3))
    assert once.n_pos > 40 and once.n_features == once.active_total  # every feature computed in both
    assert blocks.plan.batch == 3 and once.plan.batch > once.n_features  # one pass against many
    assert [once.node_id(i) for i in range(once.n_nodes)] == [blocks.node_id(i) for i in range(blocks.n_nodes)]
    assert (once.adjacency != 0).sum() > 1000
    assert torch.allclose(blocks.adjacency, once.adjacency, atol=1e-5, rtol=0)
    assert torch.allclose(blocks.bias, once.bias, atol=1e-5) and torch.equal(blocks.value, once.value)
    assert torch.equal(blocks.node_mask, once.node_mask) and torch.equal(blocks.edge_mask, once.edge_mask)
    # pruning the computed rows alone equals pruning the whole adjacency
    n_tail = once.n_pos + once.n_logits
    weights = torch.zeros(once.n_nodes)
    weights[once.answer_node :] = once.logit_probs
    node_mask, edge_mask, influence = _dense_prune(once.adjacency, weights, once.n_features, n_tail, 0.8, 0.98)
    assert torch.allclose(once.influence, influence, atol=1e-6)
    assert torch.equal(once.node_mask, node_mask) and torch.equal(once.edge_mask, edge_mask)
    assert 0 < int(node_mask[: once.n_features].sum()) < once.n_features  # pruning did prune


def test_a_long_prompt_stays_under_its_planned_peak(english):
    text = (Path(english.info.source) / "heldout_prose.txt").read_text()
    tokens = encode(english, text, truncate=True)[0][:250]
    w = ag.engine_weights(english)
    tcs = ag.transcoders_for(english, None) if ag.transcoders_of(english) else None
    if tcs is None:
        pytest.skip("english has no transcoders")
    budget = 48 * MB
    full = graph_plan.plan_graph(w, len(tokens), 2 * len(tokens) * 16, 1024, ag.CONFIG, budget=2**40)
    assert full.bytes > budget  # the whole graph would not fit
    peak, g = peak_bytes(lambda: ag.build_tokens(english, w, tokens, tcs, ag.CONFIG, None, "held-out prose", budget=budget))
    assert g.n_pos == 250 and 0 < g.plan.rows < g.plan.wanted == min(g.active_total, ag.CONFIG.max_features)
    assert g.n_features == g.plan.rows and g.plan.batch < ag.CONFIG.batch
    assert peak <= g.plan.bytes <= budget, (peak / MB, g.plan)  # measured: 35 MB peak, 48 MB planned
    assert peak > g.plan.bytes / 2  # the plan is an estimate, not a blanket
    assert "cut from" in g.plan.message()
    # the cut graph still composes: edges + what the features left out contributed + constant = pre-activation
    total = g.adjacency.sum(1) + g.bias
    total[: g.n_features] += g.unexplained[: g.n_features]
    total[g.answer_node :] += g.unexplained[g.n_features :]
    live = torch.cat([torch.arange(g.n_features), torch.arange(g.answer_node, g.n_nodes)])
    assert torch.allclose(total[live], g.value[live], atol=2e-4, rtol=1e-4)


def test_a_budget_too_small_for_any_graph_is_one_line(small):
    model, tcs = small
    w = ag.engine_weights(model)
    tokens = encode(model, "the cat sat on the mat")[0]
    with pytest.raises(InputError, match=r"does NOT fit.*WORKBENCH_MEMORY_MB"):
        ag.build_tokens(model, w, tokens, tcs, ag.CONFIG, None, "x", budget=10_000)
