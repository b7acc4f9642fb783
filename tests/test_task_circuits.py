"""Task circuits checked by intervention (workbench/task_circuits.py) on the induction task of the circuits model, whose
transcoders ship: the graph's top supernode, ablated, changes the answer's logit as its edges predict (within 35% on
most pairs) and as many random features far less; the real model's change is recomputed with transformer-lens hooks
written here. The stories model's shipped task datasets are read, and other tasks on other models refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from workbench import attribution_graph as ag
from workbench import task_circuits as tc
from workbench import tasks
from workbench.errors import InputError
from workbench.runs import encode, run_tokens
from workbench.transcoder import transcoders_of


@pytest.fixture(scope="module")
def induction(circuits):
    if not transcoders_of(circuits):
        pytest.skip("circuits has no transcoders")
    return tc.check_task(circuits, "induction", dataclasses.replace(tc.CHECK, pairs=8))


def test_the_top_supernode_moves_the_answer_as_the_edges_predict_and_random_features_do_not(induction):
    """Measured on 8 pairs: 6 within 35% of the prediction (the two others -0.70 against -1.28 and -2.41 against -1.54:
    the prediction freezes attention and the norms' scales); every random draw's median change below 0.002."""
    c = induction
    assert c.source.startswith("tasks.induction on 96 single-token words of circuits") and len(c.pairs) == 8
    assert c.passed >= 0.75, c.rows()
    for p in c.pairs:
        assert p.predicted < -0.5 and p.replacement < -0.3, p  # ablating what drives the answer lowers it, as predicted
        assert p.beats_random and p.random_median < 0.05 * abs(p.replacement), p
        assert 1 <= len(p.nodes) <= tc.CHECK.top  # the top kept by pruning: fewer where pruning keeps fewer


def test_the_real_models_change_is_the_decoder_rows_removed_by_hooks_written_apart(induction, circuits):
    p = induction.pairs[0]
    g = ag.build(circuits, p.prompt, answer=tasks.token_id(circuits.tokenizer, p.answer))
    tcs = transcoders_of(circuits)
    nodes = [g.index_of(n) for n in p.nodes]
    ids = encode(circuits, p.prompt)[0][None]
    by_layer: dict[int, list[int]] = {}
    for i in nodes:
        by_layer.setdefault(int(g.features[i, 0]), []).append(i)

    def remove(layer: int):
        def hook(act, hook):  # (1, pos, d_model): each ablated feature's activation × decoder row taken out at its position
            act = act.clone()
            for i in by_layer[layer]:
                _, pos, f = g.features[i].tolist()
                act[0, pos] -= g.activations[i] * tcs[layer].W_dec[f]
            return act

        return hook

    hooks = [(f"blocks.{layer}.hook_mlp_out", remove(layer)) for layer in by_layer]
    answer = tasks.token_id(circuits.tokenizer, p.answer)
    base = run_tokens(circuits, ids, last_only=True)[0][0, -1]
    edited = run_tokens(circuits, ids, hooks=hooks, last_only=True)[0][0, -1]
    change = float((edited[answer] - edited.mean()) - (base[answer] - base.mean()))
    assert change == pytest.approx(p.real, abs=1e-4)


def test_task_pairs_come_from_the_shipped_datasets_or_the_models_own_words(circuits):
    from workbench.model import load_model

    stories = load_model("stories")
    pairs, source = tc.task_pairs(stories, "ioi", 3)
    assert source == "stories/tasks/ioi.json" and pairs == list(tasks.load(stories.info.source, "ioi").pairs[:3])
    pairs, _ = tc.task_pairs(circuits, "induction", 4)
    for p in pairs:
        clean, corrupted = encode(circuits, p.clean)[0], encode(circuits, p.corrupted)[0]
        assert len(clean) == len(corrupted) and (clean != corrupted).sum() == 1
        assert p.answer in tc.model_words(circuits) and p.answer != p.wrong
    with pytest.raises(InputError, match="ships no 'ioi'"):
        tc.task_pairs(circuits, "ioi", 3)


def test_the_probe_checks_a_task(tmp_path, circuits):
    if not transcoders_of(circuits):
        pytest.skip("circuits has no transcoders")
    from probes.__main__ import main

    args = ["attribution-graph", "--model", "circuits", "--task", "induction", "--task-pairs", "2", "--random-draws", "2"]
    assert main([*args, "--out", str(tmp_path), "--formats", "html"]) == 0
    summary = json.loads((tmp_path / "manifest.json").read_text())["summary"]
    assert summary["task"] == "induction" and summary["pairs"] == 2 and 0 <= summary["passed"] <= 1
    rows = json.loads((tmp_path / "task-induction.json").read_text())
    assert len(rows["pairs"]) == 2 and torch.tensor([r["predicted"] for r in rows["pairs"]]).lt(0).all()


@pytest.fixture(scope="module")
def stories_checks():
    from workbench.model import load_model

    model = load_model("stories")
    if not transcoders_of(model):
        pytest.skip("stories has no transcoders")
    card = json.loads((Path(model.info.source) / "card.json").read_text())["measured"]["tasks"]
    solved = [name for name, row in card.items() if not row["verdict"].startswith("absent") and name != "ioi"]
    return {name: tc.check_task(model, name, dataclasses.replace(tc.CHECK, pairs=8)) for name in solved}


def test_on_the_stories_tasks_the_top_supernode_beats_random_features_and_pronouns_match_their_edges(stories_checks):
    """Measured on the shipped stories model (8 pairs a task): the pronoun circuit's top supernode changes the answer as
    the edges predict on 8 of 8 pairs; on induction, capitals and greater-than it beats random features on most pairs
    but the frozen-attention prediction overshoots the live change (2/8, 3/8 and 0/8 within 35%: README)."""
    assert "pronoun" in stories_checks and "induction" in stories_checks
    assert stories_checks["pronoun"].passed >= 0.75, stories_checks["pronoun"].rows()
    for name, c in stories_checks.items():
        beats = sum(p.beats_random for p in c.pairs) / len(c.pairs)
        assert beats >= 0.75, (name, c.rows())
        # ablating what drives the answer lowers it, as predicted, on most pairs
        assert sum(p.predicted < 0 and p.replacement < 0 for p in c.pairs) >= 0.75 * len(c.pairs), (name, c.rows())
