"""The attribution graph of a prediction over transcoder features: the pruned graph, its top features checked by
ablation and doubling against random ones, and the graph in circuit-tracer's JSON (opens in its viewer); `viewer/` holds
the graph with its feature detail files as circuit-tracer's viewer reads them (serve it with circuit-tracer's
`serve(data_dir="viewer", features_dir="viewer/features")`)."""

from __future__ import annotations

import json
import time

from workbench import attribution_graph as ag
from workbench import attribution_graph_checks as graph_checks
from workbench import graph_files, task_circuits, tasks
from workbench.figures import attribution_graph as draw
from workbench.tokens import single_token_id

from .common import run_probe

DEFAULTS = {
    "model": "circuits",
    "prompt": "apple river stone cloud tiger lemon apple river stone",
    "answer": None,  # default: the top prediction
    "node_threshold": 0.8,
    "edge_threshold": 0.98,
    "top": 5,  # features in the checked supernode
    "factors": [0.0, 2.0],
    "slug": "workbench-graph",
    "task": None,  # check a task's circuits instead of one prompt (task_circuits)
    "task_pairs": 8,
    "random_draws": 10,
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--answer", help="the answer token (default: the top prediction)")
    p.add_argument("--node-threshold", dest="node_threshold", type=float, help="share of influence kept by node pruning (0.8)")
    p.add_argument("--edge-threshold", dest="edge_threshold", type=float, help="share kept by edge pruning (0.98)")
    p.add_argument("--top", type=int, help="how many of the most influential features to clamp together (5)")
    p.add_argument("--factors", type=float, nargs="+", help="set them to these multiples of their activation (0 2)")
    p.add_argument("--slug", help="the exported graph's name (letters, digits, - and _)")
    p.add_argument("--task", choices=list(tasks.TASKS), help="check the top supernode's effect on each pair of a task instead of one prompt "
                   "(the model's shipped task datasets; induction is built for any model): measured in the real model with "
                   "attention frozen (circuit-tracer's default), against the edges' prediction with the final norm live; the frozen-scale "
                   "prediction, attention-live and frozen-model changes beside it")  # fmt: skip
    p.add_argument("--task-pairs", type=int, dest="task_pairs", help="with --task: how many of its pairs (8)")
    p.add_argument("--random-draws", type=int, dest="random_draws", help="with --task: random supernodes per pair (10)")


def task_body(model, s, out):
    """--task: each pair's top supernode ablated (or set to the first factor), predicted against measured (task_circuits:
    real model, attention frozen, against the norm-aware prediction; the rows hold the first-order and frozen-scale
    predictions and the attention-live, replacement-model and frozen-model changes too)."""
    cfg = task_circuits.CheckConfig(
        top=int(s["top"]), factor=float(s["factors"][0]), pairs=int(s["task_pairs"]), random_draws=int(s["random_draws"])
    )
    t = time.time()
    c = task_circuits.check_task(model, s["task"], cfg)
    out.timing("task check", time.time() - t)
    out.figure(draw.task_check_figure(c), f"task-{s['task']}")
    out.data(f"task-{s['task']}", c, c.rows())
    out.manifest["summary"] = c.summary()


def body(model, s, out):
    if s.get("task"):
        return task_body(model, s, out)
    answer = single_token_id(model.tokenizer, s["answer"], "answer") if s.get("answer") else None
    t = time.time()
    g = ag.graph_of(model, s["prompt"], answer, float(s["node_threshold"]), float(s["edge_threshold"]))
    out.timing("graph", time.time() - t)
    out.figure(draw.graph_figure(g), "attribution-graph")
    out.data("attribution-graph-nodes", g.provenance, g.rows())
    top = g.top_features(int(s["top"]))
    checks = []
    for factor in s["factors"]:
        r = graph_checks.intervene(model, g, top, float(factor))
        out.figure(draw.intervention_figure(r), f"intervention-top-x{factor:g}")
        randoms = [
            graph_checks.intervene(
                model, g, graph_checks.random_features(g, len(top), seed=k, exclude=top), float(factor), references=False
            )
            for k in range(5)
        ]
        checks.append({**r.rows()[0], "random_attention_frozen": [x.attention_frozen for x in randoms],
                       "random_replacement": [x.replacement for x in randoms], "random_real": [x.real for x in randoms]})  # fmt: skip
    out.data("interventions", checks, checks)
    doc = graph_files.export(g, s["slug"], model.info.name, [["top"] + [g.node_id(i) for i in top]])
    out.text(f"{s['slug']}.json", json.dumps(doc))
    out.text("features.json", json.dumps(graph_files.feature_details(model, g)))
    # circuit-tracer's viewer folder: the graph, its listing, one detail file per feature (graph_files)
    graph_files.write(out.folder / "viewer", model, g, s["slug"], model.info.name, [["top"] + [g.node_id(i) for i in top]])
    out.manifest["summary"] = {
        "answer": g.logit_labels[0],
        "nodes": int(g.node_mask.sum()),
        "edges": int(g.edge_mask.sum()),
        "replacement_score": g.replacement_score,
        "completeness_score": g.completeness_score,
        "top": [g.label(i) for i in top],
        "checks": checks,
    }


def main(argv=None) -> int:
    return run_probe("attribution-graph", __doc__, add_arguments, DEFAULTS, body, argv)
