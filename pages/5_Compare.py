"""Two prompts side by side: the difference in attention and in the logit lens, position by position."""

import streamlit as st

from workbench import compare, long, ui
from workbench.figures import compare as draw
from workbench.figures import long as draw_long

PROMPT_B = "wb.prompt_b"  # the second prompt (A is the shared prompt); not a widget key: the form commits it
view = ui.View(
    "Compare two prompts",
    "How attention and the layer-by-layer prediction change when the prompt changes. Positions are compared one to one.",
    shared=("model", "prompt", "layer", "head"),
    params=(ui.text("prompt_b", PROMPT_B),),
)
model = view.start()
if PROMPT_B not in st.session_state:
    # first visit: an example pair, unless the user already typed a prompt elsewhere (it becomes A)
    example_a, example_b = ui.example_pair(model.info.name)
    if st.session_state.get(ui.PROMPT, ui.example_prompt(model.info.name)) == ui.example_prompt(model.info.name):
        st.session_state[ui.PROMPT] = example_a
    st.session_state[PROMPT_B] = example_b
with st.form("compare_form"):
    c1, c2 = st.columns(2)
    a = c1.text_area("Prompt A", st.session_state[ui.PROMPT], height=90, key="w.prompt_a")
    b = c2.text_area("Prompt B", st.session_state[PROMPT_B], height=90, key="w.prompt_b")
    if st.form_submit_button("Compare", type="primary"):
        st.session_state[ui.PROMPT], st.session_state[PROMPT_B] = a, b
prompt_a, prompt_b = st.session_state[ui.PROMPT], st.session_state[PROMPT_B]

with ui.guard("the comparison"):
    n = max(ui.memory_plan(model, prompt_a, False, "compare"), long.n_tokens(model, prompt_b))
    # long prompts: float16 patterns, the difference taken a layer at a time (no run cache of every pattern)
    d = compare.pattern_diff(model, prompt_a, prompt_b, chunked=n > long.LONG_TOKENS)
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
        # past HOVER_CELLS cells a heatmap's JSON gets heavy: an image of every token, without hover values
        one = draw_long.diff_image(d, layer, head) if al.n**2 > draw_long.HOVER_CELLS else draw.pattern_diff_heatmap(d, layer, head)
        ui.figure(one, f"compare-L{layer}H{head}", d.diff[layer, head])
    with lens_tab:
        short = n <= long.LONG_TOKENS
        ld = compare.lens_diff(model, prompt_a, prompt_b, chunk=32 if short else long.lens_chunk(model), with_patterns=short)
        ui.figure(draw.lens_diff_heatmap(ld), "compare-lens", ld)

view.share()
