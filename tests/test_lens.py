import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

from workbench import lens
from workbench.errors import InputError
from workbench.model import MODELS_DIR
from workbench.runs import run_prompt
from workbench.tokens import single_token_id

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "2_Logit_lens.py")
PROMPT = "It is a truth universally acknowledged, that a single man"


def test_last_point_is_the_models_output(shipped):
    prompt = "apple river stone apple river" if shipped.info.name == "circuits" else PROMPT
    run = run_prompt(shipped, prompt, [name for _, name in lens.lens_points(shipped)])
    final = lens.readout(shipped, lens.residuals(run, shipped)[-1])
    assert torch.allclose(final.log_softmax(-1), run.logits.log_softmax(-1), atol=1e-5)
    r = lens.lens(shipped, prompt, k=3)
    assert torch.allclose(r.top_probs[-1], run.logits.softmax(-1).topk(3).values, atol=1e-5)
    assert r.kl_to_final[-1].abs().max() < 1e-5


def test_agrees_with_transformer_lens_logit_lens(english):
    run = run_prompt(english, PROMPT)
    target = int(run.logits[-1].argmax())
    ours = lens.lens(english, PROMPT, k=5, tracked=[target])
    top = tl_logit_lens(english.bridge, run.tokens[None], positions=None, incl_mid=True, return_type="log_probs", top_k=5)
    assert len(top.labels) == len(ours.points)
    assert torch.equal(top.readout.top_ids[:, 0], ours.top_ids)  # (point, pos, k)
    assert torch.allclose(top.readout.values[:, 0].exp(), ours.top_probs, atol=1e-5)
    assert torch.allclose(top.readout.entropy[:, 0], ours.entropy, atol=1e-4)
    ranked = tl_logit_lens(english.bridge, run.tokens[None], positions=None, incl_mid=True, return_type="log_probs", targets=[target])
    assert torch.equal(ranked.readout.target_ranks[:, 0], ours.tracked_ranks)


def test_kl_and_entropy_match_a_direct_computation(english):
    run = run_prompt(english, PROMPT, [name for _, name in lens.lens_points(english)])
    logp = lens.readout(english, lens.residuals(run, english)).log_softmax(-1)  # the whole tensor, fine for a test
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    kl = torch.nn.functional.kl_div(logp, logp[-1:].expand_as(logp), log_target=True, reduction="none").sum(-1)
    r = lens.lens(english, PROMPT, chunk=5)
    assert torch.allclose(r.entropy, entropy, atol=1e-4)
    assert torch.allclose(r.kl_to_final, kl, atol=1e-4)
    whole = lens.lens(english, PROMPT, chunk=1000)
    assert torch.equal(whole.top_ids, r.top_ids)  # chunking changes nothing


def test_identity_tuned_lens_is_the_logit_lens(english):
    points = len(lens.lens_points(english))
    identity = lens.TunedLens.identity(points, english.info.d_model)
    a = lens.lens(english, PROMPT, tracked=[5, 6])
    b = lens.lens(english, PROMPT, tracked=[5, 6], tuned=identity)
    assert b.kind == "tuned lens" and torch.equal(a.top_ids, b.top_ids)
    assert torch.equal(a.entropy, b.entropy) and torch.equal(a.tracked_logits, b.tracked_logits)


def _held_out_kl(model, tuned) -> torch.Tensor:
    """(point-1,) mean KL(final || reading) on text the translators were not fitted on, measured now.

    The shipped lens was fitted on models/english/heldout_sample.txt (held out from the model, not
    from the lens): the workbench's own README is English prose the lens has never seen.
    """
    text = (MODELS_DIR.parent / "README.md").read_text()[:20000]
    resid = lens.collect_residuals(model, [text])  # (point, rows, d_model)
    with torch.no_grad():
        final = lens.readout(model, resid[-1]).log_softmax(-1)  # (rows, d_vocab)
        read = lens.readout(model, tuned.translate(resid)[:-1]).log_softmax(-1)  # (point-1, rows, d_vocab)
    return (final.exp() * (final - read)).sum(-1).mean(-1)


def test_shipped_tuned_lens_reads_held_out_text_better(english):
    tuned = lens.load_tuned_lens(english)
    identity = lens.TunedLens.identity(len(lens.lens_points(english)), english.info.d_model)
    kl_tuned, kl_logit = _held_out_kl(english, tuned), _held_out_kl(english, identity)
    # the translators were fitted on other text: they must still read this text better, most of all early
    assert kl_tuned[0] < kl_logit[0] / 2 and (kl_tuned < kl_logit + 0.02).all(), (kl_tuned, kl_logit)


