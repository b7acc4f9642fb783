"""figures.compare: B minus A in attention (future still masked) and in the logit lens."""

import math

import torch

from workbench import compare
from workbench.figures import compare as draw

A, B = "apple river stone cloud apple river", "apple river stone lemon apple river"


def test_pattern_difference_keeps_the_mask_and_each_head_change(circuits):
    d = compare.pattern_diff(circuits, A, B)
    assert torch.allclose(torch.tensor(draw.head_change_heatmap(d).data[0].z), d.change)
    diff = draw.pattern_diff_heatmap(d, 1, 0).data[0]
    assert math.isnan(diff.z[0][1]) and not math.isnan(diff.z[1][0])  # the future stays masked in the difference too
    assert (diff.zmin, diff.zmid, diff.zmax) == (-1, 0, 1)


def test_lens_difference_writes_where_the_top_token_changes(circuits):
    d = compare.lens_diff(circuits, A, B)
    trace = draw.lens_diff_heatmap(d).data[0]
    for i in range(len(d.points)):
        for j in range(d.alignment.n):
            assert (trace.text[i][j] != "") == (d.top_a[i][j] != d.top_b[i][j])
    assert trace.zmax == math.log(2)
