"""Attention maps: one head, every head, one token's focus, head types, and one head's arithmetic."""

import streamlit as st

from workbench import attention, long, ui
from workbench.figures import attention as draw
from workbench.figures import long as draw_long

view = ui.View(
    "Attention",
    "Each head's pattern: for every query token, how its attention is shared over the tokens up to it (rows sum to 1).",
    shared=("model", "prompt", "layer", "head", "pos"),
)
head_types_on_repeats = view.cached(attention.head_types_on_repeats, spinner="Scoring heads on repeated random tokens…")
long_patterns = view.cached(attention.patterns, entries=2, spinner="Running the long prompt, keeping each layer's patterns…")
model = view.start()
prompt, truncate = ui.prompt_form(model)

with ui.guard("the attention patterns"):
    n = ui.memory_plan(model, prompt, truncate, "attention")
    is_long = n > long.LONG_TOKENS  # long prompt: float16 patterns kept as each layer computes them, no run cache
    p = long_patterns(model, prompt, truncate) if is_long else attention.patterns(model, prompt, truncate)
    labels = p.labels
    # the page opens on the best induction head: on repeated random tokens when this model's scores are on disk
    # (or cheap), else on the prompt's own patterns (no extra pass)
    repeats = attention.stored_head_types_on_repeats(model) or head_types_on_repeats.peek(model)
    if repeats is None and not attention.repeats_estimate(model).over_budget:
        repeats = head_types_on_repeats(model)
    on_prompt = attention.head_types(model, p)
    strongest = (repeats if repeats is not None else on_prompt).ranked("induction", 1)[0]
    layer, head = ui.head_picker(model, default=(strongest["layer"], strongest["head"]))
    ui.probe_command("attention", model, prompt=prompt, layer=layer, head=head)
    one, grid, focus, types, anatomy = st.tabs(["One head", "Every head", "Token focus", "Head types", "Anatomy of a head"])

    def one_head():
        # past HOVER_CELLS cells a heatmap's JSON gets heavy: an image of every token, without hover values
        return draw_long.head_image(p, layer, head) if n * n > draw_long.HOVER_CELLS else draw.pattern_heatmap(p, layer, head)

    with one:
        rows = None if is_long else attention.pattern_rows(p, layer, head)
        ui.figure(one_head(), f"pattern-L{layer}H{head}", p.head(layer, head), rows)

    with grid:
        layers, heads, _ = p.shape
        if layers * heads * n * n > draw_long.HOVER_CELLS:
            fig, factor = draw_long.grid_image(p)
            st.info(
                f"The prompt has {n} tokens: every head is drawn at every token as one image (colour: the weight; no hover "
                f"values at this size{'' if factor == 1 else f'; each pixel the largest weight in {factor}×{factor} tokens'})."
            )
        else:
            fig, factor = draw.pattern_grid(p)
            if factor > 1:
                st.info(f"Each small pattern shows the largest weight in every {factor}×{factor} block. Pick a head above to see it whole.")
        ui.figure(fig, "patterns-all-heads", p.pattern)
        st.caption(f"Choose a layer and head above to enlarge it. Below: layer {layer}, head {head}.")
        ui.figure(one_head(), f"pattern-L{layer}H{head}-enlarged", p.head(layer, head))

    with focus:
        position = ui.position_picker(labels, "Position")
        f = attention.token_focus(p, position)
        ui.figure(draw.token_focus_figure(f, labels), f"token-focus-{position}", f)

    with types:
        st.markdown(
            "Share of each head's attention that goes where a known behaviour puts it: the previous token, earlier copies of "
            "the same token (duplicate), the token after an earlier copy (induction), the first token (the attention sink); "
            "and each head's mean attention entropy."
        )
        ui.figure(draw.head_types_heatmap(on_prompt), "head-types-prompt", on_prompt, on_prompt.rows())
        if repeats is None:  # kept on disk for this model: asked once
            repeats = ui.gated(
                attention.repeats_estimate(model), "Score heads on repeated random tokens", "repeats", head_types_on_repeats, model
            )
        if repeats is not None:
            ui.figure(draw.head_types_heatmap(repeats), "head-types-repeats", repeats, repeats.rows())
        kind = st.selectbox("Rank heads by", attention.HEAD_TYPES, index=2, key="w.rank_by")
        c1, c2 = st.columns(2)
        c1.markdown("**on your prompt**")
        c1.dataframe(on_prompt.ranked(kind, 10), hide_index=True)
        if repeats is not None:
            c2.markdown(f"**on {repeats.source}**")
            c2.dataframe(repeats.ranked(kind, 10), hide_index=True)

    with anatomy:
        query = ui.position_picker(labels, "Query position", key="w.anatomy_query")
        a = attention.head_anatomy(model, prompt, layer, head, query, truncate=truncate)
        st.latex(r"\mathrm{head}(x_i) = \mathrm{softmax}\!\left(\frac{q_i K^\top}{\sqrt{d_\mathrm{head}}} + \mathrm{mask}\right) V \; W_O")
        ui.figure(draw.anatomy_figure(a), f"anatomy-L{layer}H{head}-q{query}", a)
        st.markdown(
            f"z = Σ weights × values has norm **{a.z.norm():.3f}**; the head writes z·W_O (norm **{a.output.norm():.3f}**) into the "
            f"residual stream. Check against the model's own hooks: largest difference in the weights "
            f"{(a.weights - a.model_pattern_row).abs().max():.1e}, in the output {(a.output - a.model_output).abs().max():.1e}."
        )

view.share()
