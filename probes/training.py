"""How a shipped model's mechanisms formed: head scores and in-context loss at every training checkpoint,
with the loss curve and the induction phase change marked."""

from __future__ import annotations

import time

from workbench import formation
from workbench.figures import formation as draw

from .common import run_probe

DEFAULTS = {"model": "circuits", "repeat_n": 50, "repeat_seqs": 8}


def add_arguments(p):
    p.add_argument("--repeat-n", type=int, dest="repeat_n", help="random tokens per copy in the repeated-token probe (default 50)")


def body(model, s, out):
    t = time.time()
    f = formation.formation(model.info.name, n=int(s["repeat_n"]), seqs=int(s["repeat_seqs"]), seed=int(s["seed"]))
    out.timing("checkpoints", time.time() - t)
    out.figure(draw.head_scores_over_training(f), "head-scores-over-training")
    out.figure(draw.in_context_loss(f), "in-context-loss")
    out.figure(draw.loss_curve(f), "loss-curve")
    out.data("formation", f, f.rows())
    change = f"between steps {f.phase_change[0]} and {f.phase_change[1]}" if f.phase_change else "none in these checkpoints"
    out.manifest["summary"] = {
        "checkpoints": list(f.steps),
        "phase_change": change,
        "best_induction_head_final": round(float(f.best("induction")[-1]), 4),
        "best_induction_layer_final": round(float(f.best_layer("induction")[-1]), 4),
        "in_context_loss_final": round(float(f.in_context_loss[-1]), 4),
    }


def main(argv=None) -> int:
    return run_probe("training", __doc__, add_arguments, DEFAULTS, body, argv)
