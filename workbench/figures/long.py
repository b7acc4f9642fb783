"""Figures of long prompts: attention patterns as images, light enough for the browser.

A heatmap trace sends every cell as a JSON number and draws it as SVG/canvas cells: 1,024² cells
of one head are ~20 MB of JSON, and the 144 heads of a 12 x 12 model are out of reach. Here a
pattern is sent as one PNG (`go.Image` with a data URI): one byte per cell through a 256-colour
palette, compressed, so the whole layers x heads grid at full resolution stays a few MB. Colour is
the weight on the same 0..1 scale as every pattern heatmap, the causal mask grey. An image has no values to hover over, so each
figure keeps the heatmap (with hover values) where the cell count allows (`HOVER_CELLS`).
Axis labels are thinned to at most `MAX_TICKS` per axis.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.colors import sample_colorscale

from workbench.attention import Patterns, downsample
from workbench.compare import PatternDiff
from workbench.figures.common import DIVERGING, FONT, MASKED, SEQUENTIAL
from workbench.tokens import unique_labels

HOVER_CELLS = 65_536  # up to this many cells a figure is a heatmap with hover values (256 x 256 for one head)
MAX_BYTES = 5 * 2**20  # a figure's JSON stays under this: larger images are max-pooled 2 x 2 until they fit
MAX_TICKS = 40  # token labels per axis
LEVELS = 64  # colours for weights 0..1 (steps of 1/63): few enough that a long prompt's small weights compress
MASK_INDEX, GAP_INDEX = LEVELS, LEVELS + 1  # the causal mask's grey, the white gap between heads
GAP = 4  # pixels between heads in the grid


def _palette(scale: str = SEQUENTIAL) -> list[int]:
    """The 256-entry RGB palette: LEVELS colours of `scale`, then the mask's grey and the gap's white."""
    colours = sample_colorscale(scale, [i / (LEVELS - 1) for i in range(LEVELS)], colortype="tuple")
    rgb = [round(255 * c) for colour in colours for c in colour]
    grey = [int(MASKED[k : k + 2], 16) for k in (1, 3, 5)]
    return rgb + grey + [255, 255, 255] + [0, 0, 0] * (256 - LEVELS - 2)


PALETTE = _palette()
DIVERGING_PALETTE = _palette(DIVERGING)  # differences: -1 red, 0 white, +1 blue, as the diverging heatmaps


def quantize(pattern: torch.Tensor) -> np.ndarray:
    """(..., query, key) weights -> uint8 palette indices: weight x (LEVELS-1), rounded; the future masked."""
    n = pattern.shape[-1]
    idx = pattern.float().clamp_(0, 1).mul_(LEVELS - 1).round_().to(torch.uint8)  # (..., q, k)
    idx.masked_fill_(_future(n), MASK_INDEX)
    return idx.numpy()


def _future(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).triu(1)  # (query, key) keys after the query


def png_uri(indices: np.ndarray, palette: list[int] = PALETTE) -> str:
    """A data URI of a palette PNG of a 2-D uint8 array (fast compression: the figure is made per request)."""
    image = Image.fromarray(indices, mode="L")
    image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thinned(labels: list[str], centres: list[float] | None = None, most: int = MAX_TICKS) -> dict:
    """Axis tick values and texts for at most `most` of `labels` (every k-th), at `centres` (default 0..n-1)."""
    step = max(1, math.ceil(len(labels) / most))
    centres = list(range(len(labels))) if centres is None else centres
    keep = list(range(0, len(labels), step))
    return dict(tickvals=[centres[i] for i in keep], ticktext=[f"{i} {labels[i]}" for i in keep])


def _image_figure(indices: np.ndarray, title: str, height: int, hover: str, palette: list[int] = PALETTE) -> go.Figure:
    fig = go.Figure(go.Image(source=png_uri(indices, palette), hovertemplate=hover + "<extra></extra>"))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50, b=10), font=FONT, template="plotly_white")
    return fig


def figure_bytes(fig: go.Figure) -> int:
    """Size of the figure's JSON, what the browser receives."""
    return len(fig.to_json())


def grid_image(p: Patterns, max_bytes: int = MAX_BYTES) -> tuple[go.Figure, int]:
    """Every head's whole pattern in one image (layers down, heads across), and the pooling factor (1: every token).

    Pooled 2 x 2 (max, so that sharp heads stay visible) only if the image would exceed `max_bytes`.
    """
    layers, heads, n = p.shape
    factor = 1
    while True:
        grid = p.pattern if factor == 1 else downsample(p.pattern.float(), math.ceil(n / factor))[0]  # (layer, head, c, c)
        c = grid.shape[-1]
        mosaic = np.full((layers * (c + GAP) - GAP, heads * (c + GAP) - GAP), GAP_INDEX, dtype=np.uint8)
        for layer in range(layers):  # one layer's float32 copy alive at a time
            cells = quantize(grid[layer])  # (head, c, c)
            for head in range(heads):
                mosaic[layer * (c + GAP) : layer * (c + GAP) + c, head * (c + GAP) : head * (c + GAP) + c] = cells[head]
        note = "every token" if factor == 1 else f"each pixel the max over {factor}×{factor} tokens"
        fig = _image_figure(
            mosaic, f"Every head: layers down, heads across ({note}; colour: weight)", 120 + 170 * layers, "pixel x %{x}, y %{y}"
        )
        centres = [(c + GAP) * k + c / 2 for k in range(max(layers, heads))]
        fig.update_xaxes(tickvals=centres[:heads], ticktext=[f"H{head}" for head in range(heads)], side="top", showgrid=False)
        fig.update_yaxes(tickvals=centres[:layers], ticktext=[f"L{layer}" for layer in range(layers)], showgrid=False)
        if figure_bytes(fig) <= max_bytes or c <= 16:
            return fig, factor
        factor *= 2


def head_image(p: Patterns, layer: int, head: int) -> go.Figure:
    """One head's (query, key) pattern as an image with thinned token labels, every token shown."""
    grid = p.head(layer, head)  # (query, key)
    fig = _image_figure(quantize(grid), f"Layer {layer}, head {head}: attention pattern", 900, "query %{y}, key %{x}")
    return _token_axes(fig, p.labels)


def diff_image(d: PatternDiff, layer: int, head: int) -> go.Figure:
    """One head's pattern difference (B − A, in −1..1) as an image on the diverging scale, every token shown."""
    grid = (d.diff[layer, head].float() + 1) / 2  # (query, key), 0..1 with no change at 0.5
    title = f"Layer {layer}, head {head}: pattern of B minus pattern of A (red: A attends more, blue: B)"
    fig = _image_figure(quantize(grid), title, 900, "query %{y}, key %{x}", DIVERGING_PALETTE)
    return _token_axes(fig, d.alignment.labels())


def _token_axes(fig: go.Figure, labels: list[str]) -> go.Figure:
    """Thinned token labels on both axes of a (query, key) image."""
    n = len(labels)
    labels = unique_labels(labels)
    fig.update_xaxes(**thinned(labels), tickangle=-60, tickfont=dict(size=9), showgrid=False)
    fig.update_yaxes(**thinned(labels), tickfont=dict(size=9), showgrid=False)
    fig.update_layout(xaxis_range=[-0.5, n - 0.5], yaxis_range=[n - 0.5, -0.5])
    return fig
