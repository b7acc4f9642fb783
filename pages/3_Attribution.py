"""Attribution: which input tokens (captum), and which heads, MLPs and neurons (direct logit attribution), produced a prediction."""

import streamlit as st

from workbench import attribution, figures, ui
from workbench.runs import next_token_topk, run_prompt

model = ui.page(
    "Attribution",
    "What caused this prediction? Input tokens, by gradients or ablation (captum); model components, by direct logit attribution.",
)
prompt, truncate = ui.prompt_form(model)

with ui.guard("the attribution"):
    run = run_prompt(model, prompt, truncate=truncate)
    if run.truncated:
        st.warning("Attribution runs on the whole prompt: shorten it to fit the context.")
        st.stop()
    top = next_token_topk(model, run, k=1)
    with st.form("target"):
        c1, c2, c3 = st.columns([2, 2, 2])
        kind = c1.radio(
            "Target",
            ["next token", "typed token", "continuation", "contrast"],
            key="w.attr_kind",
            help=f"next token: the model's prediction, {top.labels[0]!r}",
        )
        typed = c2.text_input("Token / continuation / token A", "", key="w.attr_typed", help="with its leading space, e.g. ' the'")
        contrast = c2.text_input("Token B (contrast only)", "", key="w.attr_contrast")
        method = c3.selectbox("Method", attribution.METHODS, key="w.attr_method")
        baseline = c3.selectbox(
            "Baseline",
            attribution.BASELINES,
            key="w.attr_baseline",
            help="integrated gradients starts from it; feature ablation swaps tokens for it",
        )
        steps = c3.number_input("Integration steps", 2, 512, 32, key="w.attr_steps")
        st.form_submit_button("Attribute", type="primary")
    target = attribution.parse_answer(model, kind, top.ids[0], typed, contrast)
    ui.probe_command(
        "attribution", model, prompt=prompt, method=method, baseline=baseline, steps=int(steps),
        **({"continuation": typed} if kind == "continuation" else {"target": typed, "contrast": contrast if kind == "contrast" else ""}),
    )  # fmt: skip

    inputs, components = st.tabs(["Input tokens (captum)", "Components (direct logit attribution)"])
    with inputs:
        a = attribution.input_attribution(model, prompt, target, method=method, baseline=baseline, steps=int(steps))
        if method == "integrated gradients":
            gap = a.completeness_gap()
            st.markdown(
                f"**Completeness**: attributions sum to {float(a.scores.nansum(-1)[0]):.4f}; metric(input) − metric(baseline) = "
                f"{float(a.metric[0] - a.metric_baseline[0]):.4f}; convergence delta {a.max_delta():.2e}."
            )
            more = attribution.suggested_steps(a)
            if more:
                st.warning(f"The gap ({gap:.3f}) is large: try about {more} integration steps.")
        ui.figure(figures.input_attribution_tokens(a), f"input-attribution-{method}", a, a.rows())
        if len(a.answer_labels) > 1:
            ui.figure(figures.input_attribution_matrix(a), f"input-attribution-matrix-{method}", a, a.rows())
    with components:
        c = attribution.component_attribution(model, prompt, target.tokens[0], target.wrong, truncate=truncate)
        ui.figure(figures.component_bars(c), "dla-components", c, c.rows())
        ui.figure(figures.head_attribution_heatmap(c), "dla-heads", c.heads)
        st.markdown("**Neurons with the largest direct contributions**")
        st.dataframe(c.neurons, hide_index=True)

ui.share_to_url("model", "prompt", "method", "baseline", "steps")
