"""The information-flow graph's faithfulness check (workbench/graph_faithfulness.py's module doc): on circuits known in
advance, top edges against random ones, a graph of everything and one of nothing, and the ablations with mean ablation's
fill against plain transformers by hand.

The answer-key model implements induction by construction: its graph of a repeated prompt must pass
the check, in plain and contrastive mode, with either ablation; so must the trained circuits model's.
Before the check held the attention patterns at the clean run's, the answer key's contrastive graph
kept 14-18% of the metric: the regression test below measures that the old check fails where the
fixed one passes.
"""

from __future__ import annotations

import pytest
import torch

from workbench import graph, graph_faithfulness, tasks

LENGTH, REPEAT = 12, 5  # BOS + 12 random words, then the first 5 again: the answer is word 6

PROMPTS = {
    "contrastive": ("apple river stone cloud tiger apple river", " lemon"),  # answer " stone"
    "plain": ("apple river stone cloud tiger lemon apple river stone", None),  # answer " cloud"
}


@pytest.mark.parametrize("mode", list(PROMPTS))
@pytest.mark.parametrize("ablation", graph_faithfulness.ABLATIONS)
def test_the_answer_keys_known_circuit_passes(answer_key, mode, ablation):
    prompt, wrong = PROMPTS[mode]
    g = graph.build(answer_key, prompt, wrong=answer_key.tokenizer(wrong)["input_ids"][0] if wrong else None)
    f = graph_faithfulness.faithfulness(answer_key, g, ablation, k=1)
    assert f.survives and f.answer_top1, f.verdict
    assert f.share == pytest.approx(1.0, abs=0.1)  # the circuit is the whole mechanism
    assert f.top_drop > 0.9 and abs(f.random_drop) < 0.1


@pytest.mark.parametrize("mode", list(PROMPTS))
def test_the_circuits_models_induction_graph_passes(circuits, mode):
    prompt, wrong = PROMPTS[mode]
    g = graph.build(circuits, prompt, wrong=circuits.tokenizer(wrong)["input_ids"][0] if wrong else None)
    for ablation in graph_faithfulness.ABLATIONS:
        f = graph_faithfulness.faithfulness(circuits, g, ablation, k=2)
        assert f.survives, f.verdict
        assert f.top_drop > 3 * abs(f.random_drop)


def test_with_patterns_recomputed_the_answer_keys_graph_failed(answer_key):
    """The old check: patterns recomputed in the ablated run, so removing the previous-token edge (on no contrastive
    route) moved the induction head's attention through its keys."""
    prompt, wrong = PROMPTS["contrastive"]
    g = graph.build(answer_key, prompt, wrong=answer_key.tokenizer(wrong)["input_ids"][0])
    assert [(e.kind, e.layer, e.source[1], e.destination[1]) for e in g.edges if e.ablatable] == [("attention", 1, 3, 7)]
    old = graph_faithfulness.faithfulness(answer_key, g, "zero", k=1, frozen_patterns=False)
    new = graph_faithfulness.faithfulness(answer_key, g, "zero", k=1)
    assert old.share < 0.3 and not old.survives
    assert new.share > 0.9 and new.survives


def test_the_graphs_top_links_matter_and_random_ones_do_not(circuits):
    pair = tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT, seed=2)[0]
    g = graph.build(circuits, pair.clean)
    f = graph_faithfulness.faithfulness(circuits, g, "zero", k=2)
    assert f.top_drop > 0.5 and abs(f.random_drop) < 0.2 and f.top_drop > 3 * abs(f.random_drop)


def test_a_graph_of_every_part_keeps_the_whole_metric_and_an_empty_one_says_so(english):
    prompt = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old"
    everything = graph.build(english, prompt, threshold=0.0)
    for ablation in graph_faithfulness.ABLATIONS:
        f = graph_faithfulness.faithfulness(english, everything, ablation, k=3)
        assert f.share == pytest.approx(1.0, abs=1e-4) and f.survives and f.answer_top1
    sparse = graph.build(english, prompt, threshold=0.9)  # only the residual path survives such a threshold
    assert not [edge for edge in sparse.edges if edge.ablatable]
    f = graph_faithfulness.faithfulness(english, sparse, "zero")
    assert f.share == pytest.approx(0.0, abs=1e-4) and not f.survives and "does NOT survive" in f.verdict