def test_trained_translators_are_loaded_and_change_the_reading(english):
    tuned = lens.load_tuned_lens(english)
    assert tuned is not None and tuned.A.abs().sum() > 0
    r = lens.lens(english, PROMPT, tuned=tuned)
    plain = lens.lens(english, PROMPT)
    assert torch.equal(r.top_ids[-1], plain.top_ids[-1])  # the last point is never translated
    assert r.kl_to_final[0].mean() < plain.kl_to_final[0].mean()


def test_targets_must_be_one_token(english):
    assert english.tokenizer.decode([single_token_id(english.tokenizer, " the")]) == " the"
    with pytest.raises(InputError, match="not one"):
        single_token_id(english.tokenizer, " unquestionably")
    with pytest.raises(InputError, match="outside the vocabulary"):
        lens.lens(english, PROMPT, tracked=[10**6])


def test_lens_page_shows_both_lenses():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["wb.model"] = "english"
    at.session_state["wb.prompt"] = PROMPT
    at.run()
    assert not at.exception, at.exception
    assert not at.error
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Logit lens") for t in titles) and any(t.startswith("Tuned lens") for t in titles)
    at.text_input(key="w.tracked").set_value(" zzzqqq")
    at.run()
    assert not at.exception and any("not one" in e.value for e in at.error)


def test_the_block_outputs_lens_ends_at_the_output_and_agrees_with_transformer_lens(shipped):
    """Without the midpoints: layers + 1 points (the classic logit lens), the last the model's output, each as
    transformer-lens's logit_lens reads the block outputs (incl_mid=False), and the same rows as the full lens there."""
    prompt = "apple river stone apple river" if shipped.info.name == "circuits" else PROMPT
    run = run_prompt(shipped, prompt)
    blocks = lens.lens(shipped, prompt, k=3, tracked=[int(run.logits[-1].argmax())], midpoints=False)
    assert blocks.points == ["embed", *(f"L{layer}" for layer in range(shipped.info.n_layers))]
    assert torch.allclose(blocks.top_probs[-1], run.logits.softmax(-1).topk(3).values, atol=1e-5)
    assert blocks.kl_to_final[-1].abs().max() < 1e-5 and bool((blocks.tracked_ranks[-1, -1] == 0).all())
    top = tl_logit_lens(shipped.bridge, run.tokens[None], positions=None, incl_mid=False, return_type="log_probs", top_k=3)
    assert len(top.labels) == len(blocks.points)
    assert torch.equal(top.readout.top_ids[:, 0], blocks.top_ids)
    assert torch.allclose(top.readout.values[:, 0].exp(), blocks.top_probs, atol=1e-5)
    every = lens.lens(shipped, prompt, k=3)
    rows = [0, *range(2, len(every.points), 2)]  # the embeddings, then each block's "mlp" point: its output
    assert torch.equal(every.top_ids[rows], blocks.top_ids) and torch.allclose(every.entropy[rows], blocks.entropy, atol=1e-6)


def test_a_tuned_lens_read_at_the_block_outputs_uses_their_translators(english):
    gen = torch.Generator().manual_seed(0)
    n, d = len(lens.lens_points(english)), english.info.d_model
    tuned = lens.TunedLens(0.05 * torch.randn(n - 1, d, d, generator=gen), 0.1 * torch.randn(n - 1, d, generator=gen))
    every = lens.lens(english, PROMPT, tuned=tuned)
    blocks = lens.lens(english, PROMPT, tuned=tuned, midpoints=False)
    rows = [0, *range(2, n, 2)]
    assert torch.equal(every.top_ids[rows], blocks.top_ids) and torch.allclose(every.kl_to_final[rows], blocks.kl_to_final, atol=1e-6)


def test_the_readings_cost_is_what_torch_counts_and_decides_the_midpoints(english):
    """reading_seconds: the unembedding's FLOPs at every point and position, as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench import cost

    run = run_prompt(english, PROMPT, [name for _, name in lens.lens_points(english)])
    for midpoints in (True, False):
        resid = lens.residuals(run, english, midpoints)  # (point, pos, d_model)
        with torch.no_grad(), FlopCounterMode(display=False) as mode:
            lens.readout(english, resid)
        seconds = cost.calibrate(english).seconds(mode.get_total_flops(), calls=0)
        assert lens.reading_seconds(english, run.n_tokens, midpoints) == pytest.approx(seconds, rel=1e-6)
    assert lens.default_midpoints(english, run.n_tokens)  # a shipped model: a few milliseconds
    long = 10**6  # tokens at which even this model's readings would pass the share of the budget
    assert not lens.default_midpoints(english, long)
