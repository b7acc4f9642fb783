"""Head-type scan: previous-token, duplicate-token, induction, first-token and entropy scores of every head,
on the prompt(s) and on repeated random tokens."""

from __future__ import annotations

import time

from tqdm import tqdm

from workbench import attention
from workbench.figures import attention as draw
from workbench.runs import hook_names, run_prompt

from .common import run_probe

DEFAULTS = {
    "prompts": [],  # none given: the model's example for this view (workbench/examples.py)
    "repeat_n": 50,
    "repeat_seqs": 8,
}


def add_arguments(p):
    p.add_argument("--prompt", action="append", dest="prompts", help="a prompt (repeat the flag for several)")
    p.add_argument("--repeat-n", type=int, dest="repeat_n", help="random tokens per copy in the repeated-token probe (default 50)")


def body(model, s, out):
    t = time.time()
    repeats = attention.head_types_on_repeats(
        model, n=min(int(s["repeat_n"]), (model.info.n_ctx - 1) // 2), seqs=int(s["repeat_seqs"]), seed=int(s["seed"])
    )
    out.figure(draw.head_types_heatmap(repeats), "head-types-repeats")
    out.data("head-types-repeats", repeats, repeats.rows())
    out.timing("repeats", time.time() - t)
    for i, prompt in enumerate(tqdm(s["prompts"], desc="prompts", disable=len(s["prompts"]) < 2)):
        t = time.time()
        run = run_prompt(model, prompt, hook_names(model, "attn.hook_pattern"))
        types = attention.head_types(model, run)
        out.figure(draw.head_types_heatmap(types), f"head-types-prompt{i}")
        out.data(f"head-types-prompt{i}", types, types.rows())
        out.timing(f"prompt{i}", time.time() - t)


def main(argv=None) -> int:
    return run_probe("heads", __doc__, add_arguments, DEFAULTS, body, argv)
