"""Figures of the methods views: faithfulness curves, an estimate against exact patching, path patching's paths."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.common import layout
from workbench.methods import NodeEffects
from workbench.paths import PathResult
from workbench.scoreboard import Scoreboard

COLOURS = {"exact": "#222222", "AtP": "#1f77b4", "AtP*": "#d62728", "EAP": "#2ca02c", "EAP-IG": "#9467bd"}


def faithfulness_curves(sb: Scoreboard) -> go.Figure:
    """Faithfulness (0 base run, 1 full restoration) of each method's top-k circuit over its share of all nodes / edges."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("nodes patched together (top k)", "edges kept as a circuit (top k, MIB)"))
    for col, level in ((1, "nodes"), (2, "edges")):
        for c in (c for c in sb.curves if c.level == level):
            share = (c.sizes.double() / c.total).tolist()
            fig.add_trace(
                go.Scatter(
                    x=share, y=c.faithfulness.tolist(), mode="lines+markers", name=f"{c.method} ({level})",
                    line=dict(color=COLOURS.get(c.method), dash="dot" if c.method == "exact" else "solid"),
                    customdata=c.sizes.tolist(),
                    hovertemplate=f"{c.method}<br>top %{{customdata}} {level} (%{{x:.1%}})<br>faithfulness %{{y:.3f}}<extra></extra>",
                ),
                row=1, col=col,
            )  # fmt: skip
        fig.update_xaxes(title_text=f"share of all {level}", type="log" if level == "edges" else "linear", row=1, col=col)
    fig.update_yaxes(title_text="faithfulness", row=1, col=1)
    return layout(fig, f"Circuit faithfulness over circuit size — {sb.task}, mean over {sb.n_pairs} pairs", 420)


def estimate_vs_exact(estimate: NodeEffects | object, exact: NodeEffects | object, top: int = 10) -> go.Figure:
    """One point per node or edge: the exact effect across, the estimate up; the exact top `top` marked."""
    labels = estimate.labels
    x, y = exact.effect.tolist(), estimate.effect.tolist()
    best = set(exact.magnitude.argsort(descending=True)[:top].tolist())
    colour = ["#d62728" if i in best else "#7f7f7f" for i in range(len(x))]
    lo, hi = min(x + y + [0.0]), max(x + y + [0.0])
    fig = go.Figure(
        [
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#bbbbbb", dash="dash"), name="estimate = exact", hoverinfo="skip"),
            go.Scatter(
                x=x, y=y, mode="markers", marker=dict(color=colour, size=8), text=labels, name=f"{estimate.method} (exact top {top} red)",
                hovertemplate="%{text}<br>exact %{x:.4f}<br>estimate %{y:.4f}<extra></extra>",
            ),
        ]
    )  # fmt: skip
    fig.update_xaxes(title_text="exact effect (normalised)")
    fig.update_yaxes(title_text=f"{estimate.method} estimate (normalised)")
    return layout(fig, f"{estimate.method} against exact patching, {len(x)} {'nodes' if hasattr(estimate, 'nodes') else 'edges'}", 460)


def path_bars(r: PathResult) -> go.Figure:
    """Each chosen path's effect alone, and all of them together (0 base run, 1 full restoration)."""
    names = [f"{r.sender} → {x}" for x in r.receivers] + [f"{r.sender} → all chosen"]
    values = [*r.each.tolist(), r.normalised]
    colour = ["#1f77b4"] * len(r.receivers) + ["#d62728"]
    fig = go.Figure(
        go.Bar(x=values, y=names, orientation="h", marker_color=colour, hovertemplate="%{y}<br>normalised %{x:.4f}<extra></extra>")
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="normalised effect (0 base run, 1 full restoration)")
    return layout(fig, f"Path patching from {r.sender} ({r.direction})", 160 + 26 * len(names))
