"""Figures of the patching view: a sweep's normalised effect for every cell of a site."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.figures.common import diverging, head_labels, heatmap, layer_head_labels, layer_labels, layout, token_ticks
from workbench.patch_sites import SITES
from workbench.patching import DatasetPatchResult, PatchResult
from workbench.tokens import unique_labels


def patching_heatmap(r: PatchResult | DatasetPatchResult, title: str | None = None) -> go.Figure:
    """A sweep's normalised effect (0 = corrupted, 1 = clean), diverging colours centred on zero (at least ±1)."""
    values = r.values if isinstance(r, PatchResult) else r.mean
    if len(r.axes) == 3:  # layer x head x position: one row per (layer, head)
        layers, heads, pos = values.shape
        z, y, x = values.reshape(layers * heads, pos), layer_head_labels(layers, heads), unique_labels(r.labels)
    elif r.axes[1] == "position":
        z, y, x = values, layer_labels(values.shape[0]), unique_labels(r.labels)
    else:
        z, y, x = values, layer_labels(values.shape[0]), head_labels(values.shape[1])
    hover = "%{y} · %{x}<br>normalised effect %{z:.4f}"
    spread = {}
    if isinstance(r, DatasetPatchResult):
        spread = dict(customdata=r.std.reshape(z.shape).tolist())
        hover += "<br>spread (std over pairs) %{customdata:.3f}"
    fig = go.Figure(heatmap(z, diverging(z, at_least=1.0), hover, x, y, colorbar="normalised", **spread))
    fig.update_yaxes(autorange="reversed")
    token_ticks(fig)
    estimate = "" if getattr(r, "method", "exact") == "exact" else f" ({r.method} estimate)"
    base = title or f"{r.direction.capitalize()} {r.site}: {SITES[r.site].description}{estimate}"
    if isinstance(r, DatasetPatchResult):
        base += f" — mean over {r.n_pairs} pairs"
    return layout(fig, base, 160 + 24 * len(y))
