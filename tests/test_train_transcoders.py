"""Transcoder training and its card (workbench/train/transcoders.py): the card is written by code from its measurements,
and the measurements are reproduced from the shipped weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from workbench.train import transcoders as train
from workbench.transcoder import FOLDER, transcoders_of


@pytest.mark.parametrize("name", ["circuits", "english"])
def test_the_card_is_its_measurements_reproduced_from_the_shipped_weights(name, english, circuits, tmp_path):
    model = {"english": english, "circuits": circuits}[name]
    tcs = transcoders_of(model)
    if not tcs:
        pytest.skip(f"{name} has no transcoders")
    folder = Path(model.info.source) / FOLDER
    card = json.loads((folder / "card.json").read_text())
    train.write_card(tmp_path, card)
    assert (tmp_path / "README.md").read_text() == (folder / "README.md").read_text()  # every number from card.json
    measured = train.quality(model, tcs, *train.heldout(model))
    for layer, q in card["quality"]["layers"].items():
        for key in ("variance_explained", "loss_recovered", "l0", "dead"):
            assert measured["layers"][int(layer)][key] == pytest.approx(q[key], abs=1e-3), (layer, key)
    assert measured["all_layers"]["loss_recovered"] == pytest.approx(card["quality"]["all_layers"]["loss_recovered"], abs=1e-3)


def test_a_short_training_run_learns(circuits):
    cfg = dataclasses.replace(train.CONFIG, width=128, k=8, tokens=40 * 1024, warmup=5, buffer=8192)
    tcs, records = train.train(circuits, cfg, log=lambda *_: None)
    for layer, rec in records.items():
        first, last = rec["log"][0]["fvu"], rec["log"][-1]["fvu"]
        assert last < 0.7 * first, (layer, first, last)  # measured: 1.00 -> 0.52 (layer 1), the MLP harder to copy
        assert tcs[layer].W_skip is not None and tcs[layer].k == 8


def test_the_stories_model_trains_on_its_own_stories_and_its_tasks_can_be_checked(tmp_path):
    """`python -m workbench.train transcoders stories` (what the lead runs on the retrained model), a few steps: the data
    are the stories world's (no token outside its closed vocabulary, held-out stories differ from training ones), the
    folder loads as a transcoder set, and the task check reads the model's shipped induction dataset with them."""
    from workbench import task_circuits
    from workbench.model import load_model
    from workbench.transcoder import load_set

    stories = load_model("stories")
    assert train.is_stories(stories)
    unk = stories.tokenizer.unk_token_id
    rows = next(train.sequences(stories, 0, 4))
    name, held, scored = train.heldout(stories)
    assert rows.shape == (4, stories.info.n_ctx) and "held-out stories" in name and scored.all()
    assert unk is None or not ((rows == unk).any() or (held == unk).any())  # English text would be full of unknown words
    assert not torch.equal(held[:4], rows)
    cfg = dataclasses.replace(train.CONFIG, width=64, k=4, tokens=512, batch=256, windows=8, buffer=512, warmup=1)
    card = train.build("stories", cfg, tmp_path, log=lambda *_: None)
    assert set(card["quality"]["layers"]) == set(range(stories.info.n_layers))
    tcs = load_set(tmp_path)
    assert sorted(tcs) == list(range(stories.info.n_layers)) and tcs[0].d_sae == 64
    c = task_circuits.check_task(stories, "induction", task_circuits.CheckConfig(pairs=1, random_draws=2), tcs=tcs)
    assert c.source == "stories/tasks/induction.json" and len(c.pairs) == 1
