"""Figures: plotly only, built from analysis results, never from the model (and never with streamlit).

Colour conventions across the workbench: probabilities on a sequential scale (`SEQUENTIAL`),
signed effects on a diverging scale centred on zero (`DIVERGING`).
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.attention import HeadAnatomy, HeadTypes, Patterns, TokenFocus, downsample
from workbench.attribution import ComponentAttribution, InputAttribution
from workbench.compare import LensDiff, PatternDiff
from workbench.generate import Generation
from workbench.lens import LensResult
from workbench.patching import SITES, DatasetPatchResult, PatchResult
from workbench.runs import TopK
from workbench.tokens import unique_labels

SEQUENTIAL = "Blues"
DIVERGING = "RdBu"
FONT = dict(family="DejaVu Sans Mono, Menlo, Consolas, monospace")


def _future_masked(grid: torch.Tensor) -> torch.Tensor:
    """A (query, key) grid with the cells a query cannot see set to NaN (drawn as the grey background)."""
    n = grid.shape[-1]
    return grid.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("nan"))


def _layer_head(values: torch.Tensor, what: str, **colours) -> go.Heatmap:
    """A layers x heads heatmap with each cell's value written in: the shape of every per-head score."""
    layers, heads = values.shape
    return go.Heatmap(
        z=values.tolist(),
        x=[f"H{h}" for h in range(heads)],
        y=[f"L{layer}" for layer in range(layers)],
        text=[[f"{v:.2f}" for v in row] for row in values.tolist()],
        texttemplate="%{text}",
        hovertemplate=f"{what}<br>%{{y}} %{{x}}<br>%{{z:.4f}}<extra></extra>",
        **colours,
    )


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50, b=10), font=FONT, template="plotly_white")
    return fig


def topk_bar(topk: TopK, title: str | None = None) -> go.Figure:
    """Horizontal bars: the k most likely next tokens, most likely on top."""
    labels = [f"{i + 1}. {label}" for i, label in enumerate(topk.labels)][::-1]
    fig = go.Figure(
        go.Bar(
            x=topk.probs[::-1],
            y=labels,
            orientation="h",
            marker=dict(color=topk.probs[::-1], colorscale=SEQUENTIAL, cmin=0, cmax=1),
            text=[f"{p:.1%}" for p in topk.probs[::-1]],
            textposition="outside",
            customdata=list(zip(topk.ids[::-1], topk.logits[::-1], strict=True)),
            hovertemplate="%{y}<br>probability %{x:.4f}<br>id %{customdata[0]}, logit %{customdata[1]:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="probability", range=[0, min(1.0, max(topk.probs) * 1.25 + 0.02)])
    return _layout(fig, title or f"Next token after position {topk.position}", 80 + 28 * len(topk.ids))


def generation_steps(gen: Generation) -> go.Figure:
    """One row per generated token: its candidates left to right by probability; the chosen one boxed."""
    steps = gen.steps
    k = max(len(s.candidate_ids) for s in steps)
    z, text, hover = [], [], []
    for s in steps:
        probs = s.candidate_probs + [None] * (k - len(s.candidate_probs))
        z.append(probs)
        text.append(
            [("▶ " if cid == s.chosen_id else "") + label for cid, label in zip(s.candidate_ids, s.candidate_labels, strict=True)]
            + [""] * (k - len(s.candidate_ids))
        )
        hover.append(
            [
                f"{label}: model {p:.3f}, drawn with {d:.3f}"
                for label, p, d in zip(s.candidate_labels, s.candidate_probs, s.draw_probs, strict=True)
            ]
            + [""] * (k - len(s.candidate_ids))
        )
    rows = [f"{i + 1}. {s.chosen_label}" for i, s in enumerate(steps)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"#{r + 1}" for r in range(k)],
            y=rows,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="step %{y}<br>%{customdata}<extra></extra>",
            colorscale=SEQUENTIAL,
            zmin=0,
            zmax=1,
            colorbar=dict(title="p"),
        )
    )
    fig.update_yaxes(autorange="reversed", title="step (chosen token)")
    fig.update_xaxes(title="candidate rank (▶ = chosen)", side="top")
    return _layout(fig, "Each step's candidates", 120 + 26 * len(steps))


# ---- attention ----------------------------------------------------------------------------------

MASKED = "#e6e6e6"  # the causal mask: cells a query cannot see


