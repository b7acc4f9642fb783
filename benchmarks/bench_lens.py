"""The workbench's logit lens over a 256-token prompt vs transformer-lens's logit_lens, both from a fresh forward pass."""

from __future__ import annotations

import torch
from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

from benchmarks.common import Row, compare
from workbench import lens
from workbench.model import load_model
from workbench.runs import encode


def run(quick: bool = False) -> list[Row]:
    model = load_model("english")
    ids = torch.randint(0, 4000, (model.info.n_ctx - 1,), generator=torch.Generator().manual_seed(0))
    prompt = model.tokenizer.decode(ids)
    tokens, _ = encode(model, prompt, truncate=True)

    def theirs():
        with model.lock:
            tl_logit_lens(model.bridge, tokens[None], positions=None, incl_mid=True, return_type="log_probs", top_k=5)

    def ours():
        model.run_cache.clear()  # include the forward pass, as theirs does
        lens.lens(model, prompt, k=5, truncate=True)

    ref_s, ours_s = compare(theirs, ours, 2 if quick else 7, warmup=1)
    return [Row("lens", f"{len(tokens)} tokens", "transformer-lens logit_lens", ref_s, "workbench lens (+entropy, KL)", ours_s)]
