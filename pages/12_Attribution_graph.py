"""Attribution graph: the circuit of one prediction, feature by feature, over transcoders; checked by intervention."""

import json

import streamlit as st

from workbench import attribution_graph as ag
from workbench import attribution_graph_checks as graph_checks
from workbench import graph_files, transcoder_contexts, ui
from workbench.errors import InputError
from workbench.figures import attribution_graph as draw
from workbench.tokens import single_token_id

view = ui.View(
    "Attribution graph",
    "The circuit of the next-token prediction over transcoder features (Ameisen et al. 2025): every MLP replaced by its "
    "transcoder, the rest of what it computes kept as error nodes, attention patterns and norm scales frozen, so that each "
    "edge is one node's direct, linear contribution to another's pre-activation. Pruned to the nodes and edges that carry "
    "most of the influence on the logits; every claim can be checked on the model by clamping features below.",
    shared=("model", "prompt"),
    params=(
        ui.number("node_threshold", float, 0.0, 1.0),
        ui.number("edge_threshold", float, 0.0, 1.0),
        ui.text("answer"),
        ui.text("node"),
        ui.text("supernodes"),
        ui.number("factor", float, -100.0, 100.0),
        ui.text("transcoders"),
    ),
)
build = view.cached(ag.graph_of, spinner="Computing the attribution graph…")


def intervention(model, prompt, answer, node_threshold, edge_threshold, truncate, folder, node_ids, factor, references):
    """(the nodes set to factor × their activation, as many random features set alike): attribution_graph_checks.intervene
    on the graph `build` remembers, keyed by values so that a rerun of the page (a click, a supernode typed) does not run
    the model again (about 8 forward passes each)."""
    g = build(model, prompt, answer, node_threshold, edge_threshold, truncate, folder)
    tcs = ag.transcoder_set(model, folder)
    nodes = [g.index_of(n) for n in node_ids]
    others = graph_checks.random_features(g, len(nodes), exclude=nodes)
    return (
        graph_checks.intervene(model, g, nodes, factor, tcs, references=references),
        graph_checks.intervene(model, g, others, factor, tcs, references=False),
    )


checked = view.cached(intervention, per_session=True, spinner="Setting the features on the model…")
contexts = view.cached(transcoder_contexts.top_contexts, entries=64)
model = view.start()
prompt, truncate = ui.prompt_form(model)
for name, default in (
    ("node_threshold", 0.8),
    ("edge_threshold", 0.98),
    ("answer", ""),
    ("node", ""),
    ("supernodes", ""),
    ("factor", 0.0),
    ("transcoders", ""),
):
    st.session_state.setdefault(view.key(name), default)


def parse_supernodes(text: str, g: ag.AttributionGraph) -> dict[str, list[int]]:
    """ "name: id id; other: id" -> {name: [node indices]}; an InputError names what does not parse."""
    found = {}
    for part in [p for p in text.split(";") if p.strip()]:
        if ":" not in part:
            raise InputError(f"a supernode is 'name: node_id node_id ...', got {part.strip()!r}")
        name, ids = part.split(":", 1)
        found[name.strip()] = [g.index_of(i) for i in ids.split()]
    return found


