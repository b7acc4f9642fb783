"""Information flow: the routes through the model that made one prediction, checked by ablation."""

import streamlit as st

from workbench import attention, cost, graph, graph_faithfulness, graph_nodes, graph_parts, ui
from workbench.figures import attention as draw_attention
from workbench.figures import graph as draw
from workbench.tokens import single_token_id

EDGE_VIEWS = ("summed over heads", "by head")
view = ui.View(
    "Information flow",
    "Which routes through the model made this prediction (Ferrando & Voita 2024): every update of the residual stream is split "
    "into its parts (the incoming residual, each token through each head, the MLP), each part's importance is how close it comes "
    "to the whole, and the parts above the threshold are followed back from the output. Checked by ablation beside it.",
    shared=("model", "prompt", "pos"),
    params=(
        ui.number("threshold", float, 0.0, 0.99),
        ui.text("answer"),
        ui.text("wrong"),
        ui.choice("ablation", graph_faithfulness.ABLATIONS),
        ui.number("k", int, 1, 100),
        ui.choice("edges", EDGE_VIEWS),
    ),
)
build = view.cached(graph.build, spinner="Tracing the routes…")
faithfulness_of = view.cached(graph_faithfulness.faithfulness_of, spinner="Checking the graph by ablation…")
model = view.start()


def use_task_pair(pair) -> None:
    ui.use_prompt(pair.clean)
    st.session_state[view.key("answer")], st.session_state[view.key("wrong")] = pair.answer, pair.wrong
    for key in (ui.POSITION, "w.position"):  # the prediction after the prompt's last token
        st.session_state.pop(key, None)


ui.task_picker(model, use_task_pair)
prompt, truncate = ui.prompt_form(model)
for name, default in (
    ("threshold", graph.THRESHOLD),
    ("answer", ""),
    ("wrong", ""),
    ("ablation", "mean"),
    ("k", 5),
    ("edges", EDGE_VIEWS[0]),
):
    st.session_state.setdefault(view.key(name), default)

