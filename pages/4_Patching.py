"""Activation patching: clean vs corrupted prompts, every component, exact sweeps, AtP* (or plain AtP) as a preview."""

import json

import streamlit as st

from workbench import cost, edges, long, methods, mib, patching, paths, tasks, ui
from workbench.errors import InputError
from workbench.figures import methods as draw_methods
from workbench.figures import patching as draw
from workbench.metrics import METRICS
from workbench.patch_sites import SITES
from workbench.preview import PREVIEW_METHODS, preview_sweep, recall
from workbench.tokens import single_token_id

view = ui.View(
    "Activation patching",
    "Copy one activation from the clean run into the corrupted run (denoising), or the other way (noising), and watch "
    "the metric: 0 is the corrupted run's value, 1 the clean run's.",
    shared=("model", "clean", "corrupted"),
    params=(
        ui.choice("site", list(SITES)),
        ui.choice("direction", patching.DIRECTIONS),
        ui.choice("metric", METRICS),
        ui.number("pairs", int, 2, 64),
        ui.choice("preview", PREVIEW_METHODS),
    ),
)
# the sweeps a user asked for, remembered for this session only (a few: each holds a grid of results)
exact_sweep = view.cached(patching.sweep, per_session=True, entries=4)
dataset_sweep = view.cached(patching.sweep_dataset, per_session=True, entries=2)
path_patch = view.cached(paths.path_patch_named, per_session=True, entries=4)
model = view.start()


def use_task_pair(pair) -> None:
    ui.use_pair(pair.clean, pair.corrupted)
    st.session_state["w.answer_typed"], st.session_state["w.wrong_typed"] = pair.answer, pair.wrong


ui.task_picker(model, use_task_pair)
clean, corrupted = ui.pair_form(model)