def pattern_heatmap(p: Patterns, layer: int, head: int, title: str | None = None) -> go.Figure:
    """One head's pattern, query rows x key columns; the masked future is grey, exact weights on hover."""
    grid = _future_masked(p.head(layer, head))  # (query, key)
    pos = grid.shape[0]
    labels = unique_labels(p.labels)
    fig = go.Figure(
        go.Heatmap(
            z=grid.tolist(),
            x=labels,
            y=labels,
            colorscale=SEQUENTIAL,
            zmin=0,
            zmax=1,
            hoverongaps=False,
            hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>",
            colorbar=dict(title="weight"),
        )
    )
    fig.update_yaxes(autorange="reversed", title="query (attending)", tickfont=dict(size=10))
    fig.update_xaxes(title="key (attended to)", tickangle=-60, tickfont=dict(size=10))
    fig.update_layout(plot_bgcolor=MASKED)
    side = min(900, 260 + 14 * pos)
    return _layout(fig, title or f"Layer {layer}, head {head}: attention pattern", side)


def pattern_grid(p: Patterns, cell: int = 48) -> tuple[go.Figure, int]:
    """Every head as a small pattern (layers x heads); long prompts max-pooled to `cell` tokens a side.

    Returns the figure and the pooling factor (1: every token shown).
    """
    layers, heads, _ = p.shape
    grid, factor = downsample(p.pattern, cell)  # (layer, head, q', k')
    fig = make_subplots(
        rows=layers,
        cols=heads,
        subplot_titles=[f"L{layer} H{head}" for layer in range(layers) for head in range(heads)],
        horizontal_spacing=0.02,
        vertical_spacing=0.04,
    )
    for layer in range(layers):
        for head in range(heads):
            fig.add_trace(
                go.Heatmap(
                    z=grid[layer, head].tolist(),
                    colorscale=SEQUENTIAL,
                    zmin=0,
                    zmax=1,
                    showscale=False,
                    customdata=[[f"L{layer} H{head}"] * grid.shape[-1]] * grid.shape[-2],
                    hovertemplate="%{customdata}<br>query %{y}, key %{x}<br>weight %{z:.3f}<extra></extra>"
                    if factor == 1
                    else f"%{{customdata}}<br>query block %{{y}}, key block %{{x}} (×{factor} tokens)<br>max weight %{{z:.3f}}<extra></extra>",
                ),
                row=layer + 1,
                col=head + 1,
            )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    note = "" if factor == 1 else f" (each cell the max over {factor}×{factor} tokens)"
    return _layout(fig, f"Every head: layers down, heads across{note}", 120 + 170 * layers), factor


