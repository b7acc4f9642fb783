"""Figures of the information-flow graph: every edge drawn once, widths follow the weights, the selection outlined."""

import pytest

from workbench import graph, graph_faithfulness, tasks
from workbench.figures import graph as draw


@pytest.fixture(scope="module")
def g(circuits):
    return graph.build(circuits, tasks.induction_pairs(circuits, 1, length=12, repeat=5, seed=1)[0].clean)


def _segments(trace) -> int:
    return sum(1 for x in trace.x if x is None)


def test_every_link_is_drawn_once_with_a_hover(g):
    fig = draw.graph_figure(g)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(_segments(t) for t in lines) == len(g.edges)
    hover = next(t for t in fig.data if t.name == "edges")
    assert len(hover.x) == len(g.edges) and all("importance" in text for text in hover.text)
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert len(nodes.x) == len(g.nodes)
    assert list(fig.layout.yaxis.ticktext) == g.points and len(fig.layout.xaxis.ticktext) == g.position + 1


def test_wider_lines_for_heavier_edges(g):
    fig = draw.graph_figure(g)
    widths = {}
    for edge in g.edges:
        cls = min(draw.WIDTHS - 1, int(edge.weight * draw.WIDTHS))
        widths[edge.weight] = draw._width((cls + 0.5) / draw.WIDTHS)
    ordered = [widths[w] for w in sorted(widths)]
    assert ordered == sorted(ordered) and ordered[0] < ordered[-1]
    assert {t.line.width for t in fig.data if t.mode == "lines"} <= set(widths.values())


def test_a_selected_link_or_node_is_outlined(g):
    base = len(draw.graph_figure(g).data)
    edge = g.ranked(1)[0]
    fig = draw.graph_figure(g, edge)
    assert (
        len(fig.data) == base + 1 and fig.data[-1].line.color == "#d62728" and list(fig.data[-1].x) == [edge.source[1], edge.destination[1]]
    )
    fig = draw.graph_figure(g, g.nodes[0])
    assert fig.data[-1].marker.line.color == "#d62728"


def test_heads_and_faithfulness_figures(circuits, g):
    edge = g.ranked(1)[0]
    heads = draw.heads_figure(edge, "heads")
    assert list(heads.data[0].y) == list(edge.heads)
    f = graph_faithfulness.faithfulness(circuits, g, "zero", k=2, draws=3)
    fig = draw.faithfulness_figure(f)
    assert list(fig.data[0].y) == [f.full, f.empty, f.kept, f.top_k, *f.random_k]


def test_the_legend_names_each_kind_of_edge_once(g):
    fig = draw.graph_figure(g)
    named = [t.name for t in fig.data if t.showlegend]
    assert sorted(named) == sorted({e.kind for e in g.edges})


def test_attention_edges_expand_into_their_heads(g):
    fig = draw.graph_figure(g, by_head=True)
    heads = [t for t in fig.data if t.mode == "lines" and t.name.startswith("H")]
    attention = [e for e in g.edges if e.kind == "attention"]
    drawn = sum(_segments(t) for t in heads)
    expected = sum(1 for e in attention for s in draw.head_shares(e) if s >= draw.HEAD_MIN * e.weight)
    assert drawn == expected >= len(attention)  # every edge keeps at least its strongest head
    assert not [t for t in fig.data if t.name == "attention"]
    for e in attention:  # the heads' shares split the edge's weight
        assert sum(draw.head_shares(e)) == pytest.approx(e.weight)
