"""Logit lens and tuned lens: the model's prediction read after every layer, at every position."""

import streamlit as st

from workbench import lens, tuned_lens_io, ui
from workbench.edit_values import server_path
from workbench.figures import lens as draw
from workbench.runs import next_token_topk, run_prompt
from workbench.tokens import single_token_id

view = ui.View(
    "Logit lens",
    "Read the residual stream after every layer as if it were the last: final layer norm, then unembedding. "
    "The tuned lens first translates each layer's stream with a learned affine map, so early layers read better.",
    shared=("model", "prompt", "pos"),
    params=(ui.text("tracked"), ui.choice("points", lens.POINTS)),
)
tuned_lens = view.cached(lens.load_tuned_lens)
model = view.start()
prompt, truncate = ui.prompt_form(model, page="lens")

with ui.guard("the lens"):
    n = ui.memory_plan(model, prompt, truncate, "lens")
    if view.key("points") not in st.session_state:
        # every point costs an unembedding per position: the midpoints on a first visit only where that stays cheap
        st.session_state[view.key("points")] = "midpoints" if lens.default_midpoints(model, n) else "blocks"
    points = st.radio(
        "Points read", lens.POINTS, key=view.key("points"), horizontal=True,
        format_func=lambda p: {"blocks": "each block's output", "midpoints": "after each attention and MLP"}[p],
        help="Each point costs one unembedding per position. Reading after each attention as well doubles the points: "
        f"here ~{lens.reading_seconds(model, n, True):.1f} s against ~{lens.reading_seconds(model, n, False):.1f} s.",
    )  # fmt: skip
    midpoints = points == "midpoints"
    run = run_prompt(model, prompt, [name for _, name in lens.lens_points(model, midpoints)], truncate=truncate)
    tuned = tuned_lens(model)
    position = ui.position_picker(run.labels, "Position (whose next token is read)")
    suggestions = next_token_topk(model, run, k=8, position=position)
    c1, c2 = st.columns([2, 3])
    picked = c1.multiselect(
        "Tracked tokens (the model's top predictions here)", suggestions.labels, default=suggestions.labels[:2], key="w.lens_tracked"
    )
    typed = c2.text_input("…or type a token to track (one token; mind the leading space)", "", key=view.key("tracked"))
    tracked = [suggestions.ids[suggestions.labels.index(label)] for label in picked]
    if typed:
        tracked.append(single_token_id(model.tokenizer, typed, "tracked"))
    ui.probe_command("lens", model, prompt=prompt, track=[model.tokenizer.decode([t]) for t in tracked], points=points)

    logit = lens.lens(model, prompt, k=5, tracked=tracked, truncate=truncate, midpoints=midpoints)
    results = [logit]
    if tuned is None:
        st.info("This model has no tuned lens yet: train one with `python -m workbench.train lens <model>`.")
        ui.figure(draw.lens_heatmap(logit), "logit-lens", logit, logit.rows())
    else:
        tuned_result = lens.lens(model, prompt, k=5, tracked=tracked, tuned=tuned, truncate=truncate, midpoints=midpoints)
        results.append(tuned_result)
        # side by side while the cells stay readable; one above the other for longer prompts
        left, right = st.columns(2) if run.n_tokens <= 12 else (st.container(), st.container())
        with left:
            ui.figure(draw.lens_heatmap(logit), "logit-lens", logit, logit.rows())
        with right:
            ui.figure(draw.lens_heatmap(tuned_result), "tuned-lens", tuned_result, tuned_result.rows())
    if tracked:
        ui.figure(draw.lens_tracked_lines(results, position), f"lens-tracked-{position}", [r.tracked_probs[:, position] for r in results])
    ui.figure(
        draw.lens_stats_lines(results, position),
        f"lens-stats-{position}",
        {r.kind: {"entropy": r.entropy[:, position], "kl_to_final": r.kl_to_final[:, position]} for r in results},
    )
    ui.figure(
        draw.lens_stats_lines(results),
        "lens-stats-mean",
        {r.kind: {"entropy": r.entropy.mean(1), "kl_to_final": r.kl_to_final.mean(1)} for r in results},
    )

    # a lens saved by the tuned-lens package (#26): read on Hugging Face hidden states, one translator per layer
    with st.expander("A tuned lens saved by the tuned-lens package (config.json + params.safetensors)"):
        folder = st.text_input(
            "Its folder", "", key="w.lens_package", help="convert params.pt once: python -m workbench.tuned_lens_io params.pt"
        )
        if folder:
            package = tuned_lens_io.read(server_path(folder, "tuned-lens folders"), model)
            logits = tuned_lens_io.readings(model, package, run.tokens)  # (layer, pos, d_vocab)
            top = logits.argmax(-1)  # (layer, pos)
            st.caption("Top-1 token read from each layer's input (hidden state i), as the package reads it.")
            st.dataframe(
                [{"hidden state": i, **{f"{p}: {run.labels[p]}": model.tokenizer.decode([int(t)]) for p, t in enumerate(row)}}
                 for i, row in enumerate(top.tolist())],
                hide_index=True,
            )  # fmt: skip

view.share()