with ui.guard("the information-flow graph"):
    run = graph_parts.graph_run(model, prompt, truncate)
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    with c1:
        position = ui.position_picker(run.labels, "Prediction after position")
    threshold = c2.number_input("Threshold", 0.0, 0.99, step=0.01, format="%.3f", key=view.key("threshold"))
    typed_answer = c3.text_input("Answer token (blank: the top prediction)", key=view.key("answer"))
    typed_wrong = c4.text_input("Wrong token (blank: no comparison)", key=view.key("wrong"))
    answer = single_token_id(model.tokenizer, typed_answer, "answer") if typed_answer else None
    wrong = single_token_id(model.tokenizer, typed_wrong, "wrong") if typed_wrong else None
    g = build(model, prompt, position, float(threshold), answer, wrong, truncate)
    ui.probe_command(
        "graph", model, prompt=prompt, position=position, threshold=threshold, answer=typed_answer, wrong=typed_wrong,
        ablation=st.session_state[view.key("ablation")], k=st.session_state[view.key("k")],
    )  # fmt: skip
    if g.error > 1e-3:
        st.warning(f"The parts do not sum to the residual here (largest difference {g.error:.2e}): read the importances with care.")

    picked: graph.Edge | tuple[int, int] | None = None
    left, right = st.columns([3, 1])
    with right:
        st.markdown("**Choose an edge or a node**")
        ranked = g.ranked()
        edge = st.selectbox(
            "Edge (by the share of the output through it)",
            [None, *range(len(ranked))],
            format_func=lambda r: "—" if r is None else (
                f"{ranked[r].kind} L{ranked[r].layer}: {ranked[r].source[1]} → {ranked[r].destination[1]} (flow {ranked[r].flow:.2f})"
            ),
            key="w.graph_edge",
        )  # fmt: skip
        node = st.selectbox(
            "Node",
            [None, *range(len(g.nodes))],
            format_func=lambda r: "—" if r is None else f"{g.points[g.nodes[r][0]]} @ {g.nodes[r][1]} {g.labels[g.nodes[r][1]]}",
            key="w.graph_node",
        )
        picked = ranked[edge] if edge is not None else (g.nodes[node] if node is not None else None)
        edges_as = st.radio("Attention edges", EDGE_VIEWS, key=view.key("edges"))
    with left:
        ui.figure(draw.graph_figure(g, picked, by_head=edges_as == "by head"), f"graph-pos{g.position}", g.document(), g.rows())

    if isinstance(picked, graph.Edge) and picked.kind == "attention":
        strongest = max(range(len(picked.heads)), key=lambda h: picked.heads[h])
        head = st.selectbox(
            "Head of this edge (default: the strongest)", range(len(picked.heads)), index=strongest, key="w.graph_head",
            format_func=lambda h: f"H{h} (importance {picked.heads[h]:.3f})",
        )  # fmt: skip
        a, b = st.columns(2)
        with a:
            ui.figure(
                draw.heads_figure(picked, f"Heads of layer {picked.layer}: {picked.source[1]} → {picked.destination[1]}"), "graph-heads"
            )
        with b:
            p = attention.patterns_of(run)
            st.caption(
                f"Layer {picked.layer} head {head}: its attention pattern (the edge is query {picked.destination[1]}, key {picked.source[1]})."
            )
            ui.figure(
                draw_attention.pattern_heatmap(p, picked.layer, head), f"graph-pattern-L{picked.layer}H{head}", p.head(picked.layer, head)
            )
    if isinstance(picked, graph.Edge) and picked.kind == "mlp":
        n = graph_nodes.top_neurons(model, run, picked.layer, picked.destination[1])
        st.markdown(f"**Top neurons of the MLP in layer {picked.layer} at position {picked.destination[1]}** (share of its output)")
        st.dataframe(n.rows(), hide_index=True)
    if picked is not None:
        destination = picked.destination if isinstance(picked, graph.Edge) else picked
        r = graph_nodes.read_node(model, run, destination[0], destination[1])
        st.markdown(
            f"**The logit lens at {g.points[destination[0]]} @ {destination[1]}** and what the update written there promotes and suppresses"
        )
        st.dataframe(r.rows(), hide_index=True)

    st.subheader("Faithfulness")
    st.caption(
        "The share of the metric left when every part outside the graph is ablated: 0 is everything ablated, 1 the model's "
        "own run. Nodes here are the residual stream at one point and position, edges the parts of their updates "
        "(the Methods page's nodes are heads' inputs and MLPs, its edges senders to receivers)."
    )
    c1, c2, _ = st.columns([1, 1, 3])
    ablation = c1.radio("Ablation", graph_faithfulness.ABLATIONS, key=view.key("ablation"), horizontal=True,
                        format_func=graph_faithfulness.ablation_reference,
                        help="mean: each part's mean over runs of random tokens (not the Intervene page's held-out text); zero: remove the parts (patterns held at the clean run's; in "
                        "transformer-lens's folded coordinates a head's constant output (b_V + β·W_V)·W_O stays, as 'zero' on the Intervene page)")  # fmt: skip
    k = int(c2.number_input("k (top vs random edges)", 1, 100, key=view.key("k")))
    args = (model, prompt, position, float(threshold), answer, wrong, ablation, k, truncate)
    f = faithfulness_of.peek(*args)
    # about 20 forward passes: at once within the cost budget, on request above it
    if f is None:
        est = cost.estimate(model, "the faithfulness check", position + 1, passes=20)
        f = ui.gated(est, "Check the graph by ablation", "graph_check", faithfulness_of, *args)
    if f is not None:
        (st.success if f.survives else st.warning)(f.verdict[0].upper() + f.verdict[1:] + ".")
        st.markdown(
            f"Ablating the graph's top {f.k} edges drops the metric by **{f.top_drop:.0%}**; {f.k} random edges: "
            f"**{f.random_drop:.0%}** on average ({len(f.random_k)} draws). Answer still the top prediction with only the graph: "
            f"**{'yes' if f.answer_top1 else 'no'}**."
        )
        ui.figure(draw.faithfulness_figure(f), f"graph-faithfulness-pos{g.position}", f, f.rows())

view.share()
