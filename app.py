"""Home page: pick a model, type a prompt, see its tokens, the next-token prediction, and generation."""

import streamlit as st

from workbench import ui
from workbench.figures import generate as draw
from workbench.generate import Sampling, generate
from workbench.runs import next_token_topk, run_prompt

SAMPLING_MODES = ("greedy (most likely)", "sample")
view = ui.View(
    "🔬 GPT interpretability workbench",
    "Look inside a trained GPT: type a prompt and see what the model does with it. The pages on the left "
    "show attention, the logit lens, activation patching and attribution on the same model and prompt, compare two "
    "prompts, show how the model's heads formed during training, trace the routes of one prediction (Graph), read "
    "its sparse-autoencoder features, change one thing and watch the continuation (Intervene), and score cheap "
    "patching estimates against exact patching (Methods).",
    params=(
        ui.number("k", int, 3, 30),
        ui.choice("sampling", SAMPLING_MODES),
        ui.number("temperature", float, 0.05, 5.0),
        ui.number("new_tokens", int, 1, 100),
        ui.number("top_k", int, 0, 1_000_000),
        ui.number("top_p", float, 0.01, 1.0),
        ui.number("seed", int, 0, 2**31 - 1),
    ),
)
model = view.start()

with st.sidebar.expander("Model summary", expanded=False):
    st.table({label: [value] for label, value in model.info.rows()}, border="horizontal")

prompt, truncate = ui.prompt_form(model, page="generate")

with ui.guard("the run"):
    run = run_prompt(model, prompt, truncate=truncate)
    if run.truncated:
        st.info(f"The prompt was {run.truncated} tokens too long for the context: its start was dropped.")

    st.subheader(f"Tokens ({run.n_tokens}, BOS first)")
    ui.token_chips(run.labels, run.tokens.tolist())

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Next token")
        k = st.slider("How many candidates", 3, 30, 10, key=view.key("k"))
        topk = next_token_topk(model, run, k=k)
        ui.figure(draw.topk_bar(topk), "next-token", topk, topk.rows())
    with right:
        st.subheader("Generate, one token at a time")
        with st.form("generate"):
            mode = st.radio("Choose each token", SAMPLING_MODES, horizontal=True, key=view.key("sampling"))
            c1, c2 = st.columns(2)
            temperature = c1.number_input("temperature", 0.05, 5.0, 1.0, 0.05, key=view.key("temperature"))
            max_new = c2.number_input("new tokens", 1, 100, 20, key=view.key("new_tokens"))
            top_k = c1.number_input("top-k (0 = off)", 0, 1_000_000, 0, key=view.key("top_k"))
            top_p = c2.number_input("top-p (1 = off)", 0.01, 1.0, 1.0, 0.01, key=view.key("top_p"))
            seed = c1.number_input("seed", 0, 2**31 - 1, 0, key=view.key("seed"))
            go = st.form_submit_button("Generate")
        if go:
            sampling = Sampling(int(max_new), mode.startswith("greedy"), float(temperature), int(top_k), float(top_p), int(seed))
            gen = generate(model, prompt, sampling)
            st.markdown(f"**{prompt}**{gen.text}")
            st.caption(f"Stopped: {gen.stopped}.")
            ui.figure(draw.generation_steps(gen), "generation", gen)

view.share()
