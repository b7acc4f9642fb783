"""The information-flow graph's faithfulness check on circuits known in advance (workbench/graph.py's module doc).

The answer-key model implements induction by construction: its graph of a repeated prompt must pass
the check, in plain and contrastive mode, with either ablation; so must the trained circuits model's.
Before the check held the attention patterns at the clean run's, the answer key's contrastive graph
kept 14-18% of the metric: the regression test below measures that the old check fails where the
fixed one passes.
"""

from __future__ import annotations

import pytest

from workbench import graph

PROMPTS = {
    "contrastive": ("apple river stone cloud tiger apple river", " lemon"),  # answer " stone"
    "plain": ("apple river stone cloud tiger lemon apple river stone", None),  # answer " cloud"
}


@pytest.mark.parametrize("mode", list(PROMPTS))
@pytest.mark.parametrize("ablation", graph.ABLATIONS)
def test_the_answer_keys_known_circuit_passes(answer_key, mode, ablation):
    prompt, wrong = PROMPTS[mode]
    g = graph.build(answer_key, prompt, wrong=answer_key.tokenizer(wrong)["input_ids"][0] if wrong else None)
    f = graph.faithfulness(answer_key, g, ablation, k=1)
    assert f.survives and f.answer_top1, f.verdict
    assert f.share == pytest.approx(1.0, abs=0.1)  # the circuit is the whole mechanism
    assert f.top_drop > 0.9 and abs(f.random_drop) < 0.1


@pytest.mark.parametrize("mode", list(PROMPTS))
def test_the_circuits_models_induction_graph_passes(circuits, mode):
    prompt, wrong = PROMPTS[mode]
    g = graph.build(circuits, prompt, wrong=circuits.tokenizer(wrong)["input_ids"][0] if wrong else None)
    for ablation in graph.ABLATIONS:
        f = graph.faithfulness(circuits, g, ablation, k=2)
        assert f.survives, f.verdict
        assert f.top_drop > 3 * abs(f.random_drop)


def test_with_patterns_recomputed_the_answer_keys_graph_failed(answer_key):
    """The old check: patterns recomputed in the ablated run, so removing the previous-token edge (on no contrastive
    route) moved the induction head's attention through its keys."""
    prompt, wrong = PROMPTS["contrastive"]
    g = graph.build(answer_key, prompt, wrong=answer_key.tokenizer(wrong)["input_ids"][0])
    assert [(e.kind, e.layer, e.source[1], e.destination[1]) for e in g.edges if e.ablatable] == [("attention", 1, 3, 7)]
    old = graph.faithfulness(answer_key, g, "zero", k=1, frozen_patterns=False)
    new = graph.faithfulness(answer_key, g, "zero", k=1)
    assert old.share < 0.3 and not old.survives
    assert new.share > 0.9 and new.survives
