"""The attribution graph's figures: a click's selection event maps back to the node drawn there."""

from __future__ import annotations

import pytest

from workbench import attribution_graph as ag
from workbench.figures import attribution_graph as draw
from workbench.transcoder import transcoders_of

PROMPT = "apple river stone cloud tiger lemon apple river stone"


@pytest.fixture(scope="module")
def graph(circuits):
    if not transcoders_of(circuits):
        pytest.skip("circuits has no transcoders")
    return ag.build(circuits, PROMPT)


def test_every_drawn_node_is_found_again_from_the_selection_a_click_on_it_makes(graph):
    g = graph
    fig = draw.graph_figure(g)
    xy = draw.positions(g, g.node_mask.nonzero()[:, 0].tolist())
    found = 0
    for c, trace in enumerate(fig.data):
        if trace.customdata is None:  # edges: nothing to select
            continue
        for i, (x, y, data) in enumerate(zip(trace.x, trace.y, trace.customdata, strict=True)):
            node = g.index_of(data)
            assert xy[node] == pytest.approx((x, y))  # the id drawn at a point is the node placed there
            for wrapped in (data, [data]):  # plotly.js reports a string; a chart may wrap it in a list
                point = {"curve_number": c, "point_number": i, "point_index": i, "x": x, "y": y, "customdata": wrapped}
                assert draw.node_of_selection({"points": [point], "point_indices": [i], "box": [], "lasso": []}) == data
            found += 1
    assert found == int(g.node_mask.sum())
    edge = {"curve_number": 0, "point_number": 3, "point_index": 3, "x": 1.0, "y": 0.0}
    assert draw.node_of_selection({"points": [edge]}) is None
    assert draw.node_of_selection({"points": []}) is None and draw.node_of_selection(None) is None


def test_the_intervention_figure_draws_every_prediction_measurement_and_reference_once(circuits, graph):
    """One bar per number of the intervention, each labelled with its value, the references last."""
    from workbench import attribution_graph_checks as graph_checks

    g = graph
    r = graph_checks.intervene(circuits, g, g.top_features(3), 0.0)
    bars = draw.intervention_figure(r).data[0]
    numbers = {k: v for k, v in r.rows()[0].items() if isinstance(v, float) and k != "factor"}
    assert sorted(bars.y) == pytest.approx(sorted(numbers.values()))
    assert list(bars.y[-2:]) == pytest.approx([r.tangent, r.replacement_tangent])
    assert list(bars.text) == [f"{v:+.3f}" for v in bars.y]
    bare = graph_checks.intervene(circuits, g, g.top_features(3), 0.0, references=False)  # the references left out: not drawn
    assert bare.tangent is None and list(draw.intervention_figure(bare).data[0].y) == pytest.approx(list(bars.y[:-2]))