with ui.guard("the patching"):
    cmp = tasks.compare_tokens(model, clean, corrupted)
    ui.token_rows(cmp.labels_a, cmp.labels_b, cmp.differ)
    if not cmp.same_length:
        st.error(
            f"The prompts must have the same number of tokens ({len(cmp.labels_a)} vs {len(cmp.labels_b)}): change the "
            "marked words for words of the same token count, or build the corrupted prompt below."
        )
    with st.expander("Build the corrupted prompt by replacing a word"):
        c1, c2, c3 = st.columns([2, 2, 1])
        word = c1.text_input("word in the clean prompt", key="w.replace_word")
        replacement = c2.text_input("replacement", key="w.replace_with")
        if c3.button("Replace") and word:
            ui.set_pair(clean, tasks.corrupt_word(model, clean, word, replacement))
            st.rerun()
    if not cmp.same_length:
        st.stop()

    answers, wrongs = tasks.candidate_answers(model, clean, corrupted)
    if view.key("preview") not in st.session_state:
        # AtP*'s GradDrop takes a backward pass per layer: the default preview only while that stays within half the budget
        star = cost.estimate(model, "AtP*", len(cmp.labels_a), passes=2, backward=model.info.n_layers + 1)
        st.session_state[view.key("preview")] = "AtP*" if star.seconds <= cost.BUDGET_S / 2 else "AtP"
    with st.form("answer_and_wrong"):
        c1, c2, c3, c4 = st.columns(4)
        answer_label = c1.selectbox(
            "Answer", list(answers), key="w.answer", help="first: the clean prompt's differing word; then the clean run's top predictions"
        )
        wrong_label = c2.selectbox(
            "Wrong",
            list(wrongs),
            key="w.wrong",
            help="first: the corrupted prompt's differing word; then the corrupted run's top predictions",
        )
        typed_answer = c1.text_input("…or type the answer token", key="w.answer_typed")
        typed_wrong = c2.text_input("…or type the wrong token", key="w.wrong_typed")
        metric = c3.selectbox("Metric", METRICS, key=view.key("metric"))
        direction = c3.radio("Direction", patching.DIRECTIONS, key=view.key("direction"), horizontal=True)
        site = c4.selectbox("Site", list(SITES), format_func=lambda s: f"{s}: {SITES[s].description}", key=view.key("site"))
        method = c4.radio(
            "Preview", PREVIEW_METHODS, key=view.key("preview"), horizontal=True,
            help="AtP*: attribution patching with the QK fix (queries, keys) and GradDrop; AtP: plain attribution patching",
        )  # fmt: skip
        st.form_submit_button("Preview", type="primary")
    answer = single_token_id(model.tokenizer, typed_answer, "answer") if typed_answer else answers[answer_label]
    wrong = single_token_id(model.tokenizer, typed_wrong, "wrong") if typed_wrong else wrongs[wrong_label]
    pair = tasks.Pair(clean, corrupted, answer, wrong)
    decode = model.tokenizer.decode
    ui.probe_command(
        "patching",
        model,
        clean=clean,
        corrupted=corrupted,
        answer=decode([answer]),
        wrong=decode([wrong]),
        metric=metric,
        direction=direction,
        site=site,
        preview=method,
    )

    n = len(cmp.labels_a)
    window = None
    if n > long.LONG_TOKENS and "position" in SITES[site].axes:
        # a long prompt: sweep a window of positions (by default the last 32), its cost said before it runs
        w1, w2 = st.columns(2)
        start = int(w1.number_input("Window: first position", 0, n - 1, max(0, n - 32), key="w.window_start"))
        stop = int(w2.number_input("Window: last position", start, n - 1, n - 1, key="w.window_stop"))
        window = (start, stop + 1)
    st.caption(long.sweep_cost(model, n, site, window).message())

    preview = None
    # a long prompt's preview takes its gradients block by block (n_layers + 1 backward passes for AtP*): only on request
    backward_mb = long.preview_bytes(model, n, site, method) / 2**20
    if n <= long.LONG_TOKENS or st.checkbox(
        f"Run the {method} preview (backward passes: about {backward_mb:,.0f} MB)", key="w.long_preview"
    ):
        preview = preview_sweep(model, pair, site, method=method, direction=direction, metric=metric)
        st.markdown(f"**Baselines** ({metric}): clean run **{preview.clean_value:.4f}**, corrupted run **{preview.corrupted_value:.4f}**.")
        if preview.note:
            st.warning(preview.note[0].upper() + preview.note[1:] + ".")
    exact = exact_sweep.peek(model, pair, site, direction, metric=metric, window=window)

    left, right = st.columns(2)
    with left:
        if preview is None:
            st.markdown(f"**Preview: {method}**")
            st.caption("Not run for a long prompt unless asked above.")
        else:
            passes = f"{preview.forward} forward and {preview.backward} backward passes, whatever the number of cells"
            st.markdown(f"**Preview: {preview.method}** ({passes}; ranks cells, misjudges sizes)")
            ui.figure(draw.patching_heatmap(preview, f"{preview.method} estimate"), f"patching-estimate-{site}", preview, preview.rows())
    with right:
        st.markdown("**Exact sweep** (one patched run per cell, batched)")
        if exact is None and st.button("Run the exact sweep", type="primary", key="w.run_exact"):
            with ui.progress("The exact sweep") as report:
                exact = exact_sweep(model, pair, site, direction, metric=metric, progress=report, window=window)
        if exact is not None:
            if exact.backend != "engine":
                st.info(f"Computed through the model's own hooks, not the fast engine: {exact.note}.")
            ui.figure(draw.patching_heatmap(exact), f"patching-{site}", exact, exact.rows())
            if preview is not None:
                st.caption(
                    f"Correlation of the preview with the exact sweep: {patching.correlation(preview, exact):.3f}; "
                    f"recall@5 (the exact top 5 cells among the {preview.method} preview's top 5): {recall(preview, exact, 5):.2f}"
                )
    if exact is not None:
        st.markdown("**The cells that move the metric most**")
        st.dataframe(exact.ranked(10), hide_index=True)
    elif preview is not None and st.button(f"Exact-check the {preview.method} preview's top 5 cells", key="w.exact_top"):
        st.dataframe(patching.exact_cells(model, preview, 5), hide_index=True)

    with st.expander("A dataset of prompt pairs (mean and spread)"):
        if model.info.name == "circuits":
            n_pairs = st.number_input("copying pairs (random words, the earlier copy corrupted)", 2, 64, 8, key=view.key("pairs"))
            pairs = tasks.induction_pairs(model, int(n_pairs), seed=0)
            result = dataset_sweep.peek(model, pairs, site, direction, metric=metric)
            if result is None and st.button("Sweep the dataset", key="w.run_dataset"):
                with ui.progress("The dataset sweep") as report:
                    result = dataset_sweep(model, pairs, site, direction, metric=metric, progress=report)
            if result is not None:
                ui.figure(draw.patching_heatmap(result), f"patching-dataset-{site}", result)
        else:
            st.caption("The circuits model ships a generator of copying pairs; probes take any dataset of pairs from a spec file.")

    # path patching (#18): a self-contained section, reading only `pair`, `metric` and `direction` from above
    with st.expander("Path patching: one sender's effect along chosen paths only"):
        prepared = methods.prepare(model, pair, direction, metric=metric)
        senders = paths.sender_choices(prepared.weights)
        sender = paths.find(
            senders, st.selectbox("Sender (a head's output or an MLP)", [s.label for s in senders], key="w.path_sender"), "sender"
        )
        options = paths.receiver_choices(prepared.weights, sender)
        labels = st.multiselect(
            "Receivers (heads' queries, keys or values, MLPs, the logits)", [r.label for r in options], default=[],
            key=f"w.path_receivers.{sender.label}", help="every receiver chosen is ordinary patching of the sender; the logits alone, its direct effect",
        )  # fmt: skip
        if labels:
            found = path_patch(model, pair, direction, sender.label, tuple(labels), metric=metric)
            st.markdown(f"Along the chosen paths: normalised effect **{found.normalised:.4f}** (metric {found.value:.4f}).")
            ui.figure(draw_methods.path_bars(found), f"path-patching-{sender.label}", found, found.rows())
            paths_chosen = [edges.Edge(sender, r) for r in options if r.label in labels]
            st.download_button(
                "These paths as a MIB circuit (JSON)", mib.from_edges(prepared.weights, paths_chosen).to_json(),
                file_name=f"circuit-{sender.label}.json", mime="application/json", key="dl-path-mib", on_click="ignore",
            )  # fmt: skip
        else:
            st.caption("Choose receivers: the logits alone give the sender's direct effect; every receiver, ordinary patching of it.")

    # circuits in MIB's JSON (#26): score a circuit file on this pair, as the MIB benchmark does (edges.circuit_faithfulness)
    with st.expander("A circuit from MIB's JSON: its faithfulness on this pair"):
        upload = st.file_uploader("MIB circuit JSON (cfg, nodes, edges: 'a0.h0->m1', 'input->a1.h2<q>')", type=["json"], key="w.mib_file")
        if upload is not None:
            try:
                doc = json.loads(upload.getvalue().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputError(f"{upload.name} is not JSON ({str(err).splitlines()[0]})") from None
            prepared = methods.prepare(model, pair, direction, metric=metric)
            circuit = mib.read(doc, prepared.weights)
            score = float(edges.circuit_faithfulness(prepared, list(circuit.edges), circuit.keep)[0])
            st.markdown(
                f"**{circuit.size}** of {len(circuit.edges)} edges in the circuit; faithfulness **{score:.4f}** "
                "(0: the base run, 1: the source run; every edge outside the circuit reads the base run's value)."
            )

view.share()
