"""Figures: plotly only, built from analysis results, never from the model (and never with streamlit).

Colour conventions across the workbench: probabilities on a sequential scale (`SEQUENTIAL`),
signed effects on a diverging scale centred on zero (`DIVERGING`).
"""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.generate import Generation, TopK

SEQUENTIAL = "Blues"
DIVERGING = "RdBu"
FONT = dict(family="DejaVu Sans Mono, Menlo, Consolas, monospace")


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
