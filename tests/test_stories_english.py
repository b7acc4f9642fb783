"""The stories world mixed with English: one tokenizer that keeps every world piece one token and reads any English,
and a run whose steps carry English windows beside the stories and whose evaluations measure the held-out English."""

import dataclasses
import json
import math
import random

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from workbench import tasks
from workbench.model import MODELS_DIR, load_model
from workbench.train import card, english, stories, stories_card
from workbench.train import stories_english as se

# English the tests can read without the corpus download: held-out paragraphs shipped beside the English model
ENGLISH = (MODELS_DIR / "english" / "heldout_sample.txt").read_text()


@pytest.fixture(scope="module")
def tok():
    return se.tokenizer(ENGLISH[: len(ENGLISH) // 2], stories.world(), 4096)


def test_every_world_piece_is_one_token_and_a_story_reads_in_no_more_tokens_than_the_stories_tokenizer_gives(tok):
    pieces = stories.vocabulary(stories.world())[2:]
    assert all(len(tok(p)["input_ids"]) == 1 for p in pieces)
    story = stories.story(random.Random(7), stories.world())
    ids = tok(story)["input_ids"]
    assert tok.decode(ids) == story and len(ids) <= len(stories.tokenizer()(story)["input_ids"])


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_task_pairs_keep_equal_lengths_and_single_token_answers(tok, name):
    for pair in tasks.build(name, 20).pairs:
        assert len(tok(pair.clean)["input_ids"]) == len(tok(pair.corrupted)["input_ids"])
        assert len(tok(pair.answer)["input_ids"]) == 1 and len(tok(pair.wrong)["input_ids"]) == 1


def test_english_round_trips_with_no_unknown_token_and_years_in_two_digit_pieces(tok):
    text = ENGLISH[len(ENGLISH) // 2 :][:5000] + " naïve café — 1732"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None
    assert [tok.decode([i]) for i in tok(" in 1732")["input_ids"]][-2:] == [" 17", "32"]
    # BPE carries English in fewer tokens than bytes: the unseen half still reads at > 2 characters a token
    assert len(text) / len(ids) > 2


def test_a_tokenizer_too_small_for_the_world_is_refused():
    with pytest.raises(ValueError, match="not one token"):
        se.tokenizer(ENGLISH[:20000], stories.world(), 600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-layer run of a few steps: (its folder, its record, the held-out English)."""
    half = len(ENGLISH) // 2
    recipe = stories.Recipe(
        model=dataclasses.replace(se.RECIPE.model, n_layer=1, n_embd=32, n_head=2),
        copy_steps=2, copy_stage_batch=2, story_batch=2, copy_batch=1, answer_batch=1, second_steps=3,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("mixed") / "model"
    record = se.build(
        out, (ENGLISH[:half], ENGLISH[half:]), recipe, se.Mix(vocab_size=4096, english_batch=2, eval_windows=4), log=lambda *_: None
    )
    return out, record, ENGLISH[half:]


def test_a_run_adds_english_windows_to_every_mixed_step_and_measures_the_held_out_english(tiny_run):
    out, record, heldout = tiny_run
    last = record["history"][-1]
    assert "english_loss" in last and "english_bpc" in last and "ioi_acc" in last
    first_mixed = next(r for r in record["history"] if r["stage"].startswith("stories"))
    assert "english_loss" in first_mixed
    assert not any("english_loss" in r for r in record["history"] if r["stage"].startswith("copy"))
    # the final bits per character are the stream loss of the saved model over the whole held-out English
    model = GPT2LMHeadModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        again = english.stream_loss(model, tok, english.encode(tok, heldout), 128)
    assert math.isclose(record["english_heldout"]["bits_per_char"], round(again["bits_per_char"], 4), abs_tol=1e-4)
    saved = json.loads((out / "training.json").read_text())
    assert saved["mix"]["english_batch"] == 2 and saved["config"]["autocast"] is True


def test_the_runs_card_measures_it_as_the_shipped_model_and_reads_the_english_models_number(tiny_run):
    out, _, _ = tiny_run
    m = se.measure(out, MODELS_DIR / "stories")
    assert set(m["tasks"]) == set(tasks.TASKS)  # the shipped model's task datasets, copied beside the run's model
    assert (out / "tasks" / "ioi.json").read_text() == (MODELS_DIR / "stories" / "tasks" / "ioi.json").read_text()
    loss = card.stream_loss(load_model(out), (MODELS_DIR / "english" / "heldout_sample.txt").read_text())
    assert m["english_bpc"] == round(loss["bits_per_char"], 4)
    english_card = json.loads((MODELS_DIR / "english" / "card.json").read_text())["measured"]["heldout_sample"]
    assert m["english_model_bpc"] == english_card["bits_per_char"]
    shipped = json.loads((MODELS_DIR / "stories" / "card.json").read_text())["measured"]
    text = se.card_text(m, shipped)
    met = stories_card.targets_met(m)
    assert f"run J {len(met)} of {len(m['tasks'])}" in text and f"{m['english_bpc']:.3f} bits per character" in text


def test_the_card_keeps_the_shipped_model_unless_the_run_is_ahead_on_targets_or_circuits_and_behind_on_neither():
    shipped = json.loads((MODELS_DIR / "stories" / "card.json").read_text())["measured"]
    if "mixed" not in shipped:
        pytest.skip("the stories card has no stories-and-English run")
    mixed = shipped["mixed"]
    found = {name: row["verdict"] == "found" for name, row in shipped["tasks"].items()}
    swapped = {**mixed, "tasks": shipped["tasks"], "induction": shipped["induction"]}
    as_run = {**shipped, "tasks": mixed["tasks"], "induction": mixed["induction"]}
    ahead = len(stories_card.targets_met(shipped)) >= len(stories_card.targets_met(mixed)) and sum(found.values()) > sum(
        row["verdict"] == "found" for row in mixed["tasks"].values()
    )
    assert ahead  # what the shipped card says: the shipped model confirms more circuits and meets as many targets
    assert "The shipped model stays the default" in se.card_text(mixed, shipped)
    assert "Run J is ahead: it should replace the shipped model." in se.card_text(swapped, as_run)
    assert "stays the default: run J meets no more targets and confirms no more circuits" in se.card_text(
        mixed, {**shipped, "tasks": mixed["tasks"]}
    )
