"""The methods figures carry the scoreboard's numbers."""

import pytest

from workbench import methods, paths, scoreboard, tasks
from workbench.figures import methods as draw


@pytest.fixture(scope="module")
def sb(circuits):
    return scoreboard.run(circuits, scoreboard.task_pairs(circuits, "induction pairs", 2), "induction pairs")


def test_faithfulness_curves_one_line_per_method_and_level(sb):
    fig = draw.faithfulness_curves(sb)
    assert len(fig.data) == len(sb.curves) == 6
    for trace, curve in zip(fig.data, sb.curves, strict=True):
        assert list(trace.y) == pytest.approx(curve.faithfulness.tolist())
        assert trace.x[-1] == pytest.approx(1.0)


def test_estimate_against_exact_marks_the_exact_top(sb):
    fig = draw.estimate_vs_exact(sb.nodes["AtP*"], sb.nodes["exact"], top=3)
    points = fig.data[1]
    assert list(points.x) == pytest.approx(sb.nodes["exact"].effect.tolist())
    assert sum(c == "#d62728" for c in points.marker.color) == 3


def test_path_bars(circuits):
    setup = tasks.induction_pairs(circuits, 1)[0]
    r = paths.path_patch_named(circuits, setup, "denoising", "L0H0", ("L1H3.v", "logits"))
    fig = draw.path_bars(r)
    assert list(fig.data[0].x) == pytest.approx([*r.each.tolist(), r.normalised])
    assert methods.prepare(circuits, setup).span != 0
