"""Figures of the Intervene view: the original and the edited run side by side.

Colours: the original run in grey, the edited run in the workbench's accent (red, the selected
colour of every page); a changed token of the continuation is drawn red on both rows.
"""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.figures.common import diverging, layer_head_figure, layout, token_ticks
from workbench.intervention_sweeps import AblationSweep, SteeringSweep
from workbench.interventions import Intervention
from workbench.tokens import unique_labels

ORIGINAL = "#7f7f7f"
EDITED = "#d62728"  # the workbench's accent (ui.SELECTED)


def next_token(r: Intervention) -> go.Figure:
    """The next-token distribution after the prompt: each run's top tokens, original and edited bars side by side."""
    labels = unique_labels(r.token_labels)
    fig = go.Figure(
        [
            go.Bar(name="original", x=labels, y=r.original_probs.tolist(), marker_color=ORIGINAL,
                   hovertemplate="%{x}<br>original %{y:.4f}<extra></extra>"),
            go.Bar(name="edited", x=labels, y=r.edited_probs.tolist(), marker_color=EDITED,
                   hovertemplate="%{x}<br>edited %{y:.4f}<extra></extra>"),
        ]
    )  # fmt: skip
    fig.update_layout(barmode="group", yaxis_title="probability", legend=dict(orientation="h", y=1.1))
    token_ticks(fig)
    return layout(fig, "Next token, original vs edited", 380)


def kl_by_position(r: Intervention) -> go.Figure:
    """KL(original ‖ edited) of the next-token distribution after each position of the prompt."""
    fig = go.Figure(
        go.Bar(
            x=unique_labels(r.labels),
            y=r.kl.tolist(),
            marker_color=EDITED,
            hovertemplate="after %{x}<br>KL %{y:.4f} nats<extra></extra>",
        )
    )
    fig.update_layout(yaxis_title="KL (nats)")
    token_ticks(fig)
    return layout(fig, "How much the edits change each position's prediction (KL, original ‖ edited)", 320)


def continuations(r: Intervention) -> go.Figure:
    """Both continuations token by token, one row each; the steps where they differ in red."""
    n = max(len(r.original.steps), len(r.edited.steps))
    rows = [("original", r.original.steps), ("edited", r.edited.steps)]
    fig = go.Figure()
    for name, steps in rows:
        labels = [s.chosen_label for s in steps]
        colours = [EDITED if step < len(r.differs) and r.differs[step] else "#222222" for step in range(len(steps))]
        probs = [s.chosen_prob for s in steps]
        fig.add_trace(
            go.Scatter(
                x=list(range(len(steps))),
                y=[name] * len(steps),
                mode="text",
                text=labels,
                textfont=dict(color=colours, size=13),
                customdata=probs,
                hovertemplate=f"{name}, step %{{x}}: %{{text}}<br>p = %{{customdata:.3f}}<extra></extra>",
                showlegend=False,
            )
        )
    fig.update_xaxes(title="generated step", range=[-0.6, max(n, 1) - 0.4], dtick=1)
    fig.update_yaxes(autorange="reversed")
    differ = sum(r.differs)
    return layout(fig, f"Continuations ({differ} of {len(r.differs)} tokens differ, in red)", 220)


def head_ablation(s: AblationSweep) -> go.Figure:
    """Each head's effect on the metric when ablated alone (ablated − unablated), diverging around zero."""
    return layer_head_figure(
        s.effect,
        f"{s.how}-ablated: change of {s.metric_label}",
        diverging(s.effect),
        f"Ablating each head ({s.how}): change of {s.metric_label}",
    )


def steering(s: SteeringSweep) -> go.Figure:
    """The answer tokens' probability against the KL on neutral prompts, one point per coefficient."""
    fig = go.Figure(
        go.Scatter(
            x=s.kl_neutral.tolist(),
            y=s.answer.tolist(),
            mode="lines+markers+text",
            text=[f"×{c:g}" for c in s.coefficients.tolist()],
            textposition="top left",
            marker=dict(color=EDITED, size=9),
            hovertemplate="coefficient %{text}<br>KL on neutral prompts %{x:.3f} nats<br>answer probability %{y:.4f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="KL on neutral prompts (nats): the damage")
    fig.update_yaxes(title=f"P({' '.join(s.answer_labels)}) on held-out prompts")
    return layout(fig, "Steering: the answer tokens against the damage, by coefficient", 380)
