"""What every figure shares: the colour scales, the heatmap trace, labels and layout, written once.

Colour conventions across the workbench: probabilities and other 0..1 shares on a sequential scale
(`probability()`), signed effects on a diverging scale centred on zero whose range is symmetric
(`diverging(values)`), so that white always means "no effect" and the two signs look equally strong.
Cells a query cannot see (the causal mask) are NaN, drawn in the grey `MASKED` background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

SEQUENTIAL = "Blues"
DIVERGING = "RdBu"
MASKED = "#e6e6e6"  # the causal mask: cells a query cannot see
FONT = dict(family="DejaVu Sans Mono, Menlo, Consolas, monospace")


@dataclass(frozen=True)
class Scale:
    """A colour scale and the range the values are read against (None: plotly picks from the data)."""

    colorscale: str
    lo: float | None
    hi: float | None
    mid: float | None = None  # diverging scales: the value drawn white

    def for_heatmap(self) -> dict:
        return dict(colorscale=self.colorscale, zmin=self.lo, zmax=self.hi, zmid=self.mid)

    def for_marker(self, values: Sequence[float]) -> dict:
        """Bar colours on the same scale: plotly names the range c* for markers where heatmaps say z*."""
        return dict(color=list(values), colorscale=self.colorscale, cmin=self.lo, cmax=self.hi, cmid=self.mid)


def bound(values: torch.Tensor) -> float:
    """The largest finite |value| (1.0 when there is none, or it is zero): the half-range of a diverging scale."""
    finite = values[torch.isfinite(values)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    return largest if largest > 0 else 1.0


def probability(colorscale: str = SEQUENTIAL) -> Scale:
    """0 to 1: probabilities, attention weights, shares of attention."""
    return Scale(colorscale, 0, 1)


def diverging(values: torch.Tensor, at_least: float = 0.0) -> Scale:
    """Centred on zero, symmetric: ±max(|values|, at_least)."""
    half = max(at_least, bound(values))
    return Scale(DIVERGING, -half, half, 0)


def magnitude(values: torch.Tensor) -> Scale:
    """0 to the largest value, sequential: scores that have no sign (saliency)."""
    return Scale(SEQUENTIAL, 0, bound(values))


def layer_labels(layers: int) -> list[str]:
    return [f"L{layer}" for layer in range(layers)]


def head_labels(heads: int) -> list[str]:
    return [f"H{head}" for head in range(heads)]


def layer_head_labels(layers: int, heads: int) -> list[str]:
    """One label per (layer, head), layer-major: the rows of a layer x head grid flattened."""
    return [f"L{layer} H{head}" for layer in range(layers) for head in range(heads)]


def heatmap(
    z: torch.Tensor | list,
    scale: Scale,
    hover: str,
    x: Sequence | None = None,
    y: Sequence | None = None,
    *,
    text: list | None = None,
    colorbar: str | dict | None = None,
    **extra,
) -> go.Heatmap:
    """One heatmap trace: `z` (rows y, columns x) read against `scale`, `hover` the body of its hover template.

    `text` is written into the cells; NaN cells stay blank and have no hover (the causal mask).
    """
    return go.Heatmap(
        z=z.tolist() if isinstance(z, torch.Tensor) else z,
        x=list(x) if x is not None else None,
        y=list(y) if y is not None else None,
        text=text,
        texttemplate="%{text}" if text is not None else None,
        hoverongaps=False,
        hovertemplate=hover + "<extra></extra>",
        colorbar=dict(title=colorbar) if isinstance(colorbar, str) else colorbar,
        **scale.for_heatmap(),
        **extra,
    )


def layer_head(values: torch.Tensor, what: str, scale: Scale, **extra) -> go.Heatmap:
    """A layer x head heatmap with each cell's value written in: the shape of every per-head score."""
    layers, heads = values.shape
    return heatmap(
        values,
        scale,
        f"{what}<br>%{{y}} %{{x}}<br>%{{z:.4f}}",
        head_labels(heads),
        layer_labels(layers),
        text=[[f"{v:.2f}" for v in row] for row in values.tolist()],
        **extra,
    )


def layer_head_figure(values: torch.Tensor, what: str, scale: Scale, title: str) -> go.Figure:
    """A figure of one layer x head heatmap, layer 0 on top."""
    fig = go.Figure(layer_head(values, what, scale))
    fig.update_yaxes(autorange="reversed")
    return layout(fig, title, 160 + 45 * values.shape[0])


def future_masked(grid: torch.Tensor) -> torch.Tensor:
    """A (query, key) grid with the cells a query cannot see set to NaN (drawn as the grey background)."""
    n = grid.shape[-1]
    return grid.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("nan"))


def query_key_figure(grid: torch.Tensor, labels: list[str], scale: Scale, hover: str, colorbar: str, title: str, **extra) -> go.Figure:
    """A (query, key) grid over the prompt's tokens, queries down, keys across, the masked future grey."""
    fig = go.Figure(heatmap(future_masked(grid), scale, hover, labels, labels, colorbar=colorbar, **extra))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    token_ticks(fig)
    fig.update_layout(plot_bgcolor=MASKED)
    return layout(fig, title, min(900, 260 + 14 * grid.shape[0]))


def point_position_figure(
    z: torch.Tensor, scale: Scale, hover: str, positions: list[str], points: list[str], title: str, text_size: int = 10, **extra
) -> go.Figure:
    """A lens-shaped grid: one row per point of the residual stream (bottom to top as it flows), one column per position."""
    fig = go.Figure(heatmap(z, scale, hover, positions, points, textfont=dict(size=text_size), **extra))
    token_ticks(fig)
    return layout(fig, title, 180 + 34 * len(points))


def token_ticks(fig: go.Figure, size: int = 10, **where) -> go.Figure:
    """Token labels along x, slanted so that long prompts stay readable."""
    return fig.update_xaxes(tickangle=-60, tickfont=dict(size=size), **where)


def layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    """The look every figure shares: title, height, thin margins, monospace font (tokens line up), white template."""
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50, b=10), font=FONT, template="plotly_white")
    return fig
