"""The Tasks view's figure: per task, the accuracy, and the share of the logit difference the circuit's ablation removes against random components."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.figures.common import FONT


def tasks_figure(cards) -> go.Figure:
    """Grouped bars over the tasks (`tasks.TaskCard`s): held-out accuracy, ablation cut, random cut (0..1)."""
    names = [c.name for c in cards]
    fig = go.Figure()
    fig.add_bar(name="accuracy (held out)", x=names, y=[c.accuracy for c in cards], marker_color="#1f77b4")
    fig.add_bar(name="ablating the circuit cuts", x=names, y=[c.ablation_cut or 0.0 for c in cards], marker_color="#d62728")
    fig.add_bar(name="as many random components cut", x=names, y=[c.random_cut or 0.0 for c in cards], marker_color="#7f7f7f")
    fig.update_layout(
        barmode="group",
        yaxis=dict(title="share", tickformat=".0%", range=[min(0.0, *[c.random_cut or 0.0 for c in cards]), 1.05]),
        font=FONT,
        height=360,
        margin=dict(l=60, r=20, t=30, b=40),
        legend=dict(orientation="h", y=1.12),
    )
    return fig
