"""figures.common: the colour scales and the heatmap every view draws with."""

import math

import torch

from workbench.figures import common


def test_diverging_scale_is_symmetric_and_centred_on_zero():
    s = common.diverging(torch.tensor([-0.5, 2.0, float("nan"), float("-inf")]))
    assert (s.lo, s.mid, s.hi) == (-2.0, 0, 2.0)  # non-finite values do not stretch the range
    assert common.diverging(torch.tensor([0.1, -0.2]), at_least=1.0).hi == 1.0
    assert common.diverging(torch.zeros(3)).hi == 1.0  # an all-zero result still draws


def test_a_scale_reads_the_same_on_heatmaps_and_bars():
    s = common.diverging(torch.tensor([-3.0, 1.0]))
    h, m = s.for_heatmap(), s.for_marker([-3.0, 1.0])
    assert (h["zmin"], h["zmid"], h["zmax"]) == (m["cmin"], m["cmid"], m["cmax"]) == (-3.0, 0, 3.0)
    assert h["colorscale"] == m["colorscale"] == common.DIVERGING and m["color"] == [-3.0, 1.0]
    assert common.magnitude(torch.tensor([0.2, 0.5])).for_heatmap()["zmin"] == 0
    assert common.probability().for_heatmap()["zmax"] == 1


def test_heatmap_trace_carries_values_labels_text_and_hover():
    z = torch.tensor([[0.25, float("nan")], [0.5, 0.75]])
    trace = common.heatmap(z, common.probability(), "%{z}", ["a", "b"], ["r0", "r1"], text=[["x", ""], ["y", "z"]], colorbar="p")
    assert trace.z[0][0] == 0.25 and math.isnan(trace.z[0][1])
    assert list(trace.x) == ["a", "b"] and trace.texttemplate == "%{text}" and trace.colorbar.title.text == "p"
    assert trace.hoverongaps is False and trace.hovertemplate.endswith("<extra></extra>")
    assert common.heatmap(z, common.probability(), "%{z}").texttemplate is None  # no text: nothing written in


def test_future_is_masked_above_the_diagonal_only():
    masked = common.future_masked(torch.ones(4, 4))
    assert torch.isnan(masked).sum() == 6 and not torch.isnan(masked.diagonal()).any() and not torch.isnan(masked.tril()).any()


def test_layer_head_heatmap_writes_each_value_in_its_cell():
    values = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 10
    fig = common.layer_head_figure(values, "score", common.probability(), "t")
    trace = fig.data[0]
    assert list(trace.y) == ["L0", "L1"] and list(trace.x) == ["H0", "H1", "H2"]
    assert trace.text[1][2] == "0.50" and fig.layout.yaxis.autorange == "reversed"
    assert common.layer_head_labels(2, 2) == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
