"""Which patching estimate to trust: AtP, AtP*, EAP and EAP-IG scored against exact patching on a task (Spearman,
recall@10, circuit faithfulness curves, time); with --sender, path patching of one sender along chosen receivers."""

from __future__ import annotations

import time

from workbench import engine, mib, patching, paths, scoreboard, tasks
from workbench.figures import methods as draw
from workbench.metrics import METRICS

from .common import run_probe

DEFAULTS = {
    "task": "induction pairs",
    "pairs": 8,
    "typed": [],  # spec: lines "clean | corrupted | answer | wrong" (task "typed pairs")
    "metric": "logit difference",
    "direction": "denoising",
    "steps": 5,
    "sender": None,
    "receivers": ["logits"],
    "model": "circuits",
}


def add_arguments(p):
    p.add_argument(
        "--task", choices=(*scoreboard.TASKS, *tasks.TASKS), help="a task dataset (ioi, pronoun, ...) needs a model that ships it"
    )
    p.add_argument("--pairs", type=int, help="pairs: generated (task 'induction pairs') or the first of a task dataset")
    p.add_argument("--typed", action="append", help="a pair 'clean | corrupted | answer | wrong' (task 'typed pairs'); repeat for more")
    p.add_argument("--metric", choices=METRICS)
    p.add_argument("--direction", choices=patching.DIRECTIONS)
    p.add_argument("--steps", type=int, help="EAP-IG's points (default 5)")
    p.add_argument("--sender", help="path patching: a head 'L0H1' or an MLP 'L0 MLP', on the task's first pair")
    p.add_argument("--receiver", action="append", dest="receivers", help="path patching receiver: 'L1H3.k', 'L1 MLP', 'logits' (repeat)")


def body(model, s, out):
    t = time.time()
    pairs = scoreboard.task_pairs(model, s["task"], int(s["pairs"]), "\n".join(s["typed"] or []), int(s["seed"]))
    est = scoreboard.estimate(model, pairs, int(s["steps"]))
    print(f"{est.line()} (Ctrl-C stops it)", flush=True)
    out.manifest["estimate_s"] = est.seconds
    sb = scoreboard.run(model, pairs, s["task"], s["direction"], int(s["steps"]), metric=s["metric"])
    out.figure(draw.faithfulness_curves(sb), "methods-faithfulness")
    out.figure(draw.estimate_vs_exact(sb.nodes["AtP*"], sb.nodes["exact"]), "methods-atp-star-vs-exact")
    out.figure(draw.estimate_vs_exact(sb.edges["EAP-IG"], sb.edges["exact"]), "methods-eap-ig-vs-exact")
    out.data("scoreboard", sb, sb.table())
    for level, results in (("nodes", sb.nodes), ("edges", sb.edges)):
        for method, r in results.items():
            out.data(f"{level}-{method.replace('*', '-star')}", r, r.ranked())
    out.manifest["scoreboard"] = sb.table()
    w = engine.weights_of(model)
    if w.n_kv_heads == w.n_heads:  # MIB's graph has no grouped key/value heads
        for method in ("EAP-IG", "exact"):  # the edge scores as MIB circuit JSON, the top 10 edges as the circuit
            out.text(f"circuit-{method}-top10.json", mib.from_effects(w, sb.edges[method], min(10, len(sb.edges[method].edges))).to_json())
    out.timing("scoreboard", time.time() - t)
    for row in sb.table():
        print(f"{row['level']:<6} {row['method']:<7} spearman {row['spearman']:.3f}  recall@10 {row['recall@10']:.2f}  "
              f"area {row['area']:.3f}  {row['seconds']:.2f} s  passes/pair {row['forward']} fwd {row['backward']} bwd")  # fmt: skip
    if s["sender"]:
        t = time.time()
        r = paths.path_patch_named(model, pairs[0], s["direction"], s["sender"], tuple(s["receivers"] or ["logits"]), metric=s["metric"])
        out.figure(draw.path_bars(r), "path-patching")
        out.data("path-patching", r, r.rows())
        out.timing("path patching", time.time() - t)


def main(argv=None) -> int:
    return run_probe("scoreboard", __doc__, add_arguments, DEFAULTS, body, argv)
