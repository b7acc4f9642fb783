"""Transcoder training and its card (workbench/train/transcoders.py): the card is written by code from its measurements,
and the measurements are reproduced from the shipped weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

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
