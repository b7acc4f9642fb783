"""figures.attention: patterns with the future masked, one panel per head, head types, a head's anatomy."""

import math

import torch

from workbench import attention
from workbench.figures import attention as draw
from workbench.runs import hook_names, run_prompt

PROMPT = "apple river stone cloud apple river"


def test_pattern_heatmap_hides_the_future_and_labels_every_token(circuits):
    p = attention.patterns(circuits, PROMPT)
    fig = draw.pattern_heatmap(p, 1, 0)
    z = fig.data[0].z
    assert all(math.isnan(z[q][k]) for q in range(7) for k in range(q + 1, 7))
    assert all(abs(z[q][k] - float(p.pattern[1, 0, q, k])) < 1e-7 for q in range(7) for k in range(q + 1))
    assert len(set(fig.data[0].x)) == 7  # repeated tokens stay separate columns
    assert fig.layout.title.text.startswith("Layer 1, head 0")


def test_grid_has_one_panel_per_head(circuits):
    fig, factor = draw.pattern_grid(attention.patterns(circuits, PROMPT))
    assert factor == 1 and len(fig.data) == circuits.info.n_layers * circuits.info.n_heads
    assert torch.tensor(fig.data[4].z).shape == (7, 7)
    assert fig.data[4].customdata[0][0] == "L1 H0"  # panels run layer-major, as the subplot titles do


def test_grid_of_a_long_prompt_is_pooled_and_says_so(english):
    p = attention.patterns(english, " ".join(["word"] * 300), truncate=True)
    fig, factor = draw.pattern_grid(p, cell=48)
    assert factor == math.ceil(256 / 48) and "max over" in fig.layout.title.text
    assert len(fig.data) == english.info.n_layers * english.info.n_heads and len(fig.data[0].z) <= 48


def test_token_focus_masks_what_the_token_cannot_see_or_be_seen_by(circuits):
    p = attention.patterns(circuits, PROMPT)
    fig = draw.token_focus_figure(attention.token_focus(p, 3), p.labels)
    attends, attended = fig.data[0].z, fig.data[1].z
    assert all(math.isnan(row[4]) and not math.isnan(row[3]) for row in attends)  # keys after position 3
    assert all(math.isnan(row[2]) and not math.isnan(row[3]) for row in attended)  # queries before it


def test_head_types_share_one_scale_except_entropy(circuits):
    h = attention.head_types(circuits, run_prompt(circuits, PROMPT, hook_names(circuits, "attn.hook_pattern")))
    fig = draw.head_types_heatmap(h)
    assert len(fig.data) == len(h.scores)
    for trace, name in zip(fig.data, h.scores, strict=True):
        assert torch.allclose(torch.tensor(trace.z), h.scores[name])
        assert (trace.zmin, trace.zmax) == ((0, None) if name == "entropy" else (0, 1))


def test_anatomy_shows_the_weights_and_a_symmetric_value_scale(circuits):
    a = attention.head_anatomy(circuits, PROMPT, 1, 0, 4)
    fig = draw.anatomy_figure(a)
    assert torch.allclose(torch.tensor(fig.data[2].y), a.weights)
    values = fig.data[3]
    assert values.zmid == 0 and values.zmin == -values.zmax
