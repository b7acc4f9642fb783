"""Edges: the receivers' arithmetic against the bridge, exact edge patching by brute force, EAP as the derivative of exact
edge patching, EAP-IG with one step equal to EAP, and circuits from empty (base run) to full (source run)."""

import pytest
import torch

from workbench import edges, engine, methods, patching
from workbench.runs import run_edited, run_prompt


@pytest.fixture(scope="module", params=["circuits", "answer_key"])
def case(request):
    model = request.getfixturevalue(request.param)
    return model, methods.prepare_all(model, patching.induction_pairs(model, 2))


def _bridge_cache(model, prompt, w):
    cache = run_prompt(model, prompt, edges.capture_names(w)).cache
    return {n: a[None] for n, a in cache.items()}


def test_edges_respect_the_order_of_reading_and_writing(circuits):
    w = engine.weights_of(circuits)
    es = edges.edges_of(w)
    assert all(e.sender.writes < e.receiver.reads(w.parallel) for e in es)
    labels = {e.label for e in es}
    assert "L0H0 → L0 MLP" in labels and "L1H0 → L0H1.q" not in labels and "embed → logits" in labels
    senders, receivers = len(edges.senders_of(w)), len(edges.receivers_of(w))
    assert len(es) < senders * receivers


def test_receivers_recompute_the_bridges_activations(case):
    model, pairs = case
    w = pairs[0].weights
    cache = _bridge_cache(model, pairs[0].setup.clean, w)
    for r in edges.receivers_of(w):
        ours = edges.receive(w, r, edges.receiver_input(w, r, cache))
        torch.testing.assert_close(ours, edges.receiver_activation(w, r, cache), atol=1e-5, rtol=1e-4)


def _brute_edge(model, pair, w, e, base, source, scale=1.0):
    """The edge patched through the bridge's hooks, on its own; scale multiplies the sender's change."""
    change = scale * (edges.sender_output(w, e.sender, source) - edges.sender_output(w, e.sender, base))
    if e.receiver.kind == "logits":
        edit = engine.Edit("add", "resid_post", w.n_layers - 1, value=change)
    else:
        edit = edges.receiver_edit(w, e.receiver, edges.receive(w, e.receiver, edges.receiver_input(w, e.receiver, base) + change))
    logits, _ = run_edited(model, pair.base_tokens[None], [edit], last_only=True)
    return float(pair.metric(logits[:, -1]))


def test_exact_edges_equal_one_bridge_run_per_edge(case):
    model, pairs = case
    exact = edges.exact_edges(model, pairs)
    w = pairs[0].weights
    brute = []
    for pair in pairs:
        base, source = _bridge_cache(model, pair.setup.corrupted, w), _bridge_cache(model, pair.setup.clean, w)
        brute.append([(_brute_edge(model, pair, w, e, base, source) - pair.base_value) / pair.span for e in exact.edges])
    torch.testing.assert_close(exact.effect, torch.tensor(brute).mean(0), atol=5e-5, rtol=1e-4)


def test_eap_is_the_derivative_of_exact_edge_patching(circuits):
    pair = methods.prepare_all(circuits, patching.induction_pairs(circuits, 1))[0]
    w = pair.weights
    eap = edges.eap(circuits, [pair])
    base, source = _bridge_cache(circuits, pair.setup.corrupted, w), _bridge_cache(circuits, pair.setup.clean, w)
    h = 1e-2
    for i in eap.magnitude.argsort(descending=True)[:6].tolist():  # the edges that matter, and their receivers of each kind
        e = eap.edges[i]
        slope = (_brute_edge(circuits, pair, w, e, base, source, h) - _brute_edge(circuits, pair, w, e, base, source, -h)) / (2 * h)
        assert float(eap.effect[i]) == pytest.approx(slope / pair.span, rel=2e-2, abs=2e-3), e.label


def test_eap_ig_with_one_step_is_eap(case):
    model, pairs = case
    torch.testing.assert_close(edges.eap_ig(model, pairs, 1).effect, edges.eap(model, pairs).effect, atol=1e-6, rtol=1e-5)


def test_empty_circuit_is_the_base_run_and_every_edge_the_source_run(case):
    _model, pairs = case
    w = pairs[0].weights
    es = edges.edges_of(w)
    keep = torch.stack([torch.zeros(len(es), dtype=torch.bool), torch.ones(len(es), dtype=torch.bool)])
    for pair in pairs:
        empty, full = edges.circuit_faithfulness(pair, es, keep).tolist()
        assert empty == pytest.approx(0.0, abs=1e-4) and full == pytest.approx(1.0, abs=1e-4)
