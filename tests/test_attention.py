import math
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.references import constructed_heads, hf_model, hf_patterns, repeat_scores_by_hand
from workbench import attention
from workbench.errors import InputError
from workbench.runs import hook_names, run_prompt

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "1_Attention.py")


def _independent_head_types(pattern, tokens):
    """Loops over positions, no masks from transformer-lens: the definitions in attention.py's docstring.

    Query 0 is left out of every score: it can only attend to itself.
    """
    L, H, pos, _ = pattern.shape
    out = {k: torch.zeros(L, H) for k in ("previous token", "duplicate token", "induction", "first token", "entropy")}
    toks = tokens.tolist()
    for layer in range(L):
        for head in range(H):
            p = pattern[layer, head]
            prev = [p[q, q - 1].item() for q in range(1, pos)]
            dup = [sum(p[q, k].item() for k in range(q) if toks[k] == toks[q]) for q in range(1, pos) if toks[q] in toks[:q]]
            # the key right after an earlier occurrence k < q (so the key is at most q itself)
            ind = [sum(p[q, k + 1].item() for k in range(q) if toks[k] == toks[q]) for q in range(1, pos) if toks[q] in toks[:q]]
            out["previous token"][layer, head] = sum(prev) / len(prev)
            out["duplicate token"][layer, head] = sum(dup) / len(dup) if dup else math.nan
            out["induction"][layer, head] = sum(ind) / len(ind) if ind else math.nan
            out["first token"][layer, head] = p[1:, 0].mean()
            out["entropy"][layer, head] = sum(-sum(v * math.log(v) for v in row.tolist() if v > 0) for row in p[1:]) / (pos - 1)
    return out


def test_the_short_and_the_long_path_both_give_plain_transformers_patterns_and_head_types(english):
    """One function per idea, two paths: the run cache in float32, and the long prompts' chunked path (float16 kept a
    layer at a time, no cache). On a prompt both can run, each equals transformers' output_attentions, and the head
    types of each equal the definitions computed by hand on transformers' patterns."""
    prompt = "The whale swam into the bay. The boat followed the whale into the bay, and the whale swam away."
    short, chunked = attention.patterns(english, prompt, chunked=False), attention.patterns(english, prompt, chunked=True)
    assert short.pattern.dtype == torch.float32 and chunked.pattern.dtype == torch.float16
    assert torch.equal(short.tokens, chunked.tokens) and short.labels == chunked.labels
    ref = hf_patterns(hf_model(english), short.tokens[None])[0]  # (layer, head, query, key)
    assert torch.allclose(short.pattern, ref, atol=1e-4)
    assert torch.allclose(chunked.pattern.float(), ref, atol=1e-3)  # float16 keeps ~3 significant digits
    by_hand = _independent_head_types(ref, short.tokens)
    for p, atol in ((short, 1e-4), (chunked, 2e-3)):
        got = attention.head_types(english, p).scores
        for kind in attention.HEAD_TYPES:
            assert torch.allclose(got[kind], by_hand[kind], atol=atol, equal_nan=True), kind


@pytest.mark.parametrize("prompt", ["apple river stone cloud apple river stone cloud tiger apple river", "apple river stone"])
def test_head_types_agree_with_an_independent_computation(circuits, prompt):
    run = run_prompt(circuits, prompt, hook_names(circuits, "attn.hook_pattern"))
    ours = attention.head_types(circuits, run).scores
    ref = _independent_head_types(run.stack("attn.hook_pattern"), run.tokens)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-5, equal_nan=True), k


def test_query_zero_does_not_bias_a_perfect_previous_token_head():
    """BOS + 3 tokens: the head attends to the previous token everywhere it can choose."""
    pos = 4
    pattern = torch.zeros(1, 1, pos, pos)
    pattern[0, 0, 0, 0] = 1  # query 0 has no choice
    pattern[0, 0, torch.arange(1, pos), torch.arange(0, pos - 1)] = 1
    scores = attention.head_types_of(pattern, torch.tensor([0, 5, 9, 12])).scores
    assert scores["previous token"].item() == 1.0
    assert scores["first token"].item() == pytest.approx(1 / 3)  # only query 1, whose previous token is BOS (it was 0.5)
    assert scores["entropy"].item() == 0.0


