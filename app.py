"""Home page: pick a model, type a prompt, see its tokens, the next-token prediction, and generation."""

import streamlit as st

from workbench import figures, ui
from workbench.generate import Sampling, generate
from workbench.runs import next_token_topk, run_prompt

model = ui.page(
    "🔬 GPT interpretability workbench",
    "Look inside a trained GPT: type a prompt and see what the model does with it. The pages on the left "
    "show attention, the logit lens, activation patching and attribution on the same model and prompt.",
)

with st.sidebar.expander("Model summary", expanded=False):
    st.table({label: [value] for label, value in model.info.rows()}, border="horizontal")

prompt, truncate = ui.prompt_form(model)

with ui.guard("the run"):
    run = run_prompt(model, prompt, truncate=truncate)
    if run.truncated:
        st.info(f"The prompt was {run.truncated} tokens too long for the context: its start was dropped.")

    st.subheader(f"Tokens ({run.n_tokens}, BOS first)")
    ui.token_chips(run.labels, run.tokens.tolist())

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Next token")
        k = st.slider("How many candidates", 3, 30, 10, key="w.home_k")
        topk = next_token_topk(model, run, k=k)
        ui.figure(figures.topk_bar(topk), "next-token", topk, topk.rows())
    with right:
        st.subheader("Generate, one token at a time")
        with st.form("generate"):
            mode = st.radio("Choose each token", ui.SAMPLING_MODES, horizontal=True, key="w.gen_mode")
            c1, c2 = st.columns(2)
            temperature = c1.number_input("temperature", 0.05, 5.0, 1.0, 0.05, key="w.gen_t")
            max_new = c2.number_input("new tokens", 1, 100, 20, key="w.gen_n")
            top_k = c1.number_input("top-k (0 = off)", 0, model.info.d_vocab, 0, key="w.gen_topk")
            top_p = c2.number_input("top-p (1 = off)", 0.01, 1.0, 1.0, 0.01, key="w.gen_topp")
            seed = c1.number_input("seed", 0, 2**31 - 1, 0, key="w.gen_seed")
            go = st.form_submit_button("Generate")
        if go:
            sampling = Sampling(int(max_new), mode.startswith("greedy"), float(temperature), int(top_k), float(top_p), int(seed))
            gen = generate(model, prompt, sampling)
            st.markdown(f"**{prompt}**{gen.text}")
            st.caption(f"Stopped: {gen.stopped}.")
            ui.figure(figures.generation_steps(gen), "generation", gen)

ui.share_to_url("model", "prompt", "k", "sampling", "temperature", "new_tokens", "top_k", "top_p", "seed")
