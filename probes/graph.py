"""Information-flow graph of one prediction (Ferrando & Voita 2024): the routes above a threshold, per-head edges,
contrastive mode, and its faithfulness by ablation (everything outside the graph; top-k vs k random edges)."""

from __future__ import annotations

from workbench import graph, graph_faithfulness
from workbench.figures import graph as draw
from workbench.tokens import single_token_id

from .common import run_probe

DEFAULTS = {
    "prompt": None,  # the model's example for this view (workbench/examples.py)
    "position": -1,
    "threshold": graph.THRESHOLD,
    "answer": None,
    "wrong": None,
    "ablation": "mean",
    "k": 5,
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--position", type=int, help="the prediction after this position (default: the last)")
    p.add_argument("--threshold", type=float, help=f"keep edges above this share of their node's update (default {graph.THRESHOLD})")
    p.add_argument("--answer", help="the token the graph explains, e.g. ' whale' (default: the top prediction)")
    p.add_argument("--wrong", help="contrastive mode: the token the answer is compared with")
    p.add_argument("--ablation", choices=graph_faithfulness.ABLATIONS, help="faithfulness check: mean (over random-token prompts) or zero")
    p.add_argument("--k", type=int, help="top-k edges of the graph vs k random edges, ablated (default 5)")


def body(model, s, out):
    answer = single_token_id(model.tokenizer, s["answer"], "answer") if s["answer"] else None
    wrong = single_token_id(model.tokenizer, s["wrong"], "wrong") if s["wrong"] else None
    g = graph.build(model, s["prompt"], int(s["position"]), float(s["threshold"]), answer, wrong)
    name = f"graph-pos{g.position}"
    out.figure(draw.graph_figure(g), name)
    out.figure(draw.graph_figure(g, by_head=True), f"{name}-by-head")
    out.data(name, g.document(), g.rows())
    f = graph_faithfulness.faithfulness(model, g, s["ablation"], int(s["k"]))
    out.figure(draw.faithfulness_figure(f), f"faithfulness-pos{g.position}")
    out.data(f"faithfulness-pos{g.position}", f, f.rows())
    out.notes.append(f.verdict)
    print(f.verdict)


def main(argv=None) -> int:
    return run_probe("graph", __doc__, add_arguments, DEFAULTS, body, argv)
