"""Figures of the attention view: one head, every head, one token's focus, head types, one head's arithmetic."""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.attention import HeadAnatomy, HeadTypes, Patterns, TokenFocus, downsample
from workbench.figures.common import (
    MASKED,
    Scale,
    diverging,
    heatmap,
    layer_head,
    layer_head_labels,
    layout,
    probability,
    query_key_figure,
    token_ticks,
)
from workbench.tokens import unique_labels


def pattern_heatmap(p: Patterns, layer: int, head: int, title: str | None = None) -> go.Figure:
    """One head's pattern, query rows x key columns; the masked future is grey, exact weights on hover."""
    return query_key_figure(
        p.head(layer, head),  # (query, key)
        unique_labels(p.labels),
        probability(),
        "query %{y}<br>key %{x}<br>weight %{z:.4f}",
        "weight",
        title or f"Layer {layer}, head {head}: attention pattern",
    )


def pattern_grid(p: Patterns, cell: int = 48) -> tuple[go.Figure, int]:
    """Every head as a small pattern (layers x heads); long prompts max-pooled to `cell` tokens a side.

    Returns the figure and the pooling factor (1: every token shown).
    """
    layers, heads, _ = p.shape
    grid, factor = downsample(p.pattern, cell)  # (layer, head, q', k')
    names = layer_head_labels(layers, heads)
    fig = make_subplots(rows=layers, cols=heads, subplot_titles=names, horizontal_spacing=0.02, vertical_spacing=0.04)
    if factor == 1:
        hover = "%{customdata}<br>query %{y}, key %{x}<br>weight %{z:.3f}"
    else:
        hover = f"%{{customdata}}<br>query block %{{y}}, key block %{{x}} (×{factor} tokens)<br>max weight %{{z:.3f}}"
    for layer in range(layers):
        for head in range(heads):
            name = names[layer * heads + head]
            customdata = [[name] * grid.shape[-1]] * grid.shape[-2]
            fig.add_trace(
                heatmap(grid[layer, head], probability(), hover, showscale=False, customdata=customdata), row=layer + 1, col=head + 1
            )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    note = "" if factor == 1 else f" (each cell the max over {factor}×{factor} tokens)"
    return layout(fig, f"Every head: layers down, heads across{note}", 120 + 170 * layers), factor


def token_focus_figure(f: TokenFocus, labels: list[str]) -> go.Figure:
    """Two heatmaps, one row per (layer, head): where the token attends, and which tokens attend to it."""
    layers, heads, pos = f.attends_to.shape
    rows = layer_head_labels(layers, heads)
    cols = unique_labels(labels)
    to = f.attends_to.reshape(layers * heads, pos).clone()  # (layer * head, key)
    by = f.attended_by.reshape(layers * heads, pos).clone()  # (layer * head, query)
    to[:, f.position + 1 :] = float("nan")  # keys after the token: it cannot see them
    by[:, : f.position] = float("nan")  # queries before the token: they cannot see it
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[f"where {f.label!r} (position {f.position}) attends", f"which tokens attend to {f.label!r}"],
        horizontal_spacing=0.08,
    )
    for col, z, what in ((1, to, "key"), (2, by, "query")):
        trace = heatmap(z, probability(), f"%{{y}}<br>{what} %{{x}}<br>weight %{{z:.4f}}", cols, rows, showscale=col == 2)
        fig.add_trace(trace, row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    token_ticks(fig, size=9)
    fig.update_layout(plot_bgcolor=MASKED)
    return layout(fig, f"Token focus: {f.label!r} at position {f.position}", 200 + 18 * len(rows))


def head_types_heatmap(h: HeadTypes) -> go.Figure:
    """One layer x head heatmap per head type (shares of attention 0..1; entropy in nats, low = focused)."""
    names = list(h.scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.03)
    for i, name in enumerate(names):
        scale = Scale("Greens_r", 0, None) if name == "entropy" else probability()
        fig.add_trace(layer_head(h.scores[name], name, scale, showscale=False), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    layers = next(iter(h.scores.values())).shape[0]
    return layout(fig, f"Head types on {h.source} (entropy in nats: low = focused)", 160 + 40 * layers)


def anatomy_figure(a: HeadAnatomy) -> go.Figure:
    """softmax(q·Kᵀ/√d)·V step by step, for one head and one query, with the prompt's numbers."""
    keys = unique_labels(a.labels)
    visible = torch.arange(len(keys)) <= a.query  # (key,) the keys the query can see
    masked_grey = [("#4a78b5" if v else MASKED) for v in visible]
    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        row_heights=[0.2, 0.2, 0.2, 0.4],
        subplot_titles=[
            "1. scores q·k for every key",
            f"2. scaled by √d_head = {a.scale:.3f}; keys after the query masked (−∞, grey)",
            "3. softmax: the attention weights (sum to 1)",
            "4. weighted values: weight × v for each key (summed down the keys into z)",
        ],
    )
    bars = (
        (a.scores.tolist(), masked_grey, "q·k"),
        (torch.where(visible, a.scaled, 0.0).tolist(), masked_grey, "q·k/√d"),
        (a.weights.tolist(), "#2c7c3f", "weight"),
    )
    for row, (y, colour, what) in enumerate(bars, start=1):
        fig.add_trace(
            go.Bar(x=keys, y=y, marker_color=colour, hovertemplate=f"key %{{x}}<br>{what} %{{y:.4f}}<extra></extra>"), row=row, col=1
        )
    wv = a.weighted_values.T  # (d_head, key)
    values = heatmap(
        wv,
        diverging(wv),
        "key %{x}<br>%{y}: %{z:.4f}",
        keys,
        [f"d{i}" for i in range(wv.shape[0])],
        colorbar=dict(title="w·v", len=0.4, y=0.2),
    )
    fig.add_trace(values, row=4, col=1)
    fig.update_layout(showlegend=False)
    token_ticks(fig, size=9, row=4, col=1)
    return layout(fig, f"Layer {a.layer}, head {a.head}, query {a.query} ({a.labels[a.query]!r}): softmax(q·Kᵀ/√d)·V", 900)
