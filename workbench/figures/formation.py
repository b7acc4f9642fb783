"""Figures of the training view (formation.py): head scores over training, the in-context loss, the loss curve."""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.common import layout
from workbench.formation import HEAD_TYPES, Formation

PHASE = "rgba(255, 170, 0, 0.18)"  # the band marking the induction phase change, the same in every figure


def _mark_phase_change(fig: go.Figure, f: Formation, **where) -> None:
    if f.phase_change is not None:
        lo, hi = f.phase_change
        fig.add_vrect(x0=lo, x1=hi, fillcolor=PHASE, line_width=0, layer="below", **where)


def head_scores_over_training(f: Formation) -> go.Figure:
    """One panel per head type: a line per head, its score at each checkpoint (x: training step)."""
    fig = make_subplots(rows=1, cols=len(HEAD_TYPES), subplot_titles=[t.capitalize() for t in HEAD_TYPES], shared_yaxes=True)
    layers, heads = f.scores[HEAD_TYPES[0]].shape[1:]
    steps = list(f.steps)
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3  # 20 colours; more heads repeat them
    for col, head_type in enumerate(HEAD_TYPES, start=1):
        for layer in range(layers):
            for head in range(heads):
                colour = palette[(layer * heads + head) % len(palette)]  # one head, one colour, in every panel
                fig.add_trace(
                    go.Scatter(
                        x=steps,
                        y=f.scores[head_type][:, layer, head].tolist(),
                        mode="lines+markers",
                        name=f"L{layer} H{head}",
                        legendgroup=f"L{layer} H{head}",
                        showlegend=col == 1,
                        line=dict(width=1.5, color=colour),
                        marker=dict(size=4, color=colour),
                        hovertemplate=f"L{layer} H{head}<br>step %{{x}}<br>{head_type} %{{y:.3f}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
        _mark_phase_change(fig, f, row=1, col=col)
    fig.update_xaxes(title="training step", type="log")
    fig.update_yaxes(range=[0, 1.02], title="head score", row=1, col=1)
    title = f"{f.model}: head scores at each training checkpoint"
    if f.phase_change is not None:
        title += f" (induction phase change between steps {f.phase_change[0]} and {f.phase_change[1]}, shaded)"
    return layout(fig, title, 420)


def in_context_loss(f: Formation) -> go.Figure:
    """In-context loss (late minus early positions) and the best induction score, by checkpoint."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = list(f.steps)
    fig.add_trace(
        go.Scatter(x=steps, y=f.in_context_loss.tolist(), name="in-context loss (late − early), nats", mode="lines+markers"),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(x=steps, y=f.best("induction").tolist(), name="best induction head", mode="lines+markers", line=dict(dash="dot")),
        secondary_y=True,
    )
    fig.add_trace(
        go.Scatter(x=steps, y=f.best_layer("induction").tolist(), name="best layer's heads together", mode="lines", line=dict(dash="dash")),
        secondary_y=True,
    )
    _mark_phase_change(fig, f)
    fig.update_xaxes(title="training step", type="log")
    fig.update_yaxes(title="nats", secondary_y=False)
    fig.update_yaxes(title="induction score", rangemode="tozero", secondary_y=True)
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return layout(fig, f"{f.model}: in-context loss ({f.settings.get('text', '')})", 400)


def loss_curve(f: Formation) -> go.Figure:
    """Every loss the training log recorded, by step."""
    fig = go.Figure()
    for name, points in f.loss_curve.items():
        if not name.endswith(("loss", "bpc")):
            continue
        fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], name=name.replace("_", " "), mode="lines"))
    _mark_phase_change(fig, f)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="nats per token (bits per character for bpc)")
    return layout(fig, f"{f.model}: training log", 380)
