"""Figures of the attribution graph: nodes by layer and position, edges as lines (blue excites, red inhibits)."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.attribution_graph import AttributionGraph
from workbench.attribution_graph_checks import Intervention
from workbench.figures.common import layout, token_ticks
from workbench.task_circuits import TaskCheck
from workbench.tokens import unique_labels

KINDS = {  # kind -> (marker, colour)
    "token": ("square", "#7f7f7f"),
    "feature": ("circle", "#2ca02c"),
    "error": ("diamond", "#bdbdbd"),
    "logit": ("star", "#ff7f0e"),
}
PICKED = "#d62728"
SPREAD = 0.7  # the nodes of one (layer, position) spread over this width
WIDTHS = 5  # edge width classes: one trace per class and sign, not one per edge


def positions(g: AttributionGraph, nodes: list[int]) -> dict[int, tuple[float, float]]:
    """node -> (x, y): x the position (nodes of one cell spread side by side, strongest first), y the layer
    (tokens at -1, errors just under their layer's features, logits above the last layer)."""
    cells: dict[tuple[int, float], list[int]] = {}
    for i in nodes:
        kind, layer, pos, _ = g.where(i)
        y = {"token": -1.0, "error": layer - 0.25, "logit": float(g.n_layers)}.get(kind, float(layer))
        cells.setdefault((pos, y), []).append(i)
    xy = {}
    for (pos, y), members in cells.items():
        members.sort(key=lambda i: -float(g.influence[i]))
        n = len(members)
        for r, i in enumerate(members):
            xy[i] = (pos + (SPREAD * (r / (n - 1) - 0.5) if n > 1 else 0.0), y)
    return xy


def graph_figure(g: AttributionGraph, picked: int | None = None, supernodes: dict[str, list[int]] | None = None) -> go.Figure:
    """The pruned graph: kept nodes and edges; `picked` and its edges highlighted; supernodes outlined by name."""
    nodes = g.node_mask.nonzero()[:, 0].tolist()
    xy = positions(g, nodes)
    fig = go.Figure()
    dst, src = g.edge_mask.nonzero(as_tuple=True)
    weights = g.adjacency[dst, src]
    top = float(weights.abs().max()) if len(weights) else 1.0
    groups: dict[tuple[int, bool], tuple[list, list]] = {}
    for t, s, wgt in zip(dst.tolist(), src.tolist(), weights.tolist(), strict=True):
        if s not in xy or t not in xy:
            continue
        cls = min(WIDTHS - 1, int(abs(wgt) / top * WIDTHS))
        xs, ys = groups.setdefault((cls, wgt >= 0), ([], []))
        xs += [xy[s][0], xy[t][0], None]
        ys += [xy[s][1], xy[t][1], None]
    for (cls, positive), (xs, ys) in sorted(groups.items()):
        touches = picked is not None
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                line=dict(width=0.5 + 2 * cls, color=f"rgba(31,119,180,{0.15 if touches else 0.5})" if positive
                          else f"rgba(214,39,40,{0.15 if touches else 0.5})"),
            )
        )  # fmt: skip
    if picked is not None:  # the picked node's edges in full colour
        for j, wgt in g.edges_into(picked, 30) + g.edges_from(picked, 30):
            if j in xy and picked in xy:
                a, b = (j, picked) if g.adjacency[picked, j] == wgt else (picked, j)
                fig.add_trace(
                    go.Scatter(
                        x=[xy[a][0], xy[b][0]], y=[xy[a][1], xy[b][1]], mode="lines", hoverinfo="skip", showlegend=False,
                        line=dict(width=1 + 5 * abs(wgt) / top, color="#1f77b4" if wgt >= 0 else "#d62728"),
                    )
                )  # fmt: skip
    for kind, (symbol, colour) in KINDS.items():
        members = [i for i in nodes if g.kind(i) == kind]
        if not members:
            continue
        fig.add_trace(
            go.Scatter(
                x=[xy[i][0] for i in members], y=[xy[i][1] for i in members], mode="markers", name=kind,
                marker=dict(symbol=symbol, color=[PICKED if i == picked else colour for i in members],
                            size=[8 + 14 * float(g.influence[i]) ** 0.5 for i in members], line=dict(width=1, color="#333")),
                customdata=[g.node_id(i) for i in members],
                text=[f"{g.label(i)}<br>id {g.node_id(i)} · influence {float(g.influence[i]):.3f}"
                      + (f" · activation {float(g.activations[i]):.3f}" if kind == "feature" else "") for i in members],
                hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    for name, members in (supernodes or {}).items():
        pts = [xy[i] for i in members if i in xy]
        if pts:
            x0, x1 = min(p[0] for p in pts) - 0.2, max(p[0] for p in pts) + 0.2
            y0, y1 = min(p[1] for p in pts) - 0.2, max(p[1] for p in pts) + 0.2
            fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color="#9467bd", dash="dot"))
            fig.add_annotation(x=x0, y=y1, text=name, showarrow=False, xanchor="left", yanchor="bottom", font=dict(color="#9467bd"))
    ticks = unique_labels(g.labels)
    fig.update_xaxes(tickmode="array", tickvals=list(range(g.n_pos)), ticktext=ticks, title="position")
    fig.update_yaxes(
        tickmode="array", tickvals=[-1, *range(g.n_layers), g.n_layers],
        ticktext=["tokens", *[f"layer {i}" for i in range(g.n_layers)], "logits"], title="",
    )  # fmt: skip
    token_ticks(fig)
    title = (
        f"Attribution graph of {g.logit_labels[0]!r} (p={float(g.logit_probs[0]):.2f}): {int(g.node_mask.sum())} nodes, "
        f"{int(g.edge_mask.sum())} edges · replacement {g.replacement_score:.2f} · completeness {g.completeness_score:.2f}"
    )
    return layout(fig, title, 520)


