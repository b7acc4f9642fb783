"""Attention patterns of a prompt: every head at a glance, one head in full, and one head's arithmetic."""

from __future__ import annotations

from workbench import attention
from workbench.figures import attention as draw

from .common import run_probe

DEFAULTS = {
    "prompt": None,  # the model's example for this view (workbench/examples.py)
    "layer": 0,
    "head": 0,
    "query": -1,
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--layer", type=int)
    p.add_argument("--head", type=int)
    p.add_argument("--query", type=int, help="query position for the head's arithmetic (default: last)")


def body(model, s, out):
    p = attention.patterns(model, s["prompt"])
    fig, _ = draw.pattern_grid(p)
    out.figure(fig, "patterns-all-heads")
    out.data("patterns", p)
    layer, head = int(s["layer"]), int(s["head"])
    out.figure(draw.pattern_heatmap(p, layer, head), f"pattern-L{layer}H{head}")
    out.data(f"pattern-L{layer}H{head}", p.head(layer, head), attention.pattern_rows(p, layer, head))
    a = attention.head_anatomy(model, s["prompt"], layer, head, int(s["query"]))
    out.figure(draw.anatomy_figure(a), f"anatomy-L{layer}H{head}")
    out.data(f"anatomy-L{layer}H{head}", a)


def main(argv=None) -> int:
    return run_probe("attention", __doc__, add_arguments, DEFAULTS, body, argv)