with ui.guard("the attribution graph"):
    folder = st.text_input(
        "Transcoders folder (blank: the model's own)", key=view.key("transcoders"),
        help="One subfolder per layer in SAELens's transcoder format (cfg.json with d_out and hook_name_out, sae_weights.safetensors)",
    ).strip() or None  # fmt: skip
    tcs = ag.transcoder_set(model, folder)
    if not tcs:
        st.info(
            f"{model.info.name} has no transcoders. Train them with `python -m workbench.train transcoders {model.info.name}` "
            "(a minute or two of CPU per layer on the shipped models)."
        )
        st.stop()
    c1, c2, c3 = st.columns(3)
    node_threshold = c1.number_input("Node threshold (share of influence kept)", 0.0, 1.0, step=0.05, key=view.key("node_threshold"))
    edge_threshold = c2.number_input("Edge threshold", 0.0, 1.0, step=0.01, key=view.key("edge_threshold"))
    typed_answer = c3.text_input("Answer token (blank: the top prediction)", key=view.key("answer"))
    answer = single_token_id(model.tokenizer, typed_answer, "answer") if typed_answer else None
    g = build(model, prompt, answer, float(node_threshold), float(edge_threshold), truncate, folder)
    ui.probe_command("attribution-graph", model, prompt=prompt, answer=typed_answer, node_threshold=node_threshold)
    st.markdown(
        f"**{g.active_total}** active features ({g.n_features} computed), **{int(g.node_mask.sum())}** nodes and "
        f"**{int(g.edge_mask.sum())}** edges kept. Replacement score **{g.replacement_score:.2f}** (share of the tokens' and errors' "
        f"influence that is the tokens', through features), completeness **{g.completeness_score:.2f}** (share of the nodes' input "
        "that is not error)."
    )
    if g.plan is not None and g.plan.rows < g.plan.wanted:  # a long prompt: fewer feature rows computed, to fit the budget
        st.caption(g.plan.message())
    kept = [i for i in g.top_features(g.n_features)]
    st.text_input(
        "Supernodes (name: node_id node_id …; separate groups with ;)", key=view.key("supernodes"),
        help="Group features by hand; the grouping is kept in the link. Node ids are layer_feature_position.",
    )  # fmt: skip
    supernodes = parse_supernodes(st.session_state[view.key("supernodes")], g)
    ids = [""] + [g.node_id(i) for i in kept]
    if st.session_state[view.key("node")] not in ids:
        st.session_state[view.key("node")] = ""
    clicked = draw.node_of_selection(ui.clicked("attribution-graph"))  # a node clicked in the graph picks it
    if clicked in ids:
        st.session_state[view.key("node")] = clicked
    left, right = st.columns([3, 1])
    with right:
        st.selectbox(
            "Feature (by influence)", ids, key=view.key("node"),
            format_func=lambda n: "—" if not n else f"{n}  {g.label(g.index_of(n))}",
        )  # fmt: skip
    picked = g.index_of(st.session_state[view.key("node")]) if st.session_state[view.key("node")] else None
    with left:
        ui.figure(draw.graph_figure(g, picked, supernodes), "attribution-graph", g.provenance, g.rows(), select=True)
        st.caption("Click a feature in the graph to open it.")
    st.download_button(
        "Export for circuit-tracer's viewer (graph JSON)",
        data=lambda: json.dumps(
            graph_files.export(g, "workbench-graph", model.info.name, [[n] + [g.node_id(i) for i in m] for n, m in supernodes.items()])
        ),
        file_name="workbench-graph.json", mime="application/json", on_click="ignore",
    )  # fmt: skip

    if picked is not None:
        layer, pos, f = g.features[picked].tolist()
        st.subheader(f"Feature {f} of layer {layer} (at position {pos}, activation {float(g.activations[picked]):.3f})")
        details = graph_files.feature_details(model, g, tcs)[g.node_id(picked)] if g.node_mask[picked] else None
        a, b = st.columns(2)
        if details:
            with a:
                ui.figure(draw.feature_figure(g.labels, details["activations"], "Its activation on the prompt"), "ag-feature-prompt")
            with b:
                ui.figure(
                    draw.logit_effect_figure(details["top_logits"], details["top_logit_values"], details["bottom_logits"],
                                             details["bottom_logit_values"], "Logit effect of its decoder row"),
                    "ag-feature-logits",
                )  # fmt: skip
        c = contexts(model, layer, f, 8, folder)
        st.markdown(f"**Top held-out contexts** ({c.data}; active on {c.density:.1%} of its tokens)")
        st.dataframe(c.rows(), hide_index=True)
        i1, i2 = st.columns(2)
        i1.markdown("**Incoming edges**")
        i1.dataframe([dict(source=g.label(j), weight=w) for j, w in g.edges_into(picked, 15)], hide_index=True)
        i2.markdown("**Outgoing edges**")
        i2.dataframe([dict(target=g.label(j), weight=w) for j, w in g.edges_from(picked, 15)], hide_index=True)

    st.subheader("Check it on the model: clamp or ablate")
    targets = {f"supernode {n}": m for n, m in supernodes.items()}
    targets |= {"the graph's top 5 features": g.top_features(5)}
    if picked is not None:
        targets = {f"feature {g.node_id(picked)}": [picked], **targets}
    c1, c2 = st.columns([2, 1])
    which = c1.selectbox("What to change", list(targets))
    factor = c2.number_input("Set to × its activation (0 ablates)", -100.0, 100.0, step=0.5, key=view.key("factor"))
    nodes = targets[which]
    if nodes:
        # the references cost 4 forward passes more: on a large model, only on request
        refs = st.checkbox("Also the two first-order references (4 more forward passes)", key="w.ag_references")
        node_ids = [g.node_id(i) for i in nodes]
        r, random = checked(
            model, prompt, answer, float(node_threshold), float(edge_threshold), truncate, folder, node_ids, float(factor), refs
        )
        ui.figure(draw.intervention_figure(r), "ag-intervention", r, r.rows())
        st.caption(
            "Predicted: the graph's edges into the answer's logit, the final norm's share and the normalised stream, "
            "combined by the norm's formula, so that the final norm's scale moves with the change as the real model's "
            "does (first order: the share alone); 'norm scales frozen': the logit's edges alone, every scale held as "
            "the graph is built. "
            f"As many random features set the same way change it by {random.attention_frozen:+.3f} (real model, attention "
            f"frozen: circuit-tracer's default), {random.real:+.3f} (attention live) and {random.replacement:+.3f} "
            "(replacement model)."
            + (
                " The two references are not the graph's: the stream carried along its tangent to this factor, the final "
                "norm exact, in the real model and in the replacement model (attention frozen); where the measurement "
                "meets the first and not the second, the transcoders do not respond as the MLPs do."
                if refs
                else ""
            )
        )
        t1, t2 = st.columns(2)
        t1.markdown("**Next token, before**")
        t1.dataframe([dict(token=t, probability=p) for t, p in r.top_before], hide_index=True)
        t2.markdown("**Next token, with the change (real model)**")
        t2.dataframe([dict(token=t, probability=p) for t, p in r.top_after], hide_index=True)
        if st.button("Continue the text with and without the change", key="w.ag_continue"):
            before, after = graph_checks.continuations(model, g, nodes, float(factor), tcs=tcs)
            st.markdown(f"**Original:** {before.text!r}\n\n**Changed:** {after.text!r}")

view.share()
