"""Figures of the Features view: a prompt's features, one feature's dashboard, an SAE's quality
(a feature's intervention is the Intervene view's: figures/intervene.py)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.dashboards import Dashboard, Example
from workbench.features import PromptFeatures
from workbench.figures.common import diverging, heatmap, layout, magnitude, token_ticks
from workbench.tokens import unique_labels


def token_feature_heatmap(pf: PromptFeatures, hook: str, features: list[int], values: torch.Tensor) -> go.Figure:
    """Token x feature: each position's strongest features' activations, positions down, features across."""
    labels = unique_labels(pf.labels)
    fig = go.Figure(
        heatmap(
            values,  # (pos, features)
            magnitude(values),
            "position %{y}<br>feature %{x}<br>activation %{z:.3f}",
            [f"f{f}" for f in features],
            labels,
            colorbar="activation",
        )
    )
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    fig.update_xaxes(type="category", tickangle=-60, tickfont=dict(size=9))
    return layout(fig, f"Strongest features at each position, {hook}", min(1000, 200 + 16 * len(labels)))


def strongest_by_layer(pf: PromptFeatures) -> go.Figure:
    """SAE (one per layer and site) x position: the strongest feature's activation, its number written in the cell."""
    hooks, values, feats = pf.top_per_position()  # (hook, pos) each
    text = [[f"f{f}" if v > 0 else "" for f, v in zip(fr, vr, strict=True)] for fr, vr in zip(feats.tolist(), values.tolist(), strict=True)]
    fig = go.Figure(
        heatmap(
            values,
            magnitude(values),
            "%{y}<br>position %{x}<br>%{text}: %{z:.3f}",
            unique_labels(pf.labels),
            hooks,
            text=text,
            textfont=dict(size=9),
            colorbar="activation",
        )
    )
    token_ticks(fig)
    return layout(
        fig,
        "The strongest feature at each position, every SAE (residual stream from embedding to output, top to bottom)",
        200 + 40 * len(hooks),
    )


def feature_across_prompt(pf: PromptFeatures, hook: str, feature: int) -> go.Figure:
    """One feature's activation at every position of the prompt."""
    a = pf.acts[hook][:, feature]  # (pos,)
    labels = unique_labels(pf.labels)
    fig = go.Figure(
        go.Bar(x=labels, y=a.tolist(), marker=magnitude(a).for_marker(a.tolist()), hovertemplate="%{x}<br>%{y:.4f}<extra></extra>")
    )
    fig.update_yaxes(title="activation")
    token_ticks(fig)
    return layout(fig, f"Feature {feature} across the prompt ({hook})", 340)


def _examples_grid(examples: list[Example], peak: float) -> tuple[list, list, list]:
    width = max((len(e.labels) for e in examples), default=1)
    z, text, hover = [], [], []
    for e in examples:
        pad = width - len(e.labels)
        z.append([None] * pad + e.acts)  # right-aligned on the example's token's column
        text.append([""] * pad + [("▶" if i == e.focus else "") + lab for i, lab in enumerate(e.labels)])
        hover.append([""] * pad + [f"{lab!r}: {v:.3f}" for lab, v in zip(e.labels, e.acts, strict=True)])
    return z, text, hover


