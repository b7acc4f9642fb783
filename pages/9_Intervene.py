"""Intervene: ablate, steer and clamp, and see the original and the edited run side by side."""

import json

import streamlit as st

from workbench import conventions, examples, ui
from workbench import edit_values as values
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.edit_specs import HOW, SITE_HELP, STEER_SITES, parse_positions
from workbench.errors import InputError
from workbench.figures import intervene as draw
from workbench.generate import Sampling
from workbench.sae import saes_of
from workbench.tokens import single_token_id

EDITS = "wb.edits"  # the edit set's compact line (the URL carries it); not a widget key: the buttons below change it
REFUSED = "wb.edits_refused"  # why the last typed edit set was refused (the one before it stays)
KINDS = {
    "ablate a head": ("ablate", "head"),
    "ablate an MLP layer": ("ablate", "mlp"),
    "ablate a neuron": ("ablate", "neuron"),
    "ablate an SAE feature": ("ablate", "feature"),
    "clamp a neuron": ("clamp", "neuron"),
    "clamp an SAE feature": ("clamp", "feature"),
    "steer: the difference between two prompt sets": ("steer", "prompts"),
    "steer: an SAE feature's direction": ("steer", "feature"),
    "steer: a saved vector file": ("steer", "file"),
}

view = ui.View(
    "Intervene",
    "Change one thing inside the model — knock out heads, MLPs, neurons or SAE features, add a steering vector, clamp a "
    "unit — and compare the edited run with the original: the next token, the continuation, and where the predictions moved.",
    shared=("model", "prompt"),
    params=(
        ui.text("edits", EDITS),
        ui.choice("metric", iv.METRICS),
        ui.text("answer"),
        ui.text("wrong"),
        ui.number("tokens", int, 1, 64),
        ui.choice("sampling", ("greedy", "sampled")),
        ui.number("seed", int, 0, 1_000_000),
    ),
)
run = view.cached(iv.intervene, per_session=True, entries=4, spinner="Running both versions…")
head_sweep = view.cached(ivs.ablation_sweep, per_session=True, entries=4)
steer_sweep = view.cached(ivs.steering_sweep, per_session=True, entries=2)
model = view.start()
st.session_state.setdefault(EDITS, examples.edits(model.info.name))


def use_task_pair(pair) -> None:
    ui.use_prompt(pair.clean)
    st.session_state[view.key("metric")] = "logit difference"
    st.session_state[view.key("answer")], st.session_state[view.key("wrong")] = pair.answer, pair.wrong


ui.task_picker(model, use_task_pair)
prompt, _ = ui.prompt_form(model, page="generate")


def how_label(h: str) -> str:
    """An ablation's choice as the page shows it: a head's two zeros and the mean named by what they put in its place."""
    if h.startswith("zero"):
        return f"{h}: {conventions.convention(h)}"
    return values.mean_reference(model, edits.reference) if h == "mean" else h


def sweep_answers(r: iv.Intervention) -> str:
    """The steering sweep's default answer tokens where the edit has no prompts it steers toward (a feature, a file):
    the original run's two likeliest next words."""
    words = [t for t in (model.tokenizer.decode([i]) for i in r.ids) if t.startswith(" ") and t.strip()]
    return ", ".join(w.strip() for w in words[:2])


def set_edits(text: str) -> None:
    st.session_state[EDITS] = text
    st.session_state["w.edits_text"] = text
    st.session_state.pop(REFUSED, None)


def apply_typed() -> None:
    """The typed edit set becomes the experiment's, if it reads and fits the model; else it is refused, with the reason."""
    text = st.session_state["w.edits_text"]
    try:
        iv.check(model, iv.EditSet.parse(text))
    except InputError as err:
        st.session_state[REFUSED] = str(err)
        return
    st.session_state[EDITS] = text
    st.session_state.pop(REFUSED, None)


with ui.guard("the edit set"):
    edits = iv.EditSet.parse(st.session_state[EDITS])

