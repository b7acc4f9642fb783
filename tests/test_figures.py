"""Figures: plotly only, built from results; the conventions every view shares."""

import math

import torch

from workbench import attention, figures, lens, patching
from workbench.generate import Sampling, generate
from workbench.runs import next_token_topk, run_prompt

PROMPT = "apple river stone cloud apple river"


def test_pattern_heatmap_hides_the_future_and_labels_every_token(circuits):
    p = attention.patterns(circuits, PROMPT)
    fig = figures.pattern_heatmap(p, 1, 0)
    z = fig.data[0].z
    assert all(math.isnan(z[q][k]) for q in range(7) for k in range(q + 1, 7))
    assert all(abs(z[q][k] - float(p.pattern[1, 0, q, k])) < 1e-7 for q in range(7) for k in range(q + 1))
    assert len(set(fig.data[0].x)) == 7  # repeated tokens stay separate columns
    assert fig.layout.title.text.startswith("Layer 1, head 0")


def test_signed_effects_are_diverging_and_centred_on_zero(circuits):
    tok = circuits.tokenizer
    s = patching.PatchingSetup(PROMPT, "apple river stone lemon apple river", tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0])
    fig = figures.patching_heatmap(patching.sweep(circuits, s, "resid_pre"))
    trace = fig.data[0]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax and trace.colorscale[0][1] != trace.colorscale[-1][1]


def test_probabilities_are_sequential_from_zero_to_one(english):
    r = lens.lens(english, "My dear sister,")
    trace = figures.lens_heatmap(r).data[0]
    assert (trace.zmin, trace.zmax) == (0, 1)
    assert [row[0] for row in trace.text] == [r.top_labels[i][0][0] for i in range(len(r.points))]
    top = next_token_topk(english, run_prompt(english, "My dear sister,"), k=5)
    bar = figures.topk_bar(top).data[0]
    assert list(bar.x)[::-1] == top.probs  # most likely on top


def test_generation_marks_the_chosen_token(english):
    gen = generate(english, "The whale", Sampling(max_new_tokens=3))
    fig = figures.generation_steps(gen)
    assert len(fig.data[0].y) == 3 and all(row[0].startswith("▶") for row in fig.data[0].text)  # greedy: the top candidate


def test_grid_has_one_panel_per_head(circuits):
    fig, factor = figures.pattern_grid(attention.patterns(circuits, PROMPT))
    assert factor == 1 and len(fig.data) == circuits.info.n_layers * circuits.info.n_heads
    assert torch.tensor(fig.data[4].z).shape == (7, 7)


def test_per_head_heatmaps_show_the_result_values(circuits):
    from workbench import attribution, compare

    c = attribution.component_attribution(circuits, PROMPT, circuits.tokenizer(" stone")["input_ids"][0])
    trace = figures.head_attribution_heatmap(c).data[0]
    assert torch.allclose(torch.tensor(trace.z), c.heads) and trace.zmid == 0 and trace.zmin == -trace.zmax
    d = compare.pattern_diff(circuits, PROMPT, "apple river stone lemon apple river")
    assert torch.allclose(torch.tensor(figures.head_change_heatmap(d).data[0].z), d.change)
    diff = figures.pattern_diff_heatmap(d, 1, 0).data[0].z
    assert math.isnan(diff[0][1]) and not math.isnan(diff[1][0])  # the future stays masked in the difference too
