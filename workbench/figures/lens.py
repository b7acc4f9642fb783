"""Figures of the lens view: the top-1 token at every point and position, targets and statistics by point."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.common import layout, point_position_figure, probability
from workbench.lens import LensResult
from workbench.long import LONG_TOKENS
from workbench.tokens import unique_labels

DASH = {"logit lens": "solid", "tuned lens": "dot"}  # one line style per lens, the same in every figure


def lens_heatmap(r: LensResult) -> go.Figure:
    """Points (rows, bottom to top as the stream flows) x positions: the top-1 token and its probability."""
    cols = unique_labels(r.labels)
    k = r.top_probs.shape[-1] if len(cols) <= LONG_TOKENS else 1  # long prompts: the top-1 only, to keep the figure light
    hover = [
        [
            "<br>".join(f"{r.top_labels[i][j][t]} {float(r.top_probs[i, j, t]):.3f}" for t in range(k))
            + f"<br>entropy {float(r.entropy[i, j]):.2f} nats, KL to final {float(r.kl_to_final[i, j]):.2f}"
            for j in range(len(cols))
        ]
        for i in range(len(r.points))
    ]
    top1 = [[r.top_labels[i][j][0] for j in range(len(cols))] for i in range(len(r.points))]
    fig = point_position_figure(
        r.top_probs[..., 0],  # (point, position)
        probability(),
        "%{y} · %{x}<br>%{customdata}",
        cols,
        r.points,
        f"{r.kind.capitalize()}: the top-1 next token read at every layer and position",
        text=top1,
        customdata=hover,
        colorbar="top-1 p",
    )
    fig.update_xaxes(title="position (input token)")
    return fig.update_yaxes(title="residual stream after")


def _lines(fig: go.Figure, r: LensResult, columns: list, name: str) -> None:
    """One line per panel for one lens: `columns` holds each panel's values by point; legend on the first."""
    for col, values in enumerate(columns, start=1):
        line = go.Scatter(
            x=r.points,
            y=values.tolist(),
            name=name,
            legendgroup=name,
            showlegend=col == 1,
            mode="lines+markers",
            line=dict(dash=DASH.get(r.kind, "solid")),
        )
        fig.add_trace(line, row=1, col=col)


def lens_tracked_lines(results: list[LensResult], position: int) -> go.Figure:
    """For each tracked token: probability, rank and logit across the points, at one position (one line per lens)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["probability", "rank (0 = top)", "logit"], horizontal_spacing=0.07)
    for r in results:
        for t, label in enumerate(r.tracked_labels):
            values = [v[:, position, t] for v in (r.tracked_probs, r.tracked_ranks, r.tracked_logits)]  # each (point,)
            _lines(fig, r, values, f"{label} ({r.kind})")
    fig.update_yaxes(type="log", row=1, col=2)
    return layout(fig, f"Tracked tokens at position {position} ({results[0].labels[position]!r})", 380)


def lens_stats_lines(results: list[LensResult], position: int | None = None) -> go.Figure:
    """Entropy and KL to the final distribution by point, for each lens (at a position, or averaged over positions)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["entropy (nats)", "KL(final ‖ lens) (nats)"], horizontal_spacing=0.08)
    for r in results:
        values = [v[:, position] if position is not None else v.mean(1) for v in (r.entropy, r.kl_to_final)]  # each (point,)
        _lines(fig, r, values, r.kind)
    where = f"at position {position}" if position is not None else "averaged over positions"
    return layout(fig, f"When is the answer settled? ({where})", 360)