with ui.guard("the new edit"), st.expander("Add an edit", expanded=not edits.edits):
    kind = st.selectbox("Edit", list(KINDS), key="w.add_kind")
    action, what = KINDS[kind]
    i = model.info
    c1, c2, c3, c4 = st.columns(4)
    saes = list(saes_of(model))
    sae = None
    if what == "feature":
        if saes:
            sae = c1.selectbox("SAE", saes, key="w.add_sae")
        else:
            sae = c1.text_input(
                "SAE folder", key="w.add_sae_folder", help="a folder in SAELens's format (cfg.json + sae_weights.safetensors)"
            )
    layer = None
    if what != "feature":
        layer = c1.number_input("Layer", 0, i.n_layers - 1, i.n_layers - 1, key="w.add_layer")
    index = None
    if what == "head":
        index = c2.number_input("Head", 0, i.n_heads - 1, 0, key="w.add_head")
    elif what == "neuron":
        index = c2.number_input("Neuron", 0, i.d_mlp - 1, 0, key="w.add_neuron")
    elif what == "feature":
        index = c2.number_input("Feature", 0, 1_000_000, 0, key="w.add_feature")
    positions = c4.text_input("Positions (empty: all)", key="w.add_positions", placeholder="e.g. 3,4,5")
    if action == "ablate":
        how = c3.selectbox(
            "By", HOW, key="w.add_how", format_func=how_label,
            help="zero (a head: its input-dependent output, as transformer-lens) · zero-whole (a head's whole output, as plain "
            "transformers and nnsight) · mean: over the reference prompts (the model's held-out text unless given; not the "
            "Graph page's random-token runs) · resample: the value in another prompt",
        )  # fmt: skip
        if how == "resample":
            st.text_input("Resample from this prompt", edits.resample, key="w.add_resample")
        new = iv.Ablate(
            what,
            int(layer) if layer is not None else None,
            None if index is None else int(index),
            how,
            parse_positions(positions),
            sae or None,
        )
    elif action == "clamp":
        value = c3.number_input("Value", value=0.0, key="w.add_value")
        new = iv.Clamp(what, int(layer) if layer is not None else None, int(index), float(value), parse_positions(positions), sae or None)
    else:
        coefficient = c3.number_input("Coefficient", value=2.0, key="w.add_coefficient")
        plus = minus = ()
        vector_file = feature = site = None
        if what == "prompts":
            site = c2.selectbox("Site", STEER_SITES, key="w.add_site", help=SITE_HELP)
            a, b = st.columns(2)
            plus = tuple(p for p in a.text_area("Towards these prompts (one per line)", key="w.add_plus").splitlines() if p.strip())
            minus = tuple(p for p in b.text_area("Away from these prompts (one per line)", key="w.add_minus").splitlines() if p.strip())
        elif what == "file":
            site = c2.selectbox("Site", STEER_SITES, key="w.add_site", help=SITE_HELP)
            vector_file = st.text_input("Vector file on the server (.safetensors, .pt, .npy)", key="w.add_path")
        else:
            feature, layer = int(index), None
        new = iv.Steer(
                None if layer is None else int(layer), float(coefficient), what, plus, minus, feature, sae or None, vector_file or None,
                site or "resid_pre", parse_positions(positions),
            )  # fmt: skip
    if st.button("Add this edit", type="primary", key="w.add"):
        resample = st.session_state.get("w.add_resample", edits.resample) if action == "ablate" else edits.resample
        candidate = iv.EditSet((*edits.edits, new), edits.reference, resample or "")
        iv.check(model, candidate)  # a bad edit is refused here, with its reason, and the set stays as it was
        set_edits(str(candidate))
        st.rerun()

