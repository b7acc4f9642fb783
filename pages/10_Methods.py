"""Methods: which patching estimate to trust on this model and task, scored against exact patching."""

import streamlit as st

from workbench import engine, methods, mib, patching, scoreboard, tasks, ui
from workbench.figures import methods as draw
from workbench.metrics import METRICS

view = ui.View(
    "Patching methods",
    "Cheap estimates of activation patching (AtP, AtP* on nodes; EAP, EAP-IG on edges) "
    "scored against exact patching on a task: rank correlation, recall of the exact top 10, "
    "the faithfulness of the circuits each ranking builds, and time.",
    shared=("model", "clean", "corrupted"),
    params=(
        ui.choice("task", (*scoreboard.TASKS, *tasks.TASKS)),
        ui.number("pairs", int, 1, 32),
        ui.choice("direction", patching.DIRECTIONS),
        ui.choice("metric", METRICS),
        ui.number("steps", int, 1, 32),
        ui.number("top", int, 1, 50),
    ),
)
run_scoreboard = view.cached(scoreboard.run, per_session=True, entries=2)
model = view.start()

with ui.guard("the methods scoreboard"):
    with st.form("methods_task"):
        c1, c2, c3, c4, c5 = st.columns(5)
        # generated copying pairs suit the word-vocabulary copying models, a shipped task dataset the model it ships with;
        # elsewhere the task starts from the shared prompt pair
        options = scoreboard.tasks_of(model)
        copying = model.info.name.split("@")[0] in ("circuits", "answer-key")
        default = 0 if copying else (2 if len(options) > 2 else 1)
        if st.session_state.get(view.key("task")) not in options:  # a link's task dataset that this model does not ship
            st.session_state.pop(view.key("task"), None)
        task = c1.selectbox(
            "Task", options, index=default, key=view.key("task"),
            help="generated copying pairs, pairs you type, or a task dataset shipped with the model",
        )  # fmt: skip
        n_pairs = c2.number_input("Pairs", 1, 32, 8, key=view.key("pairs"), help="generated copying pairs, or the first of a task dataset")
        direction = c3.radio("Direction", patching.DIRECTIONS, key=view.key("direction"), horizontal=True)
        metric = c4.selectbox("Metric", METRICS, key=view.key("metric"))
        steps = c5.number_input("EAP-IG steps", 1, 32, 5, key=view.key("steps"))
        clean, corrupted = st.session_state.get(ui.CLEAN), st.session_state.get(ui.CORRUPTED)
        if clean is None or corrupted is None:
            clean, corrupted = ui.example_pair(model.info.name)
        answers, wrongs = tasks.candidate_answers(model, clean, corrupted)
        typed = st.text_area(
            "Typed pairs, one per line: clean | corrupted | answer | wrong",
            f"{clean} | {corrupted} | {model.tokenizer.decode([next(iter(answers.values()))]).strip()} | "
            f"{model.tokenizer.decode([next(iter(wrongs.values()))]).strip()}",
            key="w.methods_typed",
            help="answer and wrong are single tokens; every pair of a task should have the same number of tokens per prompt",
        )
        st.form_submit_button("Score the methods", type="primary")
    pairs = scoreboard.task_pairs(model, task, int(n_pairs), typed)
    ui.probe_command("scoreboard", model, task=task, pairs=int(n_pairs), direction=direction, metric=metric, steps=int(steps))
    # exact patching of every edge: seconds on the shipped models, hours on GPT-2 small: only on request above the budget
    sb = run_scoreboard.peek(model, pairs, task, direction, int(steps), metric=metric)
    if sb is None and ui.gate(scoreboard.estimate(model, pairs, int(steps)), "Score the methods", "methods"):
        with ui.progress("The methods scoreboard") as report:
            sb = run_scoreboard(model, pairs, task, direction, int(steps), progress=report, metric=metric)
    if sb is None:
        st.stop()

    st.markdown(f"**Scoreboard** — {sb.task}, {sb.n_pairs} pair(s), {sb.direction}; whole scoreboard {sb.seconds:.1f} s.")
    st.dataframe(sb.table(), hide_index=True)
    st.caption(
        "Nodes here are a head's queries, keys or values and an MLP's output; edges a sender joined to a receiver (the "
        "Information flow page's nodes are residual-stream points). Faithfulness: a circuit's normalised metric, 0 the base "
        "run, 1 the source run."
    )
    ui.figure(draw.faithfulness_curves(sb), "methods-faithfulness", sb, sb.table())

    st.markdown("**AtP\\* on nodes**: its ranking of the nodes against the exact one (the Patching page's preview ranks cells)")
    top = st.slider("top k", 1, len(sb.nodes["exact"].nodes), min(10, len(sb.nodes["exact"].nodes)), key=view.key("top"))
    star, exact = sb.nodes["AtP*"], sb.nodes["exact"]
    st.caption(
        f"Recall@{top} against the exact sweep: AtP* {scoreboard.recall_at(top, scoreboard.floored(star.magnitude), scoreboard.floored(exact.magnitude)):.2f}, "
        f"AtP {scoreboard.recall_at(top, scoreboard.floored(sb.nodes['AtP'].magnitude), scoreboard.floored(exact.magnitude)):.2f}."
    )
    left, right = st.columns(2)
    with left:
        ui.figure(draw.estimate_vs_exact(star, exact, top), "methods-atp-star-vs-exact", star, star.ranked())
    with right:
        ui.figure(
            draw.estimate_vs_exact(sb.edges["EAP-IG"], sb.edges["exact"], top),
            "methods-eap-ig-vs-exact",
            sb.edges["EAP-IG"],
            sb.edges["EAP-IG"].ranked(),
        )
    w = engine.weights_of(model)
    for col, method in zip(st.columns(2) if w.n_kv_heads == w.n_heads else (), ("EAP-IG", "exact"), strict=False):  # MIB: no grouped heads
        col.download_button(
            f"{method} edge scores, top {top} as the circuit (MIB JSON)", mib.from_effects(w, sb.edges[method], top).to_json(),
            file_name=f"circuit-{method}-top{top}.json", mime="application/json", key=f"dl-mib-{method}", on_click="ignore",
        )  # fmt: skip
    if st.button(f"Exact-check AtP*'s top {top} nodes", key="w.methods_check"):
        prepared = methods.prepare_all(model, pairs, direction, metric=metric)
        st.dataframe(methods.exact_check(model, star, prepared, top), hide_index=True)

view.share()
