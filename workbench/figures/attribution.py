"""Figures of the attribution view: input tokens (captum), and components and heads (direct logit attribution)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.attribution import ComponentAttribution, InputAttribution
from workbench.figures.common import diverging, heatmap, layer_head_figure, layout, magnitude, token_ticks
from workbench.tokens import unique_labels


def _scale(a: InputAttribution, values):
    """Saliency is a gradient's size (no sign): sequential; every other method is signed: diverging."""
    return magnitude(values) if a.method == "saliency" else diverging(values)


def input_attribution_tokens(a: InputAttribution, answer: int = 0) -> go.Figure:
    """The prompt's tokens coloured by their score, plus a bar per token."""
    scores = a.scores[answer]  # (position,) NaN where a position is outside the context
    keep = scores.isfinite()
    labels = [label for label, k in zip(unique_labels(a.labels), keep.tolist(), strict=True) if k]
    values = scores[keep]
    scale = _scale(a, values)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.3, 0.7], vertical_spacing=0.12, subplot_titles=["tokens", "score per token"])
    tokens = heatmap(
        [values.tolist()],
        scale,
        "%{x}<br>score %{z:.4f}",
        labels,
        [""],
        text=[[label.split(": ", 1)[1] for label in labels]],
        colorbar=dict(title="score", len=0.3, y=0.85),
    )
    fig.add_trace(tokens, row=1, col=1)
    bars = go.Bar(
        x=labels, y=values.tolist(), marker=scale.for_marker(values.tolist()), hovertemplate="%{x}<br>score %{y:.4f}<extra></extra>"
    )
    fig.add_trace(bars, row=2, col=1)
    token_ticks(fig)
    fig.update_layout(showlegend=False)
    return layout(fig, f"{a.method.capitalize()} for {a.answer_labels[answer]} ({a.metric_label})", 460)


def input_attribution_matrix(a: InputAttribution) -> go.Figure:
    """Input tokens x answer tokens, for a continuation of several tokens (blank where outside the context)."""
    trace = heatmap(
        a.scores.T,  # (input position, target)
        _scale(a, a.scores),
        "input %{y}<br>answer %{x}<br>score %{z:.4f}",
        unique_labels(a.answer_labels),
        unique_labels(a.labels),
    )
    fig = go.Figure(trace)
    fig.update_yaxes(autorange="reversed", title="input token")
    fig.update_xaxes(title="answer token", side="top")
    return layout(fig, f"{a.method.capitalize()}: every input token for every answer token", 200 + 18 * len(a.labels))


def component_bars(c: ComponentAttribution) -> go.Figure:
    """Direct logit attribution per component, and the residual stream's projection accumulating layer by layer."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["each component's direct contribution", "cumulative: the residual stream so far"],
        horizontal_spacing=0.1,
    )
    values = c.component_values.tolist()
    marker = diverging(c.component_values).for_marker(values)
    fig.add_trace(go.Bar(x=c.components, y=values, marker=marker, hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"), row=1, col=1)
    cumulative = go.Scatter(
        x=c.cumulative_labels, y=c.cumulative.tolist(), mode="lines+markers", hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"
    )
    fig.add_trace(cumulative, row=1, col=2)
    fig.update_layout(showlegend=False)
    return layout(fig, f"Direct logit attribution of {c.metric_label} at position {c.position} (sums to {c.logit:.3f})", 380)


def head_attribution_heatmap(c: ComponentAttribution) -> go.Figure:
    """Every head's direct contribution to the target's logit, diverging around zero."""
    title = f"Every head's direct contribution to {c.metric_label} (everything else: {c.head_remainder:.3f})"
    return layer_head_figure(c.heads, "direct contribution", diverging(c.heads), title)
