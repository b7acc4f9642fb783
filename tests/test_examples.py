"""Each page's example on the English model shows a known mechanism (induction, learned in training). The default
model's (stories) examples are task prompts: tests/test_stories_model.py."""

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from workbench import attention, heads, lens, patching, tasks, ui
from workbench.runs import encode, hook_names, run_prompt

ROOT = Path(__file__).resolve().parents[1]


def _earlier_copy(model, prompt: str) -> tuple[int, int]:
    """(position of the last token's earlier occurrence + 1, last position): where an induction head should look."""
    ids = encode(model, prompt)[0]
    last = len(ids) - 1
    earlier = [i for i in range(last) if ids[i] == ids[last]]
    assert earlier, "the example prompt must repeat its last token earlier"
    return earlier[-1] + 1, last


def test_the_default_prompt_repeats_and_the_model_copies_from_the_repeat(english):
    prompt = ui.example_prompt("english")
    target, _ = _earlier_copy(english, prompt)
    run = run_prompt(english, prompt)
    assert int(run.logits[-1].argmax()) == int(run.tokens[target])  # it predicts the token that followed last time


def test_the_attention_page_opens_on_an_induction_head_that_looks_at_the_repeat(english):
    at = AppTest.from_file(str(ROOT / "pages" / "1_Attention.py"), default_timeout=120)
    at.session_state[ui.MODEL] = "english"
    at.run()
    assert not at.exception
    layer, head = at.selectbox(key="w.layer").value, at.selectbox(key="w.head").value
    best = attention.head_types_on_repeats(english).ranked("induction", 1)[0]
    assert (layer, head) == (best["layer"], best["head"])
    scores = heads.repeat_scores(english).induction  # (layer, head), measured the other way
    assert scores[layer, head] >= 0.5 * scores.max()
    prompt = ui.example_prompt("english")
    target, last = _earlier_copy(english, prompt)
    pattern = run_prompt(english, prompt, hook_names(english, "attn.hook_pattern")).stack("attn.hook_pattern")[layer, head]
    # from the last token, past the attention sink at BOS, to the token after its earlier copy
    assert int(pattern[last, 1:].argmax()) + 1 == target


def test_the_lens_shows_the_answer_forming(english):
    prompt = ui.example_prompt("english")
    target, _ = _earlier_copy(english, prompt)
    answer = int(encode(english, prompt)[0][target])
    r = lens.lens(english, prompt, tracked=[answer])
    ranks = r.tracked_ranks[:, -1, 0]  # (point,) the answer's rank at the last position, 0 = top-1
    assert ranks[-1] == 0 and ranks[0] > 0  # not read off the embedding: it forms inside the model


def test_the_patching_default_has_a_clear_metric_and_lights_the_earlier_copy(english):
    clean, corrupted = ui.EXAMPLE_PAIRS["english"]
    answers, wrongs = tasks.candidate_answers(english, clean, corrupted)
    setup = tasks.Pair(clean, corrupted, next(iter(answers.values())), next(iter(wrongs.values())))
    r = patching.sweep(english, setup, "resid_pre")
    assert r.clean_value >= 2 and r.corrupted_value < 0
    ids_a, ids_b = encode(english, clean)[0], encode(english, corrupted)[0]
    (copy,) = (ids_a != ids_b).nonzero().flatten().tolist()
    # at layer 0 the only residuals that carry the difference are the earlier copy's: restoring it restores the answer
    assert r.values[0, copy] > 0.5
    assert torch.isfinite(r.values).all() and r.values[0].abs().argmax() == copy
