"""The information-flow graph's decomposition: every step's parts sum to the model's residual and their importances to
one, and a one-layer model's importances against a hand computation from transformer-lens's processed weights."""

from __future__ import annotations

import pytest
import torch

from workbench import families, graph, graph_parts
from workbench.model import load_model
from workbench.runs import run_prompt


@pytest.mark.parametrize("contrastive", [False, True])
def test_incoming_importances_sum_to_one_and_the_parts_sum_to_the_residual(english, contrastive):
    prompt = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    run = graph_parts.graph_run(english, prompt)
    tok = english.tokenizer
    direction = graph.contrast_direction(english, tok(" wife")["input_ids"][0], tok(" man")["input_ids"][0]) if contrastive else None
    positions = torch.arange(run.n_tokens)
    for step in graph_parts.steps(english):
        inc = graph_parts.incoming(english, run, step, positions, direction)
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
    inc = graph_parts.incoming(model, graph_parts.graph_run(model, prompt), graph_parts.steps(model)[0], torch.arange(len(tokens)))
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
