"""Interventions, timed in the same process against the plain way:
- an edited run (three heads mean-ablated and a steering vector added, through the bridge's hooks) against the
  same run unedited, on the English model (64 tokens) and a GPT-2-small shape (random weights, 64 tokens);
- the head-ablation sweep (every head ablated alone, one batched engine pass) against one edited forward pass
  per head (run_edited), the same numbers (checked ≤ 1e-4), on the English model and the GPT-2-small shape."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_patching import gpt2_small_shaped
from benchmarks.common import Row, compare
from workbench import edit_values as values
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.model import load_model
from workbench.runs import encode, run_edited, run_tokens

N_TOKENS = 64


def _prompt(model) -> str:
    """A prompt of N_TOKENS tokens (BOS included) from the model's reference text."""
    ids = model.tokenizer("\n".join(values.reference_prompts(model)[:4]), add_special_tokens=False)["input_ids"][: N_TOKENS - 1]
    return model.tokenizer.decode(ids)


def _cases(name: str, model, quick: bool) -> list[Row]:
    prompt = _prompt(model)
    ids, _ = encode(model, prompt, truncate=True)
    batch = ids[None]
    layer = model.info.n_layers - 1
    edits = iv.EditSet(
        (
            *(iv.Ablate("head", layer, h, "mean") for h in range(min(3, model.info.n_heads))),
            iv.Steer(layer, 2.0, "prompts", ("the sea", "the ship"), ("the house", "the room")),
        )
    )
    compiled = iv.compile_edits(model, edits)  # the reference means and the vector: computed once, as the page keeps them
    with torch.no_grad():
        ref_s, ours_s = compare(lambda: run_tokens(model, batch), lambda: run_edited(model, batch, compiled), repeats=5 if quick else 30)
    rows = [Row("intervene", f"{name}, {len(ids)} tokens", "unedited run", ref_s, "edited run (3 heads + steering)", ours_s)]

    metric = iv.Metric("probability", int(run_tokens(model, batch, last_only=True)[0][0, -1].argmax()))
    L, H = model.info.n_layers, model.info.n_heads

    def per_head() -> torch.Tensor:
        out = torch.empty(L, H)
        for layer in range(L):
            for head in range(H):
                one = iv.compile_edits(model, iv.EditSet((iv.Ablate("head", layer, head, "zero"),)))
                logits, _ = run_edited(model, batch, one, last_only=True)
                out[layer, head] = metric.value(logits[:, -1].float())[0]
        return out

    ref_times, our_times = [], []
    for _ in range(1 if quick else 3):
        t = time.perf_counter()
        theirs = per_head()
        ref_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        sweep = ivs.ablation_sweep(model, prompt, metric, "zero")
        our_times.append(time.perf_counter() - t)
    if sweep.backend != "engine":
        raise AssertionError(f"{name}: the sweep did not use the engine ({sweep.note})")
    diff = float((sweep.values - theirs).abs().max())
    if diff > 1e-4:
        raise AssertionError(f"{name}: the batched sweep and the per-head runs differ by {diff}")
    rows.append(
        Row(
            "intervene",
            f"{name}, {L * H} heads",
            "one edited pass per head",
            statistics.median(ref_times),
            f"batched head sweep (max diff {diff:.1e})",
            statistics.median(our_times),
        )
    )
    return rows


def run(quick: bool = False) -> list[Row]:
    rows = _cases("English", load_model("english"), quick)
    with tempfile.TemporaryDirectory() as tmp:
        gpt2_small_shaped(Path(tmp))
        rows += _cases("GPT-2 small", load_model(tmp), quick)
    return rows
