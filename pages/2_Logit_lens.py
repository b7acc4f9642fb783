"""Logit lens and tuned lens: the model's prediction read after every layer, at every position."""

import streamlit as st

from workbench import figures, lens, ui
from workbench.runs import next_token_topk, run_prompt
from workbench.tokens import single_token_id

model = ui.page(
    "Logit lens",
    "Read the residual stream after every layer as if it were the last: final layer norm, then unembedding. "
    "The tuned lens first translates each layer's stream with a learned affine map, so early layers read better.",
)
prompt, truncate = ui.prompt_form(model)

with ui.guard("the lens"):
    run = run_prompt(model, prompt, truncate=truncate)
    tuned = ui.cached_tuned_lens(model)
    position = ui.position_picker(run.labels, "Position (whose next token is read)")
    suggestions = next_token_topk(model, run, k=8, position=position)
    c1, c2 = st.columns([2, 3])
    picked = c1.multiselect(
        "Target tokens (the model's top predictions here)", suggestions.labels, default=suggestions.labels[:2], key="w.lens_targets"
    )
    typed = c2.text_input("…or type a target token (one token; mind the leading space)", "", key="w.lens_typed")
    targets = [suggestions.ids[suggestions.labels.index(label)] for label in picked]
    if typed:
        targets.append(single_token_id(model.tokenizer, typed, "tracked"))
    ui.probe_command("lens", model, prompt=prompt, target=[model.tokenizer.decode([t]) for t in targets])

    logit = lens.lens(model, prompt, k=5, tracked=targets, truncate=truncate)
    results = [logit]
    if tuned is None:
        st.info("This model has no tuned lens yet: train one with `python -m workbench.train lens <model>`.")
        ui.figure(figures.lens_heatmap(logit), "logit-lens", logit, logit.rows())
    else:
        tuned_result = lens.lens(model, prompt, k=5, tracked=targets, tuned=tuned, truncate=truncate)
        results.append(tuned_result)
        # side by side while the cells stay readable; one above the other for longer prompts
        left, right = st.columns(2) if run.n_tokens <= 12 else (st.container(), st.container())
        with left:
            ui.figure(figures.lens_heatmap(logit), "logit-lens", logit, logit.rows())
        with right:
            ui.figure(figures.lens_heatmap(tuned_result), "tuned-lens", tuned_result, tuned_result.rows())
    if targets:
        ui.figure(figures.lens_target_lines(results, position), f"lens-targets-{position}", [r.tracked_probs[:, position] for r in results])
    ui.figure(
        figures.lens_stats_lines(results, position),
        f"lens-stats-{position}",
        {r.kind: {"entropy": r.entropy[:, position], "kl_to_final": r.kl_to_final[:, position]} for r in results},
    )
    ui.figure(
        figures.lens_stats_lines(results),
        "lens-stats-mean",
        {r.kind: {"entropy": r.entropy.mean(1), "kl_to_final": r.kl_to_final.mean(1)} for r in results},
    )

ui.share_to_url("model", "prompt", "pos", "target")