def node_of_selection(selection: dict | None) -> str | None:
    """The node id of the first node point in a Streamlit selection event of `graph_figure` (its payload:
    {"points": [{"curve_number", "point_index", "x", "y", "customdata", ...}], ...}), or None.

    The node traces carry each node's id as their customdata (one string per point; a list where a
    chart wraps it); the edge traces carry none, so a click on an edge selects nothing."""
    for point in (selection or {}).get("points", []):
        data = point.get("customdata")
        if isinstance(data, list | tuple):
            data = data[0] if data else None
        if isinstance(data, str) and data:
            return data
    return None


def intervention_figure(r: Intervention) -> go.Figure:
    """The answer's logit change: predicted by the graph three ways, measured seven ways, and the two first-order
    references that are not the graph's (attribution_graph_checks' module doc)."""
    names = ["predicted (final norm live)", "predicted, first order", "predicted, norm scales frozen", "frozen model",
             "frozen model, final norm live", "replacement model (attention live)", "replacement model, attention frozen",
             "real model, attention and final norm frozen",
             "real model, attention frozen", "real model (attention live)",
             "reference: real model's tangent", "reference: replacement model's tangent"]  # fmt: skip
    values = [r.predicted, r.predicted_first_order, r.predicted_frozen_norm, r.frozen, r.final_norm_live, r.replacement,
              r.replacement_attention_frozen, r.final_norm_frozen, r.attention_frozen, r.real, r.tangent,
              r.replacement_tangent]  # fmt: skip
    colors = ["#9467bd", "#c5b0d5", "#7f7f7f", "#8c564b", "#e377c2", "#2ca02c", "#98df8a", "#bcbd22", "#17becf", "#1f77b4",
              "#ff7f0e", "#ffbb78"]  # fmt: skip
    drawn = [i for i, v in enumerate(values) if v is not None]  # the references where the intervention computed them
    names, values, colors = ([xs[i] for i in drawn] for xs in (names, values, colors))
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colors,
                           text=[f"{v:+.3f}" for v in values], textposition="outside"))  # fmt: skip
    fig.update_yaxes(title=f"Δ logit of {r.answer!r} − mean logit")
    return layout(fig, f"{len(r.nodes)} feature(s) set to ×{r.factor:g} their activation", 360)


