"""The full residual-stream patching sweep on a GPT-2-small-shaped model (12 layers, width 768, random
weights), 16-token prompts: the workbench's sweep vs transformer_lens.patching.get_act_patch_resid_pre,
with identical results; and vs one plain batched forward pass over the same number of tokens."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import transformer_lens.patching as tlp
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.common import Row
from workbench import patching
from workbench.model import MODELS_DIR, load_model
from workbench.runs import encode

N_TOKENS = 16


def gpt2_small_shaped(folder: Path) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257))
    model.save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(MODELS_DIR / "circuits").save_pretrained(folder)  # word tokens: prompts keep their length


def run(quick: bool = False) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        gpt2_small_shaped(Path(tmp))
        model = load_model(tmp)
        gen = torch.Generator().manual_seed(0)
        clean_ids = torch.randint(2, 98, (N_TOKENS,), generator=gen)
        corrupted_ids = clean_ids.clone()
        corrupted_ids[3] = 2 + (corrupted_ids[3] + 7) % 96
        clean = model.tokenizer.decode(clean_ids[1:])
        corrupted = model.tokenizer.decode(corrupted_ids[1:])
        clean_t, corrupted_t = encode(model, clean)[0], encode(model, corrupted)[0]
        assert len(clean_t) == len(corrupted_t), "pick prompts that tokenize to the same length"
        setup = patching.PatchingSetup(clean, corrupted, answer=11, wrong=12)

        with torch.no_grad():
            _, clean_cache = model.bridge.run_with_cache(clean_t[None])

        def metric(logits):
            return logits[0, -1, 11] - logits[0, -1, 12]

        t = time.perf_counter()
        with torch.no_grad():
            theirs = tlp.get_act_patch_resid_pre(model.bridge, corrupted_t[None], clean_cache, metric)
        ref_s = time.perf_counter() - t
        repeats = 1 if quick else 3
        ours_times = []
        for _ in range(repeats):
            model.run_cache.clear()
            t = time.perf_counter()
            ours = patching.sweep(model, setup, "resid_pre")
            ours_times.append(time.perf_counter() - t)
        ours_s = min(ours_times)
        diff = float((ours.raw - theirs).abs().max())
        if diff > 1e-4:
            raise AssertionError(f"the sweeps differ by {diff}")
        cells = ours.raw.numel()
        batch = clean_t[None].expand(cells, -1)
        t = time.perf_counter()
        with torch.no_grad():
            model.bridge.original_model(batch)
        forward_s = time.perf_counter() - t
    case = f"{cells} cells, {len(clean_t)} tokens"
    return [
        Row("patching", case, "transformer-lens get_act_patch_resid_pre", ref_s, f"workbench sweep (max diff {diff:.1e})", ours_s),
        Row("patching", case, f"one batched forward, {cells}x{len(clean_t)} tokens", forward_s, "workbench sweep", ours_s),
    ]
