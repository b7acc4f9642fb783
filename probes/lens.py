"""Logit lens (and tuned lens, where the model has one) over the prompt(s): top-1 by layer and position,
tracked tokens at every point, entropy and KL to the final distribution."""

from __future__ import annotations

from workbench import lens
from workbench.errors import InputError
from workbench.figures import lens as draw
from workbench.tokens import single_token_id

from .common import run_probe

DEFAULTS = {
    "prompts": [],  # none given: the model's example for this view (workbench/examples.py)
    "tracked": [],
    "k": 5,
    "points": "midpoints",
}


def add_arguments(p):
    p.add_argument("--prompt", action="append", dest="prompts", help="a prompt (repeat the flag for several)")
    p.add_argument(
        "--track", "--target", action="append", dest="tracked", help="a token to track at every point, e.g. ' wife' (repeatable)"
    )
    p.add_argument("--k", type=int, help="top-k tokens kept per cell (default 5)")
    p.add_argument(
        "--points", choices=lens.POINTS, help="read each block's output, or after each attention and MLP too (midpoints, the default)"
    )


def body(model, s, out):
    tuned = lens.load_tuned_lens(model)
    tracked = [single_token_id(model.tokenizer, t, "tracked") for t in s["tracked"]]
    for i, prompt in enumerate(s["prompts"]):
        midpoints = s["points"] == "midpoints"
        results = [lens.lens(model, prompt, k=int(s["k"]), tracked=tracked, midpoints=midpoints)]
        if tuned is not None:
            results.append(lens.lens(model, prompt, k=int(s["k"]), tracked=tracked, tuned=tuned, midpoints=midpoints))
        for r in results:
            name = f"{r.kind.replace(' ', '-')}-prompt{i}"
            out.figure(draw.lens_heatmap(r), name)
            out.data(name, r, r.rows())
        if tracked:
            out.figure(draw.lens_tracked_lines(results, -1), f"tracked-prompt{i}")
        out.figure(draw.lens_stats_lines(results), f"stats-prompt{i}")
    if not s["prompts"]:
        raise InputError("give at least one --prompt")


def main(argv=None) -> int:
    return run_probe("lens", __doc__, add_arguments, DEFAULTS, body, argv)
