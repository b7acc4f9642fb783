import dataclasses
from pathlib import Path

import pytest
import torch
import transformer_lens.patching as tlp
from streamlit.testing.v1 import AppTest

from tests.references import constructed_heads, hf_model
from workbench import engine, patching, tasks
from workbench.errors import InputError
from workbench.metrics import METRICS, Metric
from workbench.runs import encode, run_prompt

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "4_Patching.py")
CLEAN = "apple river stone cloud tiger piano candle garden apple river stone"
CORRUPTED = "apple river stone lemon tiger piano candle garden apple river stone"


PAIR = tasks.Pair(CLEAN, CORRUPTED, " cloud", " lemon")


def _ids(model) -> tuple[int, int]:
    """The answer and wrong ids by the tokenizer itself (the reference for the pair's own resolution)."""
    tok = model.tokenizer
    return tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0]


TL_SWEEPS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "z": tlp.get_act_patch_attn_head_out_all_pos,
    "z_pos": tlp.get_act_patch_attn_head_out_by_pos,
    "q": tlp.get_act_patch_attn_head_q_all_pos,
    "q_pos": tlp.get_act_patch_attn_head_q_by_pos,
    "k": tlp.get_act_patch_attn_head_k_all_pos,
    "k_pos": tlp.get_act_patch_attn_head_k_by_pos,
    "v": tlp.get_act_patch_attn_head_v_all_pos,
    "pattern": tlp.get_act_patch_attn_head_pattern_all_pos,
}


@pytest.mark.parametrize("site", list(TL_SWEEPS))
def test_sweeps_equal_transformer_lens(circuits, site):
    answer, wrong = _ids(circuits)
    ours = patching.sweep(circuits, PAIR, site)
    clean_ids, corrupted_ids = encode(circuits, CLEAN)[0][None], encode(circuits, CORRUPTED)[0][None]
    with torch.no_grad():
        _, clean_cache = circuits.bridge.run_with_cache(clean_ids)
        theirs = TL_SWEEPS[site](circuits.bridge, corrupted_ids, clean_cache, lambda logits: logits[0, -1, answer] - logits[0, -1, wrong])
    if site in ("z_pos", "q_pos", "k_pos"):
        theirs = theirs.permute(0, 2, 1)  # theirs: (layer, pos, head)
    assert torch.allclose(ours.raw, theirs, atol=1e-4), (ours.raw - theirs).abs().max()


def test_english_residual_sweep_equals_transformer_lens(english):
    clean, corrupted = "The cat sat on the mat. The cat sat on the", "The cat sat on the bed. The cat sat on the"
    tok = english.tokenizer
    pair = tasks.Pair(clean, corrupted, tok(" mat")["input_ids"][0], tok(" bed")["input_ids"][0])  # ids, not strings
    ours = patching.sweep(english, pair, "resid_pre", "noising", metric="log-probability")
    with torch.no_grad():
        _, corrupted_cache = english.bridge.run_with_cache(encode(english, corrupted)[0][None])
        theirs = tlp.get_act_patch_resid_pre(
            english.bridge, encode(english, clean)[0][None], corrupted_cache, lambda lg: lg[0, -1].log_softmax(-1)[pair.answer]
        )
    assert torch.allclose(ours.raw, theirs, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_whole_clean_residual_restores_clean_and_nothing_leaves_corrupted(circuits, metric):
    s = Metric(metric, *_ids(circuits))
    w = engine.weights_of(circuits)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(circuits.info.n_layers)]
    clean, corrupted = run_prompt(circuits, CLEAN, names), run_prompt(circuits, CORRUPTED, names)
    clean_value, corrupted_value = float(s.value(clean.logits[-1:])), float(s.value(corrupted.logits[-1:]))
    for name in names:
        layer = int(name.split(".")[1])
        torch.set_grad_enabled(False)
        patched = float(s.value(engine.forward(w, resid=clean[name][None], start=layer, last_only=True).logits))
        untouched = float(s.value(engine.forward(w, resid=corrupted[name][None], start=layer, last_only=True).logits))
        assert (patched - corrupted_value) / (clean_value - corrupted_value) == pytest.approx(1.0, abs=1e-4)
        assert (untouched - corrupted_value) / (clean_value - corrupted_value) == pytest.approx(0.0, abs=1e-4)
        torch.set_grad_enabled(True)
    r = patching.sweep(circuits, PAIR, "resid_pre", metric=metric)
    assert r.backend == "engine" and r.note == "" and r.metric == metric
    # positions before the corrupted word carry identical activations: patching them does nothing
    assert r.values[:, :4].abs().max() < 1e-5


