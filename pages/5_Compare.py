"""Two prompts side by side: the difference in attention and in the logit lens, position by position."""

import streamlit as st

from workbench import compare, ui
from workbench.figures import compare as draw

model = ui.page(
    "Compare two prompts",
    "How attention and the layer-by-layer prediction change when the prompt changes. Positions are compared one to one.",
)
prompt_a, prompt_b = ui.compare_form(model)

with ui.guard("the comparison"):
    d = compare.pattern_diff(model, prompt_a, prompt_b)
    al = d.alignment
    ui.token_rows(al.labels_a, al.labels_b, al.differ, names=("A", "B"))
    if not al.same_length:
        st.warning(
            f"The prompts tokenize to different lengths ({len(al.labels_a)} vs {len(al.labels_b)}): only the first {al.n} "
            "positions are compared, one to one, and positions after a length change no longer hold corresponding words."
        )
    elif not al.differ:
        st.info("The two prompts give the same tokens: every difference below is zero.")
    layer, head = ui.head_picker(model)
    attn, lens_tab = st.tabs(["Attention", "Logit lens"])
    with attn:
        ui.figure(draw.head_change_heatmap(d), "compare-heads", d.change)
        ui.figure(draw.pattern_diff_heatmap(d, layer, head), f"compare-L{layer}H{head}", d.diff[layer, head])
    with lens_tab:
        ld = compare.lens_diff(model, prompt_a, prompt_b)
        ui.figure(draw.lens_diff_heatmap(ld), "compare-lens", ld)

ui.share_to_url("model", "prompt", "prompt_b", "layer", "head")