def token_focus_figure(f: TokenFocus, labels: list[str]) -> go.Figure:
    """Two heatmaps, one row per (layer, head): where the token attends, and which tokens attend to it."""
    layers, heads, pos = f.attends_to.shape
    rows = [f"L{layer} H{head}" for layer in range(layers) for head in range(heads)]
    cols = unique_labels(labels)
    to = f.attends_to.reshape(layers * heads, pos).clone()
    by = f.attended_by.reshape(layers * heads, pos).clone()
    to[:, f.position + 1 :] = float("nan")
    by[:, : f.position] = float("nan")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[f"where {f.label!r} (position {f.position}) attends", f"which tokens attend to {f.label!r}"],
        horizontal_spacing=0.08,
    )
    for col, z, what in ((1, to, "key"), (2, by, "query")):
        fig.add_trace(
            go.Heatmap(
                z=z.tolist(),
                x=cols,
                y=rows,
                colorscale=SEQUENTIAL,
                zmin=0,
                zmax=1,
                hoverongaps=False,
                showscale=col == 2,
                hovertemplate=f"%{{y}}<br>{what} %{{x}}<br>weight %{{z:.4f}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    fig.update_layout(plot_bgcolor=MASKED)
    return _layout(fig, f"Token focus: {f.label!r} at position {f.position}", 200 + 18 * len(rows))


def head_types_heatmap(h: HeadTypes) -> go.Figure:
    """One layers x heads heatmap per head type."""
    names = list(h.scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.03)
    for i, name in enumerate(names):
        colours = dict(colorscale="Greens_r", zmin=0) if name == "entropy" else dict(colorscale=SEQUENTIAL, zmin=0, zmax=1)
        fig.add_trace(_layer_head(h.scores[name], name, showscale=False, **colours), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Head types on {h.source} (entropy in nats: low = focused)", 160 + 40 * next(iter(h.scores.values())).shape[0])


def anatomy_figure(a: HeadAnatomy) -> go.Figure:
    """softmax(q·Kᵀ/√d)·V step by step, for one head and one query, with the prompt's numbers."""
    keys = unique_labels(a.labels)
    visible = torch.arange(len(keys)) <= a.query
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
    fig.add_trace(
        go.Bar(
            x=keys,
            y=a.scores.tolist(),
            marker_color=[("#4a78b5" if v else MASKED) for v in visible],
            hovertemplate="key %{x}<br>q·k %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=keys,
            y=torch.where(visible, a.scaled, 0.0).tolist(),
            marker_color=[("#4a78b5" if v else MASKED) for v in visible],
            hovertemplate="key %{x}<br>q·k/√d %{y:.4f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Bar(x=keys, y=a.weights.tolist(), marker_color="#2c7c3f", hovertemplate="key %{x}<br>weight %{y:.4f}<extra></extra>"),
        row=3,
        col=1,
    )
    wv = a.weighted_values.T  # (d_head, key)
    bound = float(wv.abs().max()) or 1.0
    fig.add_trace(
        go.Heatmap(
            z=wv.tolist(),
            x=keys,
            y=[f"d{i}" for i in range(wv.shape[0])],
            colorscale=DIVERGING,
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="w·v", len=0.4, y=0.2),
            hovertemplate="key %{x}<br>%{y}: %{z:.4f}<extra></extra>",
        ),
        row=4,
        col=1,
    )
    fig.update_layout(showlegend=False)
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9), row=4, col=1)
    return _layout(fig, f"Layer {a.layer}, head {a.head}, query {a.query} ({a.labels[a.query]!r}): softmax(q·Kᵀ/√d)·V", 900)


# ---- logit lens ---------------------------------------------------------------------------------


def lens_heatmap(r: LensResult) -> go.Figure:
    """Points (rows, bottom to top as the stream flows) x positions: the top-1 token and its probability."""
    cols = unique_labels(r.labels)
    k = r.top_probs.shape[-1]
    hover = [
        [
            "<br>".join(f"{r.top_labels[i][j][t]} {float(r.top_probs[i, j, t]):.3f}" for t in range(k))
            + f"<br>entropy {float(r.entropy[i, j]):.2f} nats, KL to final {float(r.kl_to_final[i, j]):.2f}"
            for j in range(len(cols))
        ]
        for i in range(len(r.points))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=r.top_probs[..., 0].tolist(),
            x=cols,
            y=r.points,
            text=[[r.top_labels[i][j][0] for j in range(len(cols))] for i in range(len(r.points))],
            texttemplate="%{text}",
            textfont=dict(size=10),
            customdata=hover,
            hovertemplate="%{y} · %{x}<br>%{customdata}<extra></extra>",
            colorscale=SEQUENTIAL,
            zmin=0,
            zmax=1,
            colorbar=dict(title="top-1 p"),
        )
    )
    fig.update_xaxes(title="position (input token)", tickangle=-60, tickfont=dict(size=10))
    fig.update_yaxes(title="residual stream after")
    return _layout(fig, f"{r.kind.capitalize()}: the top-1 next token read at every layer and position", 180 + 34 * len(r.points))


def lens_target_lines(results: list[LensResult], position: int) -> go.Figure:
    """For each target token: probability, rank and logit across the points, at one position (one line per lens)."""
    first = results[0]
    fig = make_subplots(rows=1, cols=3, subplot_titles=["probability", "rank (0 = top)", "logit"], horizontal_spacing=0.07)
    dash = {"logit lens": "solid", "tuned lens": "dot"}
    for r in results:
        for t, label in enumerate(r.tracked_labels):
            name = f"{label} ({r.kind})"
            for col, values in ((1, r.tracked_probs), (2, r.tracked_ranks), (3, r.tracked_logits)):
                fig.add_trace(
                    go.Scatter(
                        x=r.points,
                        y=values[:, position, t].tolist(),
                        name=name,
                        legendgroup=name,
                        showlegend=col == 1,
                        mode="lines+markers",
                        line=dict(dash=dash.get(r.kind, "solid")),
                    ),
                    row=1,
                    col=col,
                )
    fig.update_yaxes(type="log", row=1, col=2)
    return _layout(fig, f"Targets at position {position} ({first.labels[position]!r})", 380)


