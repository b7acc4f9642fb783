"""Figures of the information-flow graph: token × layer layout, edges as lines whose width is their importance."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.figures.common import layout, token_ticks
from workbench.graph import Edge, Graph
from workbench.graph_faithfulness import Faithfulness
from workbench.tokens import unique_labels

COLOURS = {"residual": "#9aa5b1", "attention": "#1f77b4", "mlp": "#ff7f0e"}
WIDTHS = 6  # edges are drawn in this many width classes: one trace each, not one per edge
MLP_SHIFT = 0.3  # an MLP edge bends right of the residual line, through the MLP's square
HEAD_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
HEAD_BEND = 0.12  # per-head lines bend apart by this much (in positions) at their middle
HEAD_MIN = 0.1  # a head carrying less than this share of its edge's weight is not drawn


def _width(weight: float) -> float:
    """Line width of an edge of this renormalised weight (0..1), from a class of WIDTHS."""
    cls = min(WIDTHS - 1, int(weight * WIDTHS))
    return 1 + 9 * (cls + 0.5) / WIDTHS


def _path(edge: Edge) -> tuple[list[float], list[float]]:
    (p0, x0), (p1, x1) = edge.source, edge.destination
    if edge.kind == "mlp":
        return [x0, x1 + MLP_SHIFT, x1], [p0, (p0 + p1) / 2, p1]
    return [x0, x1], [p0, p1]


def _hover(g: Graph, edge: Edge) -> str:
    text = (
        f"{edge.kind} · layer {edge.layer}<br>{g.points[edge.source[0]]} @ {edge.source[1]} {g.labels[edge.source[1]]}"
        f" → {g.points[edge.destination[0]]} @ {edge.destination[1]} {g.labels[edge.destination[1]]}"
        f"<br>importance {edge.importance:.3f} · weight {edge.weight:.3f} · flow {edge.flow:.3f}"
    )
    if edge.heads:
        text += "<br>" + " ".join(f"H{h} {v:.2f}" for h, v in enumerate(edge.heads))
    return text


def head_shares(edge: Edge) -> list[float]:
    """An attention edge's weight split over its heads in proportion to each head's own importance."""
    total = sum(edge.heads)
    return [edge.weight * h / total if total > 0 else edge.weight / len(edge.heads) for h in edge.heads]


def _by_head(fig: go.Figure, g: Graph) -> None:
    """Every attention edge expanded into one line per head (a head's colour, bent apart so that they do not overlap)."""
    attention = [edge for edge in g.edges if edge.kind == "attention"]
    n_heads = max((len(edge.heads) for edge in attention), default=0)
    for head in range(n_heads):
        colour = HEAD_COLOURS[head % len(HEAD_COLOURS)]
        for cls in range(WIDTHS):
            xs, ys = [], []
            for edge in attention:
                share = head_shares(edge)[head]
                if share >= HEAD_MIN * edge.weight and min(WIDTHS - 1, int(share * WIDTHS)) == cls:
                    (p0, x0), (p1, x1) = edge.source, edge.destination
                    bend = (head - (n_heads - 1) / 2) * HEAD_BEND
                    xs += [x0, (x0 + x1) / 2 + bend, x1, None]
                    ys += [p0, (p0 + p1) / 2, p1, None]
            if xs:
                fig.add_trace(
                    go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=_width((cls + 0.5) / WIDTHS)), hoverinfo="skip",
                               name=f"H{head}", legendgroup=f"H{head}", showlegend=not any(t.name == f"H{head}" for t in fig.data), opacity=0.8)
                )  # fmt: skip


