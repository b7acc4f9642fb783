"""Figures of the compare view: prompt B minus prompt A, in attention and in the logit lens."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch

from workbench.compare import LensDiff, PatternDiff
from workbench.figures.common import (
    SEQUENTIAL,
    Scale,
    diverging,
    layer_head_figure,
    point_position_figure,
    probability,
    query_key_figure,
)
from workbench.tokens import unique_labels


def pattern_diff_heatmap(d: PatternDiff, layer: int, head: int) -> go.Figure:
    """One head: prompt B's pattern minus prompt A's, diverging colours centred on zero (weights differ by at most 1)."""
    return query_key_figure(
        d.diff[layer, head],  # (query, key)
        unique_labels(d.alignment.labels()),
        diverging(d.diff[layer, head], at_least=1.0),
        "query %{y}<br>key %{x}<br>A %{customdata[0]:.4f} → B %{customdata[1]:.4f} (Δ %{z:+.4f})",
        "B − A",
        f"Layer {layer}, head {head}: attention of B minus attention of A",
        customdata=torch.stack([d.a[layer, head], d.b[layer, head]], -1).tolist(),  # (query, key, 2)
    )


def head_change_heatmap(d: PatternDiff) -> go.Figure:
    """How much each head's attention changes: mean total variation, 0 (same) to 1 (disjoint)."""
    return layer_head_figure(
        d.change, "mean total variation", probability(), "How much each head's attention changes (0 = same, 1 = disjoint)"
    )


def lens_diff_heatmap(d: LensDiff) -> go.Figure:
    """Jensen-Shannon divergence between the two prompts' lens readings; text where the top-1 token changes."""
    n, points = d.alignment.n, range(len(d.points))
    text = [[(f"{d.top_a[i][j]}→{d.top_b[i][j]}" if d.top_a[i][j] != d.top_b[i][j] else "") for j in range(n)] for i in points]
    hover = [
        [f"A: {d.top_a[i][j]} {float(d.prob_a[i, j]):.3f}<br>B: {d.top_b[i][j]} {float(d.prob_b[i, j]):.3f}" for j in range(n)]
        for i in points
    ]
    return point_position_figure(
        d.js,  # (point, position)
        Scale(SEQUENTIAL, 0, math.log(2)),  # Jensen-Shannon in nats lies in 0..ln 2
        "%{y} · %{x}<br>%{customdata}<br>JS divergence %{z:.4f}",
        unique_labels(d.alignment.labels()),
        d.points,
        "Logit lens, A vs B: divergence at every layer and position (top-1 change written in)",
        text_size=9,
        text=text,
        customdata=hover,
        colorbar="JS (nats)",
    )
