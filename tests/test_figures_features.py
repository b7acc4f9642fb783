"""Figures of the Features view draw the numbers of their results."""

import torch

from workbench import dashboards, features
from workbench.figures import features as draw


def _pf():
    acts = torch.zeros(4, 10)
    acts[1, 3], acts[2, 7], acts[3, 3] = 1.5, 2.0, 0.5
    return features.PromptFeatures(torch.arange(4), ["<bos>", "␣a", "␣b", "␣c"], {"blocks.0.hook_resid_pre": acts})


def test_heatmap_and_prompt_bars_draw_the_activations():
    pf = _pf()
    chosen, values = pf.strongest("blocks.0.hook_resid_pre", 1)
    assert chosen == [7, 3]  # by peak
    fig = draw.token_feature_heatmap(pf, "blocks.0.hook_resid_pre", chosen, values)
    assert fig.data[0].z == tuple(tuple(r) for r in values.tolist()) or list(map(list, fig.data[0].z)) == values.tolist()
    assert list(fig.data[0].x) == ["f7", "f3"]
    bars = draw.feature_across_prompt(pf, "blocks.0.hook_resid_pre", 3)
    assert list(bars.data[0].y) == [0.0, 1.5, 0.0, 0.5]


def test_every_layer_figure_names_each_positions_strongest_feature():
    pf = _pf()
    fig = draw.strongest_by_layer(pf)
    assert list(fig.data[0].z[0]) == [0.0, 1.5, 2.0, 0.5]
    assert list(fig.data[0].text[0]) == ["", "f3", "f7", "f3"]
    assert list(fig.data[0].y) == ["blocks.0.hook_resid_pre"]


def test_contexts_line_up_each_examples_token():
    ex = [
        dashboards.Example(5, 2.0, ["␣x", "␣y", "␣z"], [0.0, 2.0, 0.1], 1),
        dashboards.Example(9, 1.0, ["␣p", "␣q", "␣r", "␣s", "␣t"], [0.0, 0.0, 0.0, 1.0, 0.0], 3),
    ]
    fig = draw.contexts(ex, 2.0, "t")
    text = fig.data[0].text
    cols = [next(i for i, t in enumerate(row) if t.startswith("▶")) for row in text]
    assert cols[0] == cols[1]  # the examples' tokens share a column
    assert fig.data[0].z[0][cols[0]] == 2.0 and fig.data[0].z[1][cols[1]] == 1.0


def test_quality_curve_has_a_line_per_hook_and_the_search():
    q = {"k": 8, "l0": 8.0, "loss_recovered": 0.9}
    card = {"hooks": {"a": {"k_curve": [q, q]}, "b": {"k_curve": [q]}}, "search": {"runs": [q | {"width": 64}]}}
    fig = draw.quality_curve(card)
    assert [t.name for t in fig.data] == ["a", "b", "trained at k (search)"]
