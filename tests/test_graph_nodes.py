"""A node of the information-flow graph: its lens reading and direct effect (read_node) against the model's own
prediction and transformer-lens's unembedding, and an MLP's top neurons (top_neurons) against their parts written out
by hand from transformer-lens's weights."""

from __future__ import annotations

import pytest
import torch

from workbench import graph_nodes, graph_parts, lens
from workbench.errors import InputError
from workbench.tokens import token_labels

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good"


def test_the_output_node_reads_the_prediction_and_its_direct_effect_is_the_mlps_output_unembedded(english):
    run = graph_parts.graph_run(english, PROMPT)
    last = len(lens.lens_points(english)) - 1
    r = graph_nodes.read_node(english, run, last, -1, k=5)
    top = run.logits[-1].float().softmax(-1).topk(5)  # the model's own prediction: the lens at the output point is it
    assert r.lens_ids == top.indices.tolist() and torch.allclose(torch.tensor(r.lens_probs), top.values, atol=1e-5)
    # a sequential block's last point is written by its MLP: the update is the MLP's output, read by the unembedding
    mlp_out = run[f"blocks.{english.info.n_layers - 1}.hook_mlp_out"][-1].float()  # (d_model,)
    direct = mlp_out @ english.bridge.W_U.detach().float()  # (d_vocab,)
    up, down = direct.topk(5), (-direct).topk(5)
    assert torch.allclose(torch.tensor(r.promotes_logits), up.values, atol=1e-4)
    assert torch.allclose(torch.tensor(r.suppresses_logits), -down.values, atol=1e-4)
    assert set(r.promotes) == set(token_labels(english.tokenizer, up.indices.tolist()))
    assert set(r.suppresses) == set(token_labels(english.tokenizer, down.indices.tolist()))
    assert len(r.rows()) == 5


def test_an_mlps_top_neurons_against_their_parts_by_hand(english):
    run = graph_parts.graph_run(english, PROMPT)
    layer, position = english.info.n_layers - 1, 7
    mlp = english.bridge.blocks[layer].mlp  # transformer-lens's own weights: the reference
    w_out, b_out = mlp.W_out.detach().float(), mlp.b_out.detach().float()  # (d_mlp, d_model), (d_model,)
    post = run[f"blocks.{layer}.mlp.hook_post"][position].float()  # (d_mlp,)
    whole = run[f"blocks.{layer}.hook_mlp_out"][position].float()  # (d_model,)
    assert torch.allclose(post @ w_out + b_out, whole, atol=1e-4)  # the neurons' parts and the bias are the output

    def prox(part: torch.Tensor) -> float:
        return max(float(whole.abs().sum() - (whole - part).abs().sum()), 0.0)

    shares = torch.tensor([prox(post[i] * w_out[i]) for i in range(len(post))])
    shares = shares / (shares.sum() + prox(b_out))  # normalised over every neuron and the bias
    want = shares.topk(5)
    n = graph_nodes.top_neurons(english, run, layer, position, k=5)
    assert torch.allclose(torch.tensor(n.importance), want.values, atol=1e-5) and want.values[0] > 0
    assert set(n.ids) == set(want.indices.tolist())
    assert n.activations == pytest.approx(post[n.ids].tolist(), abs=1e-6)
    promoted = (w_out[n.ids] @ english.bridge.W_U.detach().float()).argmax(-1).tolist()
    assert n.promotes == token_labels(english.tokenizer, promoted)
    every = graph_nodes.top_neurons(english, run, layer, position, k=len(post))
    assert sum(every.importance) == pytest.approx(float(shares.sum()), abs=1e-4)  # every neuron: all but the bias's share


def test_a_node_outside_the_model_is_one_message(english):
    run = graph_parts.graph_run(english, PROMPT)
    with pytest.raises(InputError, match="outside the model"):
        graph_nodes.read_node(english, run, len(lens.lens_points(english)), 0)
    with pytest.raises(InputError, match="outside the model"):
        graph_nodes.top_neurons(english, run, english.info.n_layers, 0)