def lens_stats_lines(results: list[LensResult], position: int | None = None) -> go.Figure:
    """Entropy and KL to the final distribution by point, for each lens (at a position, or averaged over positions)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["entropy (nats)", "KL(final ‖ lens) (nats)"], horizontal_spacing=0.08)
    for r in results:
        for col, values in ((1, r.entropy), (2, r.kl_to_final)):
            y = values[:, position] if position is not None else values.mean(1)
            fig.add_trace(
                go.Scatter(x=r.points, y=y.tolist(), name=r.kind, legendgroup=r.kind, showlegend=col == 1, mode="lines+markers"),
                row=1,
                col=col,
            )
    where = f"at position {position}" if position is not None else "averaged over positions"
    return _layout(fig, f"When is the answer settled? ({where})", 360)


# ---- attribution --------------------------------------------------------------------------------


def _bound(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.abs().max()) if finite.numel() and float(finite.abs().max()) > 0 else 1.0


def input_attribution_tokens(a: InputAttribution, target: int = 0) -> go.Figure:
    """The prompt's tokens coloured on a diverging scale centred on zero, plus a bar per token."""
    scores = a.scores[target]
    keep = torch.isfinite(scores)
    labels = [label for label, k in zip(unique_labels(a.labels), keep.tolist(), strict=True) if k]
    values = scores[keep]
    bound = _bound(values)
    signed = a.method != "saliency"
    fig = make_subplots(rows=2, cols=1, row_heights=[0.3, 0.7], vertical_spacing=0.12, subplot_titles=["tokens", "score per token"])
    fig.add_trace(
        go.Heatmap(
            z=[values.tolist()],
            x=labels,
            y=[""],
            text=[[label.split(": ", 1)[1] for label in labels]],
            texttemplate="%{text}",
            colorscale=DIVERGING if signed else SEQUENTIAL,
            zmid=0 if signed else None,
            zmin=-bound if signed else 0,
            zmax=bound,
            colorbar=dict(title="score", len=0.3, y=0.85),
            hovertemplate="%{x}<br>score %{z:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=values.tolist(),
            marker=dict(
                color=values.tolist(),
                colorscale=DIVERGING if signed else SEQUENTIAL,
                cmid=0 if signed else None,
                cmin=-bound if signed else 0,
                cmax=bound,
            ),
            hovertemplate="%{x}<br>score %{y:.4f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=10))
    fig.update_layout(showlegend=False)
    return _layout(fig, f"{a.method.capitalize()} for {a.answer_labels[target]} ({a.metric_label})", 460)


def input_attribution_matrix(a: InputAttribution) -> go.Figure:
    """Input tokens x target tokens, for a continuation of several tokens (blank where outside the context)."""
    bound = _bound(a.scores)
    signed = a.method != "saliency"
    fig = go.Figure(
        go.Heatmap(
            z=a.scores.T.tolist(),
            x=unique_labels(a.answer_labels),
            y=unique_labels(a.labels),
            colorscale=DIVERGING if signed else SEQUENTIAL,
            zmid=0 if signed else None,
            zmin=-bound if signed else 0,
            zmax=bound,
            hoverongaps=False,
            hovertemplate="input %{y}<br>target %{x}<br>score %{z:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title="input token")
    fig.update_xaxes(title="target token", side="top")
    return _layout(fig, f"{a.method.capitalize()}: every input token for every target token", 200 + 18 * len(a.labels))


def component_bars(c: ComponentAttribution) -> go.Figure:
    """Direct logit attribution per component, and the residual stream's projection accumulating layer by layer."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["each component's direct contribution", "cumulative: the residual stream so far"],
        horizontal_spacing=0.1,
    )
    bound = _bound(c.component_values)
    fig.add_trace(
        go.Bar(
            x=c.components,
            y=c.component_values.tolist(),
            marker=dict(color=c.component_values.tolist(), colorscale=DIVERGING, cmid=0, cmin=-bound, cmax=bound),
            hovertemplate="%{x}<br>%{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=c.cumulative_labels, y=c.cumulative.tolist(), mode="lines+markers", hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"),
        row=1,
        col=2,
    )
    fig.update_layout(showlegend=False)
    return _layout(fig, f"Direct logit attribution of {c.metric_label} at position {c.position} (sums to {c.logit:.3f})", 380)


def head_attribution_heatmap(c: ComponentAttribution) -> go.Figure:
    bound = _bound(c.heads)
    layers = c.heads.shape[0]
    fig = go.Figure(_layer_head(c.heads, "direct contribution", colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound))
    fig.update_yaxes(autorange="reversed")
    return _layout(
        fig, f"Every head's direct contribution to {c.metric_label} (everything else: {c.head_remainder:.3f})", 160 + 45 * layers
    )


# ---- patching -----------------------------------------------------------------------------------


def patching_heatmap(r: PatchResult | DatasetPatchResult, title: str | None = None) -> go.Figure:
    """A sweep's normalised effect (0 = corrupted, 1 = clean), diverging colours centred on zero."""
    values = r.values if isinstance(r, PatchResult) else r.mean
    axes = r.axes
    if len(axes) == 3:  # layer x head x position: one row per (layer, head)
        layers, heads, pos = values.shape
        z = values.reshape(layers * heads, pos)
        y = [f"L{layer} H{head}" for layer in range(layers) for head in range(heads)]
        x = unique_labels(r.labels)
    elif axes[1] == "position":
        z, y, x = values, [f"L{layer}" for layer in range(values.shape[0])], unique_labels(r.labels)
    else:
        z, y, x = values, [f"L{layer}" for layer in range(values.shape[0])], [f"H{h}" for h in range(values.shape[1])]
    bound = max(1.0, _bound(z))
    extra = ""
    custom = None
    if isinstance(r, DatasetPatchResult):
        std = r.std.reshape(z.shape)
        custom = std.tolist()
        extra = "<br>spread (std over pairs) %{customdata:.3f}"
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(),
            x=x,
            y=y,
            customdata=custom,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar=dict(title="normalised"),
            hovertemplate="%{y} · %{x}<br>normalised effect %{z:.4f}" + extra + "<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=10))
    what = SITES[r.site].description
    base = title or f"{r.direction.capitalize()} {r.site}: {what}" + (
        "" if getattr(r, "method", "exact") == "exact" else f" ({r.method} estimate)"
    )
    if isinstance(r, DatasetPatchResult):
        base += f" — mean over {r.n_pairs} pairs"
    return _layout(fig, base, 160 + 24 * len(y))


# ---- compare two prompts ------------------------------------------------------------------------


def pattern_diff_heatmap(d: PatternDiff, layer: int, head: int) -> go.Figure:
    """One head: prompt B's pattern minus prompt A's, diverging colours centred on zero."""
    grid = _future_masked(d.diff[layer, head])
    n = grid.shape[0]
    labels = unique_labels(d.alignment.labels())
    fig = go.Figure(
        go.Heatmap(
            z=grid.tolist(),
            x=labels,
            y=labels,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-1,
            zmax=1,
            hoverongaps=False,
            customdata=torch.stack([d.a[layer, head], d.b[layer, head]], -1).tolist(),
            hovertemplate="query %{y}<br>key %{x}<br>A %{customdata[0]:.4f} → B %{customdata[1]:.4f} (Δ %{z:+.4f})<extra></extra>",
            colorbar=dict(title="B − A"),
        )
    )
    fig.update_yaxes(autorange="reversed", title="query")
    fig.update_xaxes(title="key", tickangle=-60, tickfont=dict(size=10))
    fig.update_layout(plot_bgcolor=MASKED)
    return _layout(fig, f"Layer {layer}, head {head}: attention of B minus attention of A", min(900, 260 + 14 * n))


def head_change_heatmap(d: PatternDiff) -> go.Figure:
    layers = d.change.shape[0]
    fig = go.Figure(_layer_head(d.change, "mean total variation", colorscale=SEQUENTIAL, zmin=0, zmax=1))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "How much each head's attention changes (0 = same, 1 = disjoint)", 160 + 45 * layers)


def lens_diff_heatmap(d: LensDiff) -> go.Figure:
    """Jensen-Shannon divergence between the two prompts' lens readings; text where the top-1 token changes."""
    n = d.alignment.n
    text = [
        [(f"{d.top_a[i][j]}→{d.top_b[i][j]}" if d.top_a[i][j] != d.top_b[i][j] else "") for j in range(n)] for i in range(len(d.points))
    ]
    hover = [
        [f"A: {d.top_a[i][j]} {float(d.prob_a[i, j]):.3f}<br>B: {d.top_b[i][j]} {float(d.prob_b[i, j]):.3f}" for j in range(n)]
        for i in range(len(d.points))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=d.js.tolist(),
            x=unique_labels(d.alignment.labels()),
            y=d.points,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=9),
            customdata=hover,
            hovertemplate="%{y} · %{x}<br>%{customdata}<br>JS divergence %{z:.4f}<extra></extra>",
            colorscale=SEQUENTIAL,
            zmin=0,
            zmax=0.6931,
            colorbar=dict(title="JS (nats)"),
        )
    )
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=10))
    return _layout(fig, "Logit lens, A vs B: divergence at every layer and position (top-1 change written in)", 180 + 34 * len(d.points))
