"""Figures of the home page: the next-token distribution and generation step by step."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.figures.common import heatmap, layout, probability
from workbench.generate import Generation
from workbench.runs import TopK


def topk_bar(topk: TopK, title: str | None = None) -> go.Figure:
    """Horizontal bars: the k most likely next tokens, most likely on top."""
    labels = [f"{i + 1}. {label}" for i, label in enumerate(topk.labels)][::-1]
    probs = topk.probs[::-1]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=labels,
            orientation="h",
            marker=probability().for_marker(probs),
            text=[f"{p:.1%}" for p in probs],
            textposition="outside",
            customdata=list(zip(topk.ids[::-1], topk.logits[::-1], strict=True)),
            hovertemplate="%{y}<br>probability %{x:.4f}<br>id %{customdata[0]}, logit %{customdata[1]:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="probability", range=[0, min(1.0, max(topk.probs) * 1.25 + 0.02)])
    return layout(fig, title or f"Next token after position {topk.position}", 80 + 28 * len(topk.ids))


def generation_steps(gen: Generation) -> go.Figure:
    """One row per generated token: its candidates left to right by probability; the chosen one marked ▶."""
    steps = gen.steps
    k = max(len(s.candidate_ids) for s in steps)
    z, text, hover = [], [], []
    for s in steps:
        pad = [""] * (k - len(s.candidate_ids))
        z.append(s.candidate_probs + [None] * (k - len(s.candidate_probs)))
        text.append(
            [("▶ " if cid == s.chosen_id else "") + label for cid, label in zip(s.candidate_ids, s.candidate_labels, strict=True)] + pad
        )
        hover.append(
            [
                f"{label}: model {p:.3f}, drawn with {d:.3f}"
                for label, p, d in zip(s.candidate_labels, s.candidate_probs, s.draw_probs, strict=True)
            ]
            + pad
        )
    rows = [f"{i + 1}. {s.chosen_label}" for i, s in enumerate(steps)]
    fig = go.Figure(
        heatmap(
            z, probability(), "step %{y}<br>%{customdata}", [f"#{r + 1}" for r in range(k)], rows, text=text, customdata=hover, colorbar="p"
        )
    )
    fig.update_yaxes(autorange="reversed", title="step (chosen token)")
    fig.update_xaxes(title="candidate rank (▶ = chosen)", side="top")
    return layout(fig, "Each step's candidates", 120 + 26 * len(steps))