with ui.guard("the intervention"):
    st.session_state.setdefault("w.edits_text", st.session_state[EDITS])
    with st.form("edits_form"):
        st.text_area(
            "The edit set (one line: edits separated by ';', as in the link)", key="w.edits_text", height=80,
            help="ablate head 1.2 mean · ablate mlp 0 zero · ablate neuron 0.37 resample · clamp neuron 0.37 3.5 · "
            "steer 1 4 prompts plus=the%20sea minus=the%20house · steer 1 2 file file=v.npy · resample <prompt>",
        )  # fmt: skip
        a, b = st.columns([1, 6])
        a.form_submit_button("Apply", type="primary", on_click=apply_typed)
        b.form_submit_button("Remove every edit", on_click=set_edits, args=("",))
    if REFUSED in st.session_state:
        st.error(f"Not applied: {st.session_state[REFUSED]}", icon="✋")
    if edits.edits:
        st.markdown("**Edits:** " + " · ".join(edits.labels()))
    else:
        st.info("No edits yet: both runs below are the same. Add an edit above.")

    c1, c2, c3, c4, c5 = st.columns(5)
    metric_kind = c1.selectbox("Metric", iv.METRICS, key=view.key("metric"))
    answer_text = c2.text_input("Answer token (empty: the original top token)", key=view.key("answer"))
    wrong_text = c3.text_input("Wrong token (logit difference)", key=view.key("wrong"))
    tokens = c4.number_input("Tokens to generate", 1, 64, 12, key=view.key("tokens"))
    mode = c5.radio("Continuation", ("greedy", "sampled"), key=view.key("sampling"), horizontal=True)
    seed = c5.number_input("Seed", 0, 1_000_000, 0, key=view.key("seed")) if mode == "sampled" else 0
    sampling = Sampling(max_new_tokens=int(tokens), greedy=mode == "greedy", seed=int(seed))
    metric = None
    if answer_text:
        answer = single_token_id(model.tokenizer, answer_text, "answer")
        wrong = single_token_id(model.tokenizer, wrong_text, "wrong") if wrong_text else None
        metric = iv.Metric(metric_kind, answer, wrong)
    elif metric_kind == "logit difference":
        st.warning("The logit difference needs an answer and a wrong token; showing the top token's probability.")
    r = run(model, prompt, edits, metric, sampling)
    ui.probe_command(
        "intervene", model, prompt=prompt, edits=str(edits), metric=r.metric.kind, answer=answer_text, wrong=wrong_text,
        tokens=int(tokens), sampling=mode, seed=None if sampling.greedy else sampling.seed,
    )  # fmt: skip

    if r.reference:
        st.caption(f"Mean ablation here: each unit's {r.reference}.")
    m1, m2, m3 = st.columns(3)
    m1.metric(f"{r.metric_label}, original", f"{r.before:.4f}")
    m2.metric(f"{r.metric_label}, edited", f"{r.after:.4f}", delta=f"{r.after - r.before:+.4f}")
    m3.metric("KL at the last position", f"{float(r.kl[-1]):.4f} nats")
    left, right = st.columns(2)
    with left:
        ui.figure(draw.next_token(r), "intervene-next-token", r, r.rows())
    with right:
        ui.figure(draw.kl_by_position(r), "intervene-kl", r)
    ui.figure(draw.continuations(r), "intervene-continuations", r, r.continuation_rows())
    st.markdown(f"**Original:** {r.prompt[-80:]}**{r.original.text}**")
    st.markdown(f"**Edited:** {r.prompt[-80:]}**{r.edited.text}**")
    decode = model.tokenizer.decode
    spec = {"model": model.info.name, "prompt": prompt, **edits.to_dict(), "metric": r.metric.kind, "answer": decode([r.metric.answer])}
    spec |= {"wrong": decode([r.metric.wrong])} if r.metric.wrong is not None else {}
    spec |= {"tokens": int(tokens), "sampling": mode, "seed": sampling.seed}
    st.download_button(
        "The experiment as a spec (JSON: python -m probes intervene --spec)", json.dumps(spec, indent=1, ensure_ascii=False),
        file_name="intervene.json", mime="application/json", key="dl-intervene-spec", on_click="ignore",
    )  # fmt: skip

    with st.expander("Which heads matter? Ablate each head alone"):
        how = st.radio(
            "Ablate by", HOW, key="w.sweep_how", horizontal=True, index=HOW.index("mean"),
            format_func=lambda h: "mean over the reference prompts" if h == "mean" else h,
        )  # fmt: skip
        st.caption(how_label(how) if how == "mean" else conventions.convention(how))
        sweep = head_sweep.peek(model, prompt, r.metric, how, edits)
        if sweep is None and st.button("Ablate every head (one batched pass)", key="w.run_head_sweep"):
            sweep = head_sweep(model, prompt, r.metric, how, edits)
        if sweep is not None:
            if sweep.note:
                st.info(sweep.note)
            ui.figure(draw.head_ablation(sweep), f"intervene-heads-{how}", sweep, sweep.ranked())
            st.dataframe(sweep.ranked(8), hide_index=True)

    steers = [e for e in edits.edits if isinstance(e, iv.Steer)]
    with st.expander("How hard to steer? The answer tokens against the damage"):
        if not steers:
            st.caption("Add a steering edit first; this sweeps its coefficient.")
        else:
            pick = st.selectbox("Steering edit", range(len(steers)), format_func=lambda k: steers[k].label(), key="w.sweep_steer")
            toward = ", ".join(dict.fromkeys(p.split()[-1] for p in steers[pick].plus if p.split()))  # what it steers toward
            answers_text = st.text_input(
                "Answer tokens (comma-separated, with their spaces)", toward or sweep_answers(r), key="w.sweep_answers"
            )
            coefficients = st.text_input("Coefficients", "0, 0.5, 1, 2, 4, 8", key="w.sweep_coefficients")
            try:
                coefs = tuple(float(c) for c in coefficients.split(",") if c.strip())
            except ValueError:
                raise InputError(f"coefficients are numbers separated by commas, got {coefficients!r}") from None
            answers = tuple(single_token_id(model.tokenizer, " " + t.strip(), "answer") for t in answers_text.split(",") if t.strip())
            held = values.reference_prompts(model)
            args = (model, steers[pick], answers, held[:8], held[8:16], coefs, edits)
            result = steer_sweep.peek(*args) if answers else None
            if not answers:
                st.caption("Type the answer tokens whose probability the sweep follows.")
            elif result is None and st.button("Sweep the coefficient", key="w.run_steer_sweep"):
                result = steer_sweep(*args)
            if result is not None:
                ui.figure(draw.steering(result), "intervene-steering", result, result.rows())
                st.caption("Answer tokens: on 8 windows of the held-out text; KL: on 8 other windows, against the unsteered run.")

view.share()