def feature_figure(labels: list[str], activations: list[float], title: str) -> go.Figure:
    """One feature's activation at every position of the prompt."""
    fig = go.Figure(go.Bar(x=list(range(len(labels))), y=activations, marker_color="#2ca02c"))
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(labels))), ticktext=unique_labels(labels))
    fig.update_yaxes(title="activation")
    return layout(fig, title, 280)


def logit_effect_figure(up: list[str], up_values: list[float], down: list[str], down_values: list[float], title: str) -> go.Figure:
    """The tokens a feature's decoder row promotes and suppresses through the unembedding."""
    fig = go.Figure()
    fig.add_trace(go.Bar(y=up[::-1], x=up_values[::-1], orientation="h", marker_color="#1f77b4", name="promotes"))
    fig.add_trace(go.Bar(y=down[::-1], x=down_values[::-1], orientation="h", marker_color="#d62728", name="suppresses"))
    fig.update_xaxes(title="decoder row · W_U")
    return layout(fig, title, 360)


def task_check_figure(c: TaskCheck) -> go.Figure:
    """Each pair's supernode change of the answer's logit: measured (real model, attention frozen) against the edges'
    norm-aware prediction, with the tolerance band around measured = predicted, the attention-live change, the median
    random draw's change and the frozen-scale prediction (at the measured change) beside it."""
    pred = [p.predicted for p in c.pairs]
    seen = [v for p in c.pairs for v in (p.measured, p.live, p.predicted_frozen_norm)]
    lo, hi = min([0.0, *pred, *seen]), max([0.0, *pred, *seen])
    line = [lo, hi]
    t = c.config.tolerance
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=line, y=line, mode="lines", line=dict(color="#7f7f7f", dash="dash"), name="measured = predicted"))
    for sign in (1 - t, 1 + t):
        fig.add_trace(go.Scatter(x=line, y=[v * sign for v in line], mode="lines", line=dict(color="#c7c7c7", width=1),
                                 name=f"±{t:.0%}", showlegend=sign < 1))  # fmt: skip
    text = [f"{p.prompt[-40:]!r} → {p.answer!r}" for p in c.pairs]
    fig.add_trace(go.Scatter(x=pred, y=[p.measured for p in c.pairs], mode="markers", name="top supernode (attention frozen)",
                             marker=dict(size=10, color=["#2ca02c" if p.passed else "#d62728" for p in c.pairs]), text=text,
                             hovertemplate="%{text}<br>predicted %{x:.3f}, measured %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=pred, y=[p.live for p in c.pairs], mode="markers", name="top supernode, attention live",
                             marker=dict(size=7, color="#1f77b4", symbol="circle-open"), text=text,
                             hovertemplate="%{text}<br>predicted %{x:.3f}, attention live %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=[p.predicted_frozen_norm for p in c.pairs], y=[p.measured for p in c.pairs], mode="markers",
                             name="frozen-scale prediction (norm scales frozen)", marker=dict(size=7, color="#7f7f7f", symbol="diamond-open"),
                             text=text, hovertemplate="%{text}<br>frozen-scale prediction %{x:.3f}, measured %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter(x=pred, y=[-p.random_median if p.predicted < 0 else p.random_median for p in c.pairs], mode="markers",
                             name="as many random features (median |change|)", marker=dict(size=7, color="#7f7f7f", symbol="x"),
                             text=text, hovertemplate="%{text}<br>random median %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.update_xaxes(title="Δ answer logit predicted by the edges (final norm live)")
    fig.update_yaxes(title="Δ answer logit measured (real model)")
    title = f"{c.task} on {c.model}: {c.passed:.0%} of {len(c.pairs)} pairs pass (supernode set to ×{c.config.factor:g})"
    return layout(fig, title, 420)
