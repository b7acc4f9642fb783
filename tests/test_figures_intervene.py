"""figures.intervene: the two runs side by side read the result's own numbers; changed tokens are marked."""

import torch

from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.figures import intervene as draw

PROMPT = "apple river stone cloud tiger apple river stone"


def test_the_figures_draw_the_results_numbers(circuits):
    edits = iv.EditSet.parse("ablate head 1.0 zero; ablate head 1.1 zero; ablate head 1.2 zero; ablate head 1.3 zero")
    r = iv.intervene(circuits, PROMPT, edits, sampling=iv.Sampling(max_new_tokens=4))
    original, edited = draw.next_token(r).data
    assert original.name == "original" and edited.name == "edited"
    assert torch.allclose(torch.tensor(original.y), r.original_probs) and torch.allclose(torch.tensor(edited.y), r.edited_probs)
    assert torch.allclose(torch.tensor(draw.kl_by_position(r).data[0].y), r.kl) and len(draw.kl_by_position(r).data[0].x) == len(r.labels)
    rows = draw.continuations(r).data
    assert list(rows[1].text) == [s.chosen_label for s in r.edited.steps]
    colours = rows[1].textfont.color
    assert [c == draw.EDITED for c in colours] == r.differs and any(r.differs)


def test_the_sweeps_draw_effects_around_zero_and_the_answer_tokens_against_the_damage(circuits):
    metric = iv.Metric("probability", circuits.tokenizer(" cloud")["input_ids"][0])
    s = ivs.ablation_sweep(circuits, PROMPT, metric, "zero")
    trace = draw.head_ablation(s).data[0]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax and torch.allclose(torch.tensor(trace.z), s.effect)
    steer = iv.Steer(1, 1.0, "prompts", ("apple river",), ("stone cloud",))
    sweep = ivs.steering_sweep(circuits, steer, [metric.answer], [PROMPT], [PROMPT], (0, 1, 2))
    line = draw.steering(sweep).data[0]
    assert list(line.x) == sweep.kl_neutral.tolist() and list(line.y) == sweep.answer.tolist() and list(line.text) == ["×0", "×1", "×2"]
