"""figures.lens: the top-1 token at every point and position, tracked tokens and statistics by point."""

from workbench import lens
from workbench.figures import lens as draw


def test_probabilities_are_sequential_from_zero_to_one(english):
    r = lens.lens(english, "My dear sister,")
    trace = draw.lens_heatmap(r).data[0]
    assert (trace.zmin, trace.zmax) == (0, 1)
    assert [row[0] for row in trace.text] == [r.top_labels[i][0][0] for i in range(len(r.points))]
    assert list(trace.y) == r.points


def test_one_line_per_tracked_token_and_panel_with_one_legend_entry(english):
    tracked = [english.tokenizer(" I")["input_ids"][0], english.tokenizer(" the")["input_ids"][0]]
    r = lens.lens(english, "My dear sister,", tracked=tracked)
    fig = draw.lens_tracked_lines([r], -1)
    assert len(fig.data) == 2 * 3 and sum(t.showlegend for t in fig.data) == 2
    assert list(fig.data[0].y) == r.tracked_probs[:, -1, 0].tolist()
    stats = draw.lens_stats_lines([r])  # averaged over positions
    assert len(stats.data) == 2
    assert all(abs(a - b) < 1e-6 for a, b in zip(stats.data[0].y, r.entropy.mean(1).tolist(), strict=True))