def contexts(examples: list[Example], peak: float, title: str) -> go.Figure:
    """Contexts, one per row, tokens shaded by the feature's activation; ▶ marks the example's token."""
    if not examples:
        return layout(go.Figure(), title + " (none)", 120)
    z, text, hover = _examples_grid(examples, peak)
    # shift so that every example's focus token lands in one column
    focus_col = max(len(e.labels) - 1 - e.focus for e in examples)
    z2, t2, h2 = [], [], []
    for e, zr, tr, hr in zip(examples, z, text, hover, strict=True):
        shift = focus_col - (len(e.labels) - 1 - e.focus)
        z2.append(zr[shift:] + [None] * shift)
        t2.append(tr[shift:] + [""] * shift)
        h2.append(hr[shift:] + [""] * shift)
    rows = [f"{i + 1}. {e.activation:.3f}" for i, e in enumerate(examples)]
    fig = go.Figure(
        go.Heatmap(
            z=z2,
            text=t2,
            texttemplate="%{text}",
            textfont=dict(size=10),
            customdata=h2,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale="Oranges",
            zmin=0,
            zmax=max(peak, 1e-9),
            y=rows,
            hoverongaps=False,
            colorbar=dict(title="activation"),
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(showticklabels=False)
    return layout(fig, title, 90 + 26 * len(examples))


def histogram(d: Dashboard) -> go.Figure:
    """The non-zero activations' histogram over (0, max], with the density in the title."""
    edges = d.hist_edges
    centres = ((edges[1:] + edges[:-1]) / 2).tolist()
    fig = go.Figure(go.Bar(x=centres, y=d.hist.tolist(), width=float(edges[1] - edges[0]) if len(edges) > 1 else None,
                           hovertemplate="activation ≈ %{x:.3f}<br>%{y} tokens<extra></extra>", marker_color="#ff7f0e"))  # fmt: skip
    fig.update_xaxes(title="activation")
    fig.update_yaxes(title="tokens")
    return layout(fig, f"Activations where active: density {d.density:.3%} of {d.tokens:,} tokens", 300)


def logit_effect(d: Dashboard) -> go.Figure:
    """The tokens the feature's decoder direction promotes (right) and suppresses (left) through the unembedding."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("suppressed", "promoted"), horizontal_spacing=0.25)
    values = torch.tensor([v for _, v in d.promoted + d.suppressed])
    scale = diverging(values)
    for col, pairs in ((1, d.suppressed), (2, d.promoted)):
        labels, vals = [repr(t) for t, _ in pairs][::-1], [v for _, v in pairs][::-1]
        fig.add_trace(go.Bar(x=vals, y=labels, orientation="h", marker=scale.for_marker(vals), showlegend=False,
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=col)  # fmt: skip
    return layout(fig, "Logit effect: W_dec[f] @ W_U", 60 + 24 * max(len(d.promoted), len(d.suppressed)))


def nearest(d: Dashboard) -> go.Figure:
    """The features with the most similar decoder directions (cosine)."""
    names = [f"f{f}" for f, _ in d.nearest][::-1]
    cos = [c for _, c in d.nearest][::-1]
    fig = go.Figure(go.Bar(x=cos, y=names, orientation="h", marker=diverging(torch.tensor(cos), 1.0).for_marker(cos),
                           hovertemplate="%{y}: cosine %{x:.3f}<extra></extra>"))  # fmt: skip
    fig.update_yaxes(type="category")
    fig.update_xaxes(title="decoder cosine", range=[min(0.0, min(cos, default=0)), 1])
    return layout(fig, f"Nearest features to f{d.feature}", 60 + 24 * len(cos))


def quality_curve(card: dict) -> go.Figure:
    """L0 vs loss recovered over k, one line per hook, from an SAE card (train/sae.py); the trained-at-k search as markers."""
    fig = go.Figure()
    for hook, rec in card.get("hooks", {}).items():
        pts = rec["k_curve"]
        fig.add_trace(go.Scatter(x=[p["l0"] for p in pts], y=[p["loss_recovered"] for p in pts], mode="lines+markers", name=hook,
                                 text=[f"k={p['k']}" for p in pts], hovertemplate="%{text}: L0 %{x:.1f}, loss recovered %{y:.3f}<extra></extra>"))  # fmt: skip
    if "search" in card:
        pts = card["search"]["runs"]
        fig.add_trace(go.Scatter(x=[p["l0"] for p in pts], y=[p["loss_recovered"] for p in pts], mode="markers", name="trained at k (search)",
                                 marker=dict(symbol="x", size=10), text=[f"width {p['width']}, k={p['k']}" for p in pts],
                                 hovertemplate="%{text}: L0 %{x:.1f}, loss recovered %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.add_hline(y=0.9, line_dash="dot", annotation_text="target 0.9")
    fig.add_vline(x=32, line_dash="dot", annotation_text="L0 32")
    fig.update_xaxes(title="L0 (active features per token)", type="log")
    fig.update_yaxes(title="loss recovered")
    return layout(fig, "L0 vs loss recovered on held-out text", 380)