# ---- the ablations (and mean ablation's fill) against plain transformers -------------------------------------


@torch.no_grad()
def _hf_ablated_logits(hf, tokens: torch.Tensor, cut: torch.Tensor, gone: torch.Tensor, ref_tokens: torch.Tensor | None) -> torch.Tensor:
    """(d_vocab,) plain transformers' last-position logits of tokens (n,) with attention edges and MLPs removed, written
    out from graph_faithfulness.py's module doc: every layer's pattern held at the clean run's (transformers' output_attentions);
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
    """(n, pos) the mean ablation's reference prompts as graph_faithfulness.py's module doc defines them: BOS kept, then random
    ordinary tokens drawn with the seed."""
    gen = torch.Generator().manual_seed(seed)
    special = set(model.tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(min(model.info.d_vocab, len(model.tokenizer))) if i not in special])
    return torch.stack(
        [torch.cat([tokens[:1], ordinary[torch.randint(0, len(ordinary), (len(tokens) - 1,), generator=gen)]]) for _ in range(n)]
    )


@pytest.mark.parametrize("ablation", graph_faithfulness.ABLATIONS)
def test_ablations_and_the_mean_fill_equal_plain_transformers_by_hand(circuits, ablation):
    """run_ablations (the engine, frozen clean patterns, the mean fill from `reference`) against the same
    removals written out on plain transformers, for ablations of every size: none, all, random halves, the graph's
    outside; and faithfulness's numbers at the default threshold (neither 1 nor 0 by construction) recomputed."""
    from tests.references import hf_model

    hf = hf_model(circuits)
    pair = tasks.induction_pairs(circuits, 1, length=LENGTH, repeat=REPEAT, seed=3)[0]
    g = graph.build(circuits, pair.clean)
    n, L = g.position + 1, circuits.info.n_layers
    tokens = g.tokens[:n]
    ref_tokens = _reference_tokens(circuits, tokens) if ablation == "mean" else None
    ref = graph_faithfulness.reference(circuits, tokens) if ablation == "mean" else None
    every = graph_faithfulness.everything(circuits, n)
    inside = graph_faithfulness.graph_ablation(circuits, n, list(g.edges))
    outside = graph_faithfulness.Ablation(every.edges & ~inside.edges, every.mlps & ~inside.mlps)
    gen = torch.Generator().manual_seed(0)
    halves = [
        graph_faithfulness.Ablation(
            every.edges & (torch.rand(every.edges.shape, generator=gen) < 0.5), every.mlps & (torch.rand(L, n, generator=gen) < 0.5)
        )
        for _ in range(2)
    ]
    ablations = [graph_faithfulness.nothing(circuits, n), every, outside, *halves]
    ours = graph_faithfulness.run_ablations(
        circuits, g.tokens, g.position, ablations, ref, graph_faithfulness.clean_patterns(circuits, tokens)
    )
    want = torch.stack([_hf_ablated_logits(hf, tokens, a.edges, a.mlps, ref_tokens) for a in ablations])
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731 (logits up to a constant per row: the unembedding's bias)
    assert torch.allclose(centred(ours), centred(want), atol=1e-4), (centred(ours) - centred(want)).abs().amax(-1)
    assert (centred(want[1]) - centred(want[0])).abs().max() > 1.0  # the ablations matter, so the comparison can fail
    f = graph_faithfulness.faithfulness(circuits, g, ablation, k=2)
    m = graph_faithfulness.graph_metric(g.answer, g.wrong).value(want)
    full, empty, kept = float(m[0]), float(m[1]), float(m[2])
    assert (f.full, f.empty, f.kept) == (pytest.approx(full, abs=2e-3), pytest.approx(empty, abs=2e-3), pytest.approx(kept, abs=2e-3))
    assert f.share == pytest.approx((kept - empty) / (full - empty), abs=1e-3) and 0.05 < f.share < 1.5
