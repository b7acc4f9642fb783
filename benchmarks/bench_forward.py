"""A forward pass through the workbench (bridge, every hook cached) vs the plain transformers forward."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from benchmarks.common import Row, compare
from workbench import runs
from workbench.model import MODELS_DIR, load_model


def run(quick: bool = False) -> list[Row]:
    model = load_model("english")
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "english", use_safetensors=True).eval()
    names = runs.all_hook_names(model)
    rows = []
    for n_tokens in (64, 256):
        ids = torch.randint(0, 4000, (1, n_tokens), generator=torch.Generator().manual_seed(0))
        ids[0, 0] = model.bos_id
        prompt = model.tokenizer.decode(ids[0, 1:])

        def reference(ids=ids):
            with torch.no_grad():
                hf(ids)

        def bridge_forward(ids=ids):
            with torch.no_grad():
                model.bridge(ids)

        def full_run(prompt=prompt):
            model.run_cache.clear()  # measure the run, not the cache
            runs.run_prompt(model, prompt, names, truncate=True)

        repeats = 3 if quick else 15
        ref_s, ours_s = compare(reference, bridge_forward, repeats)
        rows.append(Row("forward", f"{n_tokens} tokens", "transformers forward", ref_s, "bridge forward", ours_s))
        ref_s, ours_s = compare(reference, full_run, repeats)
        rows.append(
            Row("forward", f"{n_tokens} tokens", "transformers forward", ref_s, f"run_prompt, all {len(names)} hooks cached", ours_s)
        )
    return rows