def test_induction_mechanism_lights_up(answer_key):
    """The corrupted earlier copy's position, then the induction head of the answer key's construction."""
    circuits = answer_key
    resid = patching.sweep(circuits, PAIR, "resid_pre")
    assert int(resid.values[0, :-1].argmax()) == 4  # ' cloud' in the earlier copy
    # before layer 1 too: the induction head reads the word right after the earlier ' stone'
    assert int(resid.values[1].argmax()) == 4 and resid.values[1, 4] > 0.9
    heads = patching.sweep(circuits, PAIR, "z")
    _, induction_head = constructed_heads(hf_model(circuits))  # the construction's layer-1 head (its only one with queries)
    top = heads.ranked(1)[0]
    assert (top["layer"], top["head"]) == induction_head


def test_attribution_patching_ranks_like_the_exact_sweep(circuits):
    for site in ("resid_pre", "z"):
        estimate, exact = patching.attribution_sweep(circuits, PAIR, site), patching.sweep(circuits, PAIR, site)
        assert patching.correlation(estimate, exact) > 0.8, site
    top = patching.exact_cells(circuits, patching.attribution_sweep(circuits, PAIR, "z"), k=3)
    assert len(top) == 3 and all("exact_normalised" in row for row in top)


def test_prompts_of_different_length_are_refused_with_the_difference(circuits):
    with pytest.raises(InputError, match=r"same number of tokens \(12 vs 13\)"):
        patching.sweep(circuits, tasks.Pair(CLEAN, CORRUPTED + " tiger", 5, 6))


def test_a_pair_of_strings_and_a_pair_of_ids_sweep_alike_and_the_result_keeps_the_pair_as_given(circuits):
    by_ids = patching.sweep(circuits, tasks.Pair(CLEAN, CORRUPTED, *_ids(circuits)), "z", metric="probability")
    by_strings = patching.sweep(circuits, PAIR, "z", metric="probability")
    assert torch.equal(by_ids.raw, by_strings.raw) and by_strings.pair == PAIR and by_strings.metric == "probability"
    assert (by_strings.provenance["settings"]["answer"], by_strings.provenance["settings"]["wrong"]) == _ids(circuits)


def test_dataset_sweep_is_the_mean_and_spread_of_the_pairs_sweeps(circuits):
    pairs = tasks.induction_pairs(circuits, n_pairs=4)
    r = patching.sweep_dataset(circuits, pairs, "resid_pre")
    each = torch.stack([patching.sweep(circuits, p, "resid_pre").values for p in pairs])  # (pair, layer, position)
    assert r.n_pairs == 4 and r.mean.shape == r.std.shape == (2, len(r.labels))
    assert torch.allclose(r.mean, each.mean(0), atol=1e-6) and torch.allclose(r.std, each.std(0), atol=1e-6)
    assert r.std.sum() > 0  # the pairs differ, so their sweeps do


def test_a_cancelled_sweep_says_so(circuits):
    with pytest.raises(InputError, match="cancelled"):
        patching.sweep(circuits, PAIR, "z_pos", progress=lambda done, total: done < 4)


def test_patching_page_runs_the_preview_and_the_exact_sweep():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["wb.model"] = "circuits"
    at.run()
    assert not at.exception, at.exception
    assert not at.error
    next(b for b in at.button if b.label == "Run the exact sweep").click()
    at.run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 2
    assert any("Correlation" in c.value for c in at.caption)


def test_an_engine_that_disagrees_with_the_model_is_not_used(circuits):
    """A wrong engine (here: embeddings scaled by 2) is caught by the per-model check; the sweep runs through the hooks, says so, and is right."""
    right = patching.sweep(circuits, PAIR, "z")
    saved = engine.weights_of(circuits)
    circuits.state.weights = dataclasses.replace(saved, embed_scale=2.0)
    try:
        r = patching.sweep(circuits, PAIR, "z")
    finally:
        circuits.state.weights = saved
    assert r.backend == "bridge hooks" and "differ from the model's" in r.note
    assert torch.allclose(r.raw, right.raw, atol=1e-4)
    assert r.provenance["settings"]["backend"] == "bridge hooks" and r.provenance["prompts"] == [CLEAN, CORRUPTED]
