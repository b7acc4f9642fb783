"""Features: what the SAEs read on the prompt, each feature's dashboard, search, and regenerating with a feature changed."""

import streamlit as st

from workbench import features, ui
from workbench.figures import features as draw
from workbench.figures import intervene as draw_intervention
from workbench.generate import Sampling
from workbench.sae import USER, sae_set

view = ui.View(
    "Features",
    "Sparse autoencoders (SAEs) write the residual stream as a few active features out of many. See which features fire on "
    "your prompt, what each one fires on in held-out text, and what the model writes when one is ablated or clamped.",
    shared=("model", "prompt"),
    params=(
        ui.text("sae"),
        ui.number("feature", int, 0, 10_000_000),
        ui.text("query"),
        ui.number("value", float, -1e6, 1e6),
        ui.text("sae_folder"),
    ),
)
prompt_features = view.cached(features.prompt_features_of, entries=8)
stats = view.cached(features.stats_of, entries=8, spinner="Computing every feature's dashboard on held-out text (once)…")
dashboard = view.cached(features.dashboard_of, entries=32)
search = view.cached(features.search_of, entries=16)
intervene = view.cached(features.intervene, per_session=True, entries=4)
model = view.start()

with st.expander("Open an SAE folder (SAELens's format: cfg.json + sae_weights.safetensors)"):
    typed = st.text_input("SAE folder", key=view.key("sae_folder"), placeholder="~/saes/gpt2-small-res-jb/blocks.8.hook_resid_pre")
saes, folders = sae_set(model), ()
if typed and typed.strip():
    with ui.guard("the SAE folder"):
        saes, folders = sae_set(model, (typed.strip(),)), (typed.strip(),)
        opened = saes[USER + typed.strip()]
        st.success(f"Opened {typed.strip()}: {opened.d_sae:,} features reading {opened.hook_name}.")
if not saes:
    st.info(
        f"{model.info.name} ships no SAEs. Open a folder above, or train them: `python -m workbench.train sae {model.info.name}` "
        "(the English model ships SAEs at every layer)."
    )
    view.share()
    st.stop()

prompt, truncate = ui.prompt_form(model)
with ui.guard("the features"):
    names = list(saes)
    if st.session_state.get(view.key("sae")) not in names:  # a link's SAE this model does not have
        st.session_state[view.key("sae")] = names[-1] if folders else names[0]
    name = st.selectbox("SAE (where it reads the residual stream)", names, key=view.key("sae"))
    sae = saes[name]
    pf = prompt_features(model, prompt, folders)
    ui.figure(draw.strongest_by_layer(pf), "features-every-layer", pf)
    ui.probe_command("features", model, prompt=prompt, sae=name if not name.startswith(USER) else None, sae_folder=folders)
    per_position = st.slider("Features per position", 1, 8, 3, key="w.features_per_position")
    chosen, values = pf.strongest(name, per_position)
    if chosen:
        ui.figure(draw.token_feature_heatmap(pf, name, chosen, values), f"features-{name}", pf, pf.rows(name, chosen))
    else:
        st.info("No feature of this SAE is active on the prompt.")
    if not 0 <= st.session_state.get(view.key("feature"), -1) < sae.d_sae:  # first visit, or another SAE's feature
        st.session_state[view.key("feature")] = chosen[0] if chosen else 0
    feature = int(st.number_input(f"Feature (0 to {sae.d_sae - 1})", 0, sae.d_sae - 1, key=view.key("feature")))
    ui.figure(draw.feature_across_prompt(pf, name, feature), f"feature-{feature}-across-prompt", pf, pf.rows(name, [feature]))

with ui.guard("the feature's dashboard"):
    st.subheader(f"Feature {feature}: dashboard")
    stats(model, name, folders)
    d = dashboard(model, name, feature, folders)
    st.caption(f"On {d.tokens:,} tokens of held-out text ({d.text}); max activation {d.max:.3f}, active on {d.density:.3%} of tokens.")
    ui.figure(draw.contexts(d.top, d.max, f"Top activations of feature {feature}"), f"feature-{feature}-top", d, d.rows())
    left, right = st.columns(2)
    with left:
        ui.figure(draw.histogram(d), f"feature-{feature}-histogram", d)
        ui.figure(draw.nearest(d), f"feature-{feature}-nearest", d)
    with right:
        ui.figure(draw.logit_effect(d), f"feature-{feature}-logit-effect", d)
    with st.expander("Samples from lower activation bands"):
        for band, examples in d.bands.items():
            ui.figure(draw.contexts(examples, d.max, f"Feature {feature}, activations {band}"), f"feature-{feature}-{band}", d)

with ui.guard("the search"):
    st.subheader("Search features")
    query = st.text_input("A token (features whose top examples sit on it) or a piece of text (features most active on it)",
                          key=view.key("query"))  # fmt: skip
    if query:
        found = search(model, name, query, folders)
        st.dataframe(found, hide_index=True) if found else st.info("No feature found for that.")

with ui.guard("the intervention"):
    st.subheader(f"Intervene on feature {feature}")
    with st.form("intervention"):
        c1, c2, c3 = st.columns([1, 3, 1])
        st.session_state.setdefault(view.key("value"), 0.0)
        value = c1.number_input("Set it to (0 ablates)", key=view.key("value"))
        labels = [f"{p}: {t}" for p, t in enumerate(pf.labels)]
        picked = c2.multiselect("At positions (none: every position, generated ones included)", labels, key="w.features_positions")
        steps = c3.number_input("New tokens", 1, 64, 20, key="w.features_new_tokens")
        regenerate = st.form_submit_button("Regenerate", type="primary")
    positions = tuple(labels.index(p) for p in picked) or None
    args = (model, name, prompt, feature, float(value), positions, Sampling(max_new_tokens=int(steps)), folders)
    iv = intervene.peek(*args)
    if regenerate and iv is None:
        iv = intervene(*args)
    if iv is not None:
        ui.figure(draw_intervention.continuations(iv), f"feature-{feature}-intervention", iv, iv.continuation_rows())
        c1, c2 = st.columns(2)
        c1.markdown("**Original**")
        c1.code(prompt + iv.original.text, language=None)
        c2.markdown("**Edited**")
        c2.code(prompt + iv.edited.text, language=None)

card = features.card_of(model)
if card and not name.startswith(USER):
    with st.expander("How good are these SAEs (the card's measurements)"):
        ui.figure(draw.quality_curve(card), "sae-quality-curve", card)
        st.dataframe([{"hook": h, **r["quality"]} for h, r in card["hooks"].items()], hide_index=True)

view.share()
