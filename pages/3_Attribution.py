"""Attribution: which input tokens (captum), and which heads, MLPs and neurons (direct logit attribution), produced a prediction."""

import streamlit as st

from workbench import attribution, conventions, ui
from workbench.figures import attribution as draw
from workbench.runs import next_token_topk, run_prompt

view = ui.View(
    "Attribution",
    "What caused this prediction? Input tokens, by gradients or ablation (captum); model components, by direct logit attribution.",
    params=(
        ui.choice("method", attribution.METHODS),
        ui.choice("baseline", attribution.BASELINES),
        ui.number("steps", int, 2, 512),
    ),
)
# the library's kinds of answer, and their names in the glossary's words (docs/glossary.md)
ANSWER_KINDS = {
    "next token": "next token",
    "typed token": "typed token",
    "continuation": "continuation",
    "logit difference": "logit difference (answer − wrong)",
}
input_attribution = view.cached(attribution.input_attribution, per_session=True, entries=4)
model = view.start()
prompt, truncate = ui.prompt_form(model, page="attribution")

with ui.guard("the attribution"):
    ui.memory_plan(model, prompt, truncate, "attribution")
    run = run_prompt(model, prompt, truncate=truncate)
    if run.truncated:
        st.warning("Attribution runs on the whole prompt: shorten it to fit the context.")
        st.stop()
    top = next_token_topk(model, run, k=1)
    with st.form("answer"):
        c1, c2, c3 = st.columns([2, 2, 2])
        kind = c1.radio(
            "Answer",
            list(ANSWER_KINDS),
            format_func=ANSWER_KINDS.get,
            key="w.attr_kind",
            help=f"next token: the model's prediction, {top.labels[0]!r}",
        )
        typed = c2.text_input("Answer token or continuation", "", key="w.attr_typed", help="with its leading space, e.g. ' the'")
        wrong = c2.text_input("Wrong token (logit difference only)", "", key="w.attr_wrong")
        method = c3.selectbox("Method", attribution.METHODS, key=view.key("method"))
        baseline = c3.selectbox(
            "Baseline",
            attribution.BASELINES,
            key=view.key("baseline"),
            help="integrated gradients starts from it; feature ablation swaps tokens for it",
        )
        steps = c3.number_input(
            "Integration steps",
            2,
            512,
            32,
            key=view.key("steps"),
            help="the adaptive method: at most this many, it stops at 1% completeness error",
        )
        st.form_submit_button("Attribute", type="primary")
    answer = attribution.parse_answer(model, kind, top.ids[0], typed, wrong)
    ui.probe_command(
        "attribution", model, prompt=prompt, method=method, baseline=baseline, steps=int(steps),
        **({"continuation": typed} if kind == "continuation" else {"answer": typed, "wrong": wrong if kind == "logit difference" else ""}),
    )  # fmt: skip

    inputs, components = st.tabs(["Input tokens (captum)", "Components (direct logit attribution)"])
    with inputs:
        # integrated gradients' steps cost a forward and a backward pass each: above the budget only on request
        args = (model, prompt, answer, method, baseline, int(steps))
        a = input_attribution.peek(*args)
        if a is None:
            est = attribution.estimate(model, prompt, answer, method, int(steps))
            a = ui.gated(est, f"Attribute with {method}", "attribution", input_attribution, *args)
        if a is not None and method.startswith("integrated gradients"):
            gap = a.completeness_gap()
            st.markdown(
                f"**Completeness**: attributions sum to {float(a.scores.nansum(-1)[0]):.4f}; metric(input) − metric(baseline) = "
                f"{float(a.metric[0] - a.metric_baseline[0]):.4f}; convergence delta {a.max_delta():.2e}; {a.steps} gradient evaluations."
            )
            more = attribution.suggested_steps(a)
            if more:
                st.warning(f"The gap ({gap:.3f}) is large: try about {more} integration steps.")
        if a is not None:
            ui.figure(draw.input_attribution_tokens(a), f"input-attribution-{method}", a, a.rows())
            if len(a.answer_labels) > 1:
                ui.figure(draw.input_attribution_matrix(a), f"input-attribution-matrix-{method}", a, a.rows())
    with components:
        c = attribution.component_attribution(model, prompt, answer.tokens[0], answer.wrong, truncate=truncate)
        st.caption(f"Convention: {conventions.DLA}.")
        ui.figure(draw.component_bars(c), "dla-components", c, c.rows())
        ui.figure(draw.head_attribution_heatmap(c), "dla-heads", c.heads)
        st.markdown("**Neurons with the largest direct contributions**")
        st.dataframe(c.neurons, hide_index=True)

view.share()
