"""long: the long-prompt views equal the ordinary (whole-cache) ones, and say what they will hold before running."""

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from workbench import attention, compare, families, long
from workbench.errors import InputError
from workbench.figures import long as draw_long
from workbench.model import load_model
from workbench.runs import all_hook_names, hook_names, run_prompt


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A small GPT-2 of many heads with a 1,024-token context: long prompts at test speed."""
    folder = families.build("gpt2", tmp_path_factory.mktemp("deep"), layers=4, width=64, heads=4, mlp=128, positions=1024, init=0.3)
    return load_model(str(folder))


def long_prompt(model, n_tokens: int, seed: int = 0) -> str:
    """Text of at most n_tokens tokens with BOS, random words, as long as it can be."""
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "candle", "garden"]
    picks = torch.randint(0, len(words), (n_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()

    def length(count: int) -> int:
        return 1 + len(model.tokenizer(" ".join(words[i] for i in picks[:count]), add_special_tokens=False)["input_ids"])

    count = max(c for c in range(1, n_tokens) if length(c) <= n_tokens)
    return " ".join(words[i] for i in picks[:count])


def test_chunked_patterns_equal_the_whole_cache_to_float16_precision(english):
    prompt = long_prompt(english, 200)
    p = attention.patterns(english, prompt, chunked=True)
    full = attention.patterns(english, prompt)  # 200 tokens: the cached path
    assert p.pattern.dtype == torch.float16 and full.pattern.dtype == torch.float32 and p.pattern.shape == full.pattern.shape
    assert torch.allclose(p.pattern.float(), full.pattern, atol=1e-3, rtol=1e-3)
    assert p.labels == full.labels and torch.equal(p.tokens, run_prompt(english, prompt).tokens)


def test_head_types_by_layer_equal_the_whole_pattern_scores(english):
    prompt = long_prompt(english, 120, seed=1)
    chunked = attention.head_types(english, attention.patterns(english, prompt, chunked=True))
    whole = attention.head_types(english, run_prompt(english, prompt, hook_names(english, "attn.hook_pattern")))
    for kind in attention.HEAD_TYPES:
        assert torch.allclose(chunked.scores[kind], whole.scores[kind], atol=2e-3), kind


def test_pattern_diff_by_layer_equals_the_whole_one(english):
    a, b = long_prompt(english, 100, seed=2), long_prompt(english, 100, seed=3)
    chunked, whole = compare.pattern_diff(english, a, b, chunked=True), compare.pattern_diff(english, a, b)
    assert chunked.diff.dtype == torch.float16 and whole.diff.dtype == torch.float32
    assert chunked.alignment.n == whole.alignment.n
    assert torch.allclose(chunked.diff.float(), whole.diff, atol=2e-3)
    assert torch.allclose(chunked.change, whole.change, atol=2e-3)


def test_long_patterns_run_at_1024_tokens_with_rows_summing_to_one(deep):
    prompt = long_prompt(deep, 1024)
    p = attention.patterns(deep, prompt)  # past long.LONG_TOKENS: the chunked path, chosen by the length
    assert p.pattern.dtype == torch.float16
    n = len(p.tokens)
    assert 1000 <= n <= 1024 and p.pattern.shape == (4, 4, n, n)
    rows = p.pattern.float().sum(-1)  # (layer, head, query)
    assert torch.allclose(rows, torch.ones_like(rows), atol=2e-2)  # float16 keeps ~3 digits per weight
    assert p.pattern.float().triu(1).abs().max() == 0  # causal


def test_plan_says_what_fits_the_budget(english, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_MB", "1")
    for view in long.VIEWS:
        plan = long.plan(english, 250, view)
        assert plan.budget == 2**20
        assert long.view_bytes(english, plan.max_tokens, view) <= plan.budget or plan.max_tokens == 1
        if plan.max_tokens < english.info.n_ctx:
            assert long.view_bytes(english, plan.max_tokens + 1, view) > plan.budget
        assert f"{plan.max_tokens:,} tokens" in plan.message()


def test_full_cache_estimate_is_what_a_run_of_every_hook_holds(english):
    prompt = long_prompt(english, 250)
    n = long.n_tokens(english, prompt)
    held = run_prompt(english, prompt, all_hook_names(english)).nbytes()
    assert abs(long.full_cache_bytes(english, n) - held) / held < 0.1
    assert long.view_bytes(english, n, "attention") < held  # the long view holds less than the full cache


def test_ig_batch_fits_the_budget(english, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_MB", "64")
    n = 200
    batch = long.ig_batch(english, n)
    assert batch >= 1 and (batch == 1 or batch * long.grad_bytes(english, n) <= 32 * 2**20)  # half the budget
    assert (batch + 1) * long.grad_bytes(english, n) > 32 * 2**20 or batch == 64


def test_unknown_view_is_refused(english):
    with pytest.raises(ValueError, match="unknown view"):
        long.view_bytes(english, 10, "graph")


def test_too_long_prompt_is_an_input_error(english):
    with pytest.raises(InputError, match="context"):
        attention.patterns(english, long_prompt(english, 256) + " apple" * 10)


def test_windowed_sweep_equals_the_full_sweep_on_its_positions(circuits):
    from workbench import patching, tasks

    clean = "apple river stone cloud tiger piano candle garden apple river stone"
    corrupted = "apple river stone lemon tiger piano candle garden apple river stone"
    tok = circuits.tokenizer
    setup = tasks.Pair(clean, corrupted, tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0])
    full = patching.sweep(circuits, setup, "resid_pre")
    n = full.values.shape[1]
    part = patching.sweep(circuits, setup, "resid_pre", window=(n - 6, n - 1))
    assert torch.allclose(part.raw[:, n - 6 : n - 1], full.raw[:, n - 6 : n - 1], atol=1e-4)
    assert part.raw[:, : n - 6].isnan().all() and part.raw[:, n - 1 :].isnan().all()
    cost = long.sweep_cost(circuits, n, "resid_pre", (n - 6, n - 1))
    assert cost.cells == int(part.raw.isfinite().sum()) == 5 * circuits.info.n_layers
    assert cost.passes >= 1 and f"{cost.cells:,} cells" in cost.message()
    with pytest.raises(InputError, match="window"):
        patching.sweep(circuits, setup, "resid_pre", window=(5, 2))


# ---- pages in long-prompt mode ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _long_page(page: str, model, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=300)
    at.session_state["wb.model"] = str(model.info.source)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_attention_page_draws_a_long_prompt_as_light_images(deep):
    prompt = long_prompt(deep, 600, seed=4)
    at = _long_page("1_Attention.py", deep, **{"wb.prompt": prompt})
    assert not at.exception, at.exception
    assert any("Attention at" in c.value and "budget" in c.value for c in at.caption)  # the plan, said before running
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    images = [c for c in charts if c["data"] and c["data"][0]["type"] == "image"]
    assert len(images) >= 3  # one head, the whole grid, the enlarged head
    assert all(len(c.proto.spec) <= draw_long.MAX_BYTES for c in at.get("plotly_chart"))


def test_patching_page_offers_a_window_and_says_its_cost(deep):
    clean = long_prompt(deep, 400, seed=5)
    words = clean.split()
    n = long.n_tokens(deep, clean)
    for other in ["apple", "river", "stone", "cloud", "tiger", "piano", "candle", "garden"]:  # one of the same token count
        corrupted = " ".join([*words[:-3], other, *words[-2:]])
        if other != words[-3] and long.n_tokens(deep, corrupted) == n:
            break
    at = _long_page("4_Patching.py", deep, **{"wb.clean": clean, "wb.corrupted": corrupted})
    assert not at.exception, at.exception
    assert at.number_input(key="w.window_start").value == n - 32
    assert any("This sweep patches" in c.value and "cells (positions" in c.value for c in at.caption)
    assert not at.get("plotly_chart") and not at.checkbox(key="w.long_preview").value  # the preview's backward pass only on request
    at.checkbox(key="w.long_preview").check().run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1 and any("Baselines" in m.value for m in at.markdown)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_checkpointed_engine_forward_equals_the_bridge_with_its_gradient(family, tmp_path):
    from workbench.attribution import checkpointed_forward, embed_forward, token_embeddings

    model = load_model(str(families.build(family, tmp_path / family, layers=3, width=32, heads=4, mlp=64, positions=128)))
    ids = encode_ids(model, "apple river stone cloud apple river stone cloud tiger")
    x = token_embeddings(model, ids).repeat(3, 1, 1) * torch.tensor([0.2, 0.7, 1.0])[:, None, None]  # (3, pos, d_model)
    grads = []
    for make in (embed_forward, checkpointed_forward):
        points = x.clone().requires_grad_(True)
        out = make(model, ids, 5, 7)(points)  # (3,) logit difference
        (grad,) = torch.autograd.grad(out.sum(), points)
        grads.append((out.detach(), grad))
    (out_b, grad_b), (out_e, grad_e) = grads
    assert torch.allclose(out_e, out_b, atol=1e-4)
    assert torch.allclose(grad_e, grad_b, atol=1e-4 * float(grad_b.abs().max()) + 1e-6)


def test_long_prompt_attribution_adds_up_through_the_checkpointed_engine(deep):
    from workbench.attribution import Answer, input_attribution

    prompt = long_prompt(deep, 400, seed=6)
    a = input_attribution(deep, prompt, Answer((5,)), method="integrated gradients (adaptive)", steps=64)
    gap = float(a.metric[0] - a.metric_baseline[0])
    assert abs(float(a.scores.nansum(-1)[0]) - gap) <= 0.01 * abs(gap) + 1e-6
    assert long.ig_batch(deep, 400, checkpointed=True) >= long.ig_batch(deep, 400)


def encode_ids(model, text: str) -> torch.Tensor:
    from workbench.runs import encode

    return encode(model, text)[0]


def test_compare_page_diffs_long_prompts_by_layer_in_light_figures(deep):
    a, b = long_prompt(deep, 500, seed=7), long_prompt(deep, 500, seed=8)
    at = _long_page("5_Compare.py", deep, **{"wb.prompt": a, "wb.prompt_b": b})
    assert not at.exception, at.exception
    assert any("Compare at" in c.value for c in at.caption)
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any(json.loads(s)["data"][0]["type"] == "image" for s in specs)
    assert all(len(s) <= draw_long.MAX_BYTES for s in specs)


def test_lens_diff_of_long_prompts_equals_the_cached_one(english):
    a, b = long_prompt(english, 120, seed=9), long_prompt(english, 120, seed=10)
    lean = compare.lens_diff(english, a, b, chunk=5, with_patterns=False)
    cached = compare.lens_diff(english, a, b)
    assert lean.top_a == cached.top_a and lean.top_b == cached.top_b
    assert torch.allclose(lean.js, cached.js, atol=1e-5) and torch.allclose(lean.prob_a, cached.prob_a, atol=1e-5)


@pytest.mark.parametrize("site", ["resid_pre", "k_pos", "q_pos", "k"])
def test_a_long_prompts_preview_taken_block_by_block_equals_the_whole_graph(deep, site, monkeypatch):
    from workbench import tasks
    from workbench.preview import preview_sweep

    clean = long_prompt(deep, 300, seed=3)
    words = clean.split()
    n = long.n_tokens(deep, clean)
    assert n > long.LONG_TOKENS
    for other in ["apple", "river", "stone", "cloud", "tiger", "piano", "candle", "garden"]:  # one of the same token count
        corrupted = " ".join([*words[:-3], other, *words[-2:]])
        if other != words[-3] and long.n_tokens(deep, corrupted) == n:
            break
    ids = [deep.tokenizer(" " + w)["input_ids"][0] for w in ("apple", "river")]
    setup = tasks.Pair(clean, corrupted, *ids)
    blockwise = preview_sweep(deep, setup, site, method="AtP*", direction="denoising")
    from workbench import preview

    monkeypatch.setattr(preview, "LONG_TOKENS", 10**6)  # the same preview through one graph of the whole run
    whole = preview_sweep(deep, setup, site, method="AtP*", direction="denoising")
    assert torch.allclose(blockwise.raw, whole.raw, atol=1e-4, rtol=1e-3)
    assert torch.allclose(blockwise.magnitude, whole.magnitude, atol=1e-4, rtol=1e-3)
    assert float(whole.magnitude.max()) > 0