def test_head_types_on_repeats_are_plain_transformers_scores_on_the_same_sequences(circuits):
    """The trained model's head types on repeated random tokens against the definitions by hand on plain transformers'
    attentions, per sequence then averaged (the view averages per sequence, a score of each sequence's own tokens)."""
    from workbench import heads

    types = attention.head_types_on_repeats(circuits)
    tokens = heads.repeat_scores(circuits, n=50, seqs=8, seed=0, keep_patterns=True).tokens  # the view's sequences (same seed)
    per_seq = [repeat_scores_by_hand(p, 50) for p in hf_patterns(hf_model(circuits), tokens)]
    for name in ("induction", "previous token"):
        ref = torch.stack([r[name] for r in per_seq]).mean(0)
        assert torch.allclose(types.scores[name], ref, atol=1e-4), name
    best = types.ranked("induction", 1)[0]
    ind = torch.stack([r["induction"] for r in per_seq]).mean(0)
    assert (best["layer"], best["head"]) == divmod(int(ind.argmax()), ind.shape[1])
    # the trained model spreads induction over layer 1's heads: together they carry it
    assert types.scores["induction"][best["layer"]].sum() >= 0.4 and best["score"] > 3 * types.scores["induction"][0].max()


def test_the_answer_key_heads_are_the_constructed_ones(answer_key):
    """Construction (workbench/train/constructed.py): the only heads with query weights are L0's previous-token head and
    L1's induction head."""
    previous_head, induction_head = constructed_heads(hf_model(answer_key))
    types = attention.head_types_on_repeats(answer_key)
    for name, head in (("induction", induction_head), ("previous token", previous_head)):
        best = types.ranked(name, 1)[0]
        assert (best["layer"], best["head"]) == head and best["score"] >= 0.99, name


def test_token_focus_is_the_row_and_column(english):
    p = attention.patterns(english, "The whale swam into the bay.")
    f = attention.token_focus(p, 3)
    assert torch.equal(f.attends_to, p.pattern[:, :, 3, :]) and torch.equal(f.attended_by, p.pattern[:, :, :, 3])
    assert f.attends_to[..., 4:].abs().max() == 0 and f.attended_by[..., :3].abs().max() == 0
    with pytest.raises(InputError, match="outside the prompt"):
        attention.token_focus(p, 99)
    with pytest.raises(InputError, match="layer 9"):
        p.head(9, 0)


def test_downsample_keeps_each_blocks_maximum():
    grid = torch.rand(2, 3, 100, 100)
    small, factor = attention.downsample(grid, 32)
    assert factor == 4 and small.shape == (2, 3, 25, 25)
    assert torch.equal(small[1, 2, 3, 5], grid[1, 2, 12:16, 20:24].max())
    same, one = attention.downsample(grid, 100)
    assert one == 1 and same is grid


def test_anatomy_reproduces_the_model_hooks(shipped):
    prompt = "apple river stone cloud apple river" if shipped.info.name == "circuits" else "It was a dark and stormy night"
    a = attention.head_anatomy(shipped, prompt, layer=shipped.info.n_layers - 1, head=1, query=4)
    assert torch.allclose(a.weights, a.model_pattern_row, atol=1e-6)
    assert torch.allclose(a.output, a.model_output, atol=1e-4)
    assert a.weights[5:].abs().max() == 0 and math.isclose(a.weights.sum().item(), 1.0, abs_tol=1e-6)
    assert math.isclose(a.scale, math.sqrt(shipped.info.d_head))


def test_attention_page_shows_every_view():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["wb.model"] = "circuits"
    at.session_state["wb.prompt"] = "apple river stone cloud tiger apple river stone cloud tiger"
    at.run()
    assert not at.exception, at.exception
    assert not at.error
    assert len(at.get("plotly_chart")) == 7
    at.selectbox(key="w.layer").set_value(1)
    at.selectbox(key="w.head").set_value(2)
    at.run()
    assert not at.exception and at.session_state["wb.layer"] == 1 and at.session_state["wb.head"] == 2
    assert any("layer 1, head 2" in c.value for c in at.caption)  # the grid tab enlarges the chosen head