def graph_figure(g: Graph, selected: Edge | tuple[int, int] | None = None, by_head: bool = False) -> go.Figure:
    """The graph: one column per position up to the predicted one, one row per lens point (embeddings at the bottom).

    Width of an edge: its weight (share of its destination's kept update); nodes are sized by the share of
    the output that flows through them. `selected` (an edge or a node) is outlined in red. `by_head`:
    each attention edge is drawn as its heads (its weight split by the heads' importances; heads
    under a tenth of the edge left out).
    """
    fig = go.Figure()
    for kind in ("residual", "mlp") if by_head else ("residual", "mlp", "attention"):  # attention on top: the eye follows it
        legend = True  # the first trace of each kind names it in the legend
        for cls in range(WIDTHS):
            xs, ys = [], []
            for edge in g.edges:
                if edge.kind == kind and min(WIDTHS - 1, int(edge.weight * WIDTHS)) == cls:
                    x, y = _path(edge)
                    xs += [*x, None]
                    ys += [*y, None]
            if xs:
                fig.add_trace(
                    go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=COLOURS[kind], width=_width((cls + 0.5) / WIDTHS)),
                               hoverinfo="skip", showlegend=legend, name=kind, legendgroup=kind, opacity=0.75)
                )  # fmt: skip
                legend = False
    if by_head:
        _by_head(fig, g)
    # one invisible marker at the middle of every edge carries its hover text
    mids = [(sum(_path(edge)[0][:2]) / 2, sum(_path(edge)[1][:2]) / 2, _hover(g, edge)) for edge in g.edges]
    fig.add_trace(
        go.Scatter(x=[m[0] for m in mids], y=[m[1] for m in mids], mode="markers", marker=dict(size=8, opacity=0),
                   hovertemplate="%{text}<extra></extra>", text=[m[2] for m in mids], showlegend=False, name="edges")
    )  # fmt: skip
    mlps = [edge for edge in g.edges if edge.kind == "mlp"]
    if mlps:
        fig.add_trace(
            go.Scatter(x=[edge.destination[1] + MLP_SHIFT for edge in mlps], y=[sum(_path(edge)[1][1:2]) for edge in mlps], mode="markers",
                       marker=dict(symbol="square", size=9, color=COLOURS["mlp"]), showlegend=False, name="MLP",
                       hovertemplate="%{text}<extra></extra>", text=[f"MLP · layer {edge.layer} @ {edge.destination[1]}" for edge in mlps])
        )  # fmt: skip
    nodes = list(g.nodes)
    fig.add_trace(
        go.Scatter(
            x=[n[1] for n in nodes], y=[n[0] for n in nodes], mode="markers", showlegend=False, name="nodes",
            marker=dict(size=[6 + 14 * g.node_flow[n] for n in nodes], color="#333333"),
            text=[f"{g.points[n[0]]} @ {n[1]} {g.labels[n[1]]}<br>flow {g.node_flow[n]:.3f}" for n in nodes],
            hovertemplate="%{text}<extra></extra>",
        )
    )  # fmt: skip
    if selected is not None:
        if isinstance(selected, Edge):
            x, y = _path(selected)
            fig.add_trace(
                go.Scatter(x=x, y=y, mode="lines", line=dict(color="#d62728", width=3, dash="dot"), showlegend=False, hoverinfo="skip")
            )
        else:
            fig.add_trace(
                go.Scatter(x=[selected[1]], y=[selected[0]], mode="markers", showlegend=False, hoverinfo="skip",
                           marker=dict(size=22, color="rgba(0,0,0,0)", line=dict(color="#d62728", width=3)))
            )  # fmt: skip
    positions = list(range(g.position + 1))
    fig.update_xaxes(tickvals=positions, ticktext=unique_labels(g.labels[: g.position + 1]), range=[-0.6, g.position + 0.6], showgrid=False)
    fig.update_yaxes(tickvals=list(range(len(g.points))), ticktext=g.points, range=[-0.4, len(g.points) - 0.6], showgrid=True)
    token_ticks(fig)
    what = f"{g.answer_label} vs {g.wrong_label}" if g.contrastive else g.answer_label
    title = f"Information flow to the prediction {what} after position {g.position} (threshold {g.threshold:g})"
    layout(fig, title, 240 + 55 * len(g.points))
    # the legend in a row of its own between the title and the plot
    return fig.update_layout(legend=dict(orientation="h", y=1.0, x=0, xanchor="left", yanchor="bottom"), margin=dict(t=80))


def heads_figure(edge: Edge, title: str) -> go.Figure:
    """One attention edge's heads: each head's importance (the per-head decomposition)."""
    fig = go.Figure(go.Bar(x=[f"H{h}" for h in range(len(edge.heads))], y=list(edge.heads), marker_color=COLOURS["attention"],
                           hovertemplate="%{x}: importance %{y:.4f}<extra></extra>"))  # fmt: skip
    fig.update_yaxes(title="importance")
    return layout(fig, title, 300)


def faithfulness_figure(f: Faithfulness) -> go.Figure:
    """The metric under each ablation: the model, everything ablated, only the graph kept, top-k vs k random ablated."""
    names = ["model", "everything ablated", "only the graph", f"top {f.k} ablated"] + [f"random {f.k} #{d}" for d in range(len(f.random_k))]
    values = [f.full, f.empty, f.kept, f.top_k, *f.random_k]
    colours = ["#333333", "#9aa5b1", "#2ca02c" if f.survives else "#d62728", "#1f77b4"] + ["#c5b0d5"] * len(f.random_k)
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colours, hovertemplate="%{x}<br>metric %{y:.4f}<extra></extra>"))
    fig.update_yaxes(title=f.metric)
    how = f"{f.ablation} ablation" + (f": {f.reference}" if f.ablation == "mean" else "")  # the mean names what it is over
    return layout(fig, f"Faithfulness ({how}): the graph keeps {f.share:.0%} of the metric", 320)
