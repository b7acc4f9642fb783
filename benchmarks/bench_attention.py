"""Building the whole-model attention grid for a 256-token prompt, after the run, vs one forward pass."""

from __future__ import annotations

import torch

from benchmarks.common import Row, compare
from workbench import attention
from workbench.figures import attention as draw
from workbench.model import load_model
from workbench.runs import hook_names, run_prompt


def run(quick: bool = False) -> list[Row]:
    model = load_model("english")
    ids = torch.randint(0, 4000, (model.info.n_ctx - 1,), generator=torch.Generator().manual_seed(0))
    prompt = model.tokenizer.decode(ids)
    run_ = run_prompt(model, prompt, hook_names(model, "attn.hook_pattern"), truncate=True)
    tokens = run_.tokens[None]

    def forward():
        with model.lock, torch.no_grad():
            model.bridge(tokens)

    def grid():
        draw.pattern_grid(attention.patterns_of(run_))

    def full_grid():
        draw.pattern_grid(attention.patterns_of(run_), cell=model.info.n_ctx)

    repeats = 3 if quick else 10
    case = f"{run_.n_tokens} tokens"
    ref_s, ours_s = compare(forward, grid, repeats)
    rows = [Row("attention", case, "bridge forward", ref_s, "grid figure (48-cell pooled)", ours_s)]
    ref_s, ours_s = compare(forward, full_grid, repeats)
    rows.append(Row("attention", case, "bridge forward", ref_s, "grid figure, every token", ours_s))
    return rows
