"""The attribution graph (transcoders, backward passes of the frozen replacement model, pruning) against one forward
pass of the same prompt: the English model (its shipped transcoders) at 64 tokens and at its whole context (256: it
cannot read 512), and a GPT-2-small shape (12 layers, width 768, 12 heads, random weights) with random TopK
transcoders (width 3,072, k = 16) at 64 and 512 tokens, where `max_features` (64: the CPU here is small and shared) bounds
the feature rows computed; the per-row time scales the rest.
Also the peak extra memory of one graph (live C-heap allocations, as bench_graph measures it)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_graph import WORDS, peak_extra_mb
from benchmarks.common import Row, compare
from workbench import attribution_graph as ag
from workbench import families
from workbench.model import load_model
from workbench.runs import encode, run_tokens
from workbench.transcoder import Transcoder, transcoders_of


def _prompt(model, n: int, gen: torch.Generator) -> str:
    """A prompt of random word tokens that encodes to at most n tokens (BOS included)."""
    words = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))
    vocab = [w.lstrip("Ġ") for w in words if w.lstrip("Ġ").isalpha()]
    pick = torch.randint(0, len(vocab), (n,), generator=gen).tolist()
    words = [vocab[i] for i in pick]
    while len(model.tokenizer(" ".join(words))["input_ids"]) > n - 1:  # BOS comes on top
        words = words[: max(1, len(words) - max(1, len(words) // 20))]
    return " ".join(words)


def _case(name: str, model, tcs, prompt: str, cfg: ag.GraphConfig, repeats: int) -> Row:
    tokens, _ = encode(model, prompt)

    def forward():
        with torch.no_grad():
            run_tokens(model, tokens[None])

    found = {}

    def ours():
        found["g"] = ag.build(model, prompt, tcs, cfg)

    forward()
    if repeats > 1:
        ref_s, ours_s = compare(forward, ours, repeats, warmup=0)
        extra = peak_extra_mb(ours)
    else:  # one graph: its time and its peak memory from the same run, the forward pass timed around it
        ref_s, _ = compare(forward, forward, 3, warmup=0)
        start = time.perf_counter()
        extra = peak_extra_mb(ours)
        ours_s = time.perf_counter() - start
    g = found["g"]
    case = f"{name}, {len(tokens)} tokens"
    print(
        f"attribution graph {case}: {g.active_total} active features, {g.n_features} computed (max_features {cfg.max_features}), "
        f"{int(g.node_mask.sum())} nodes / {int(g.edge_mask.sum())} edges kept; {ours_s:.2f} s vs forward {ref_s * 1e3:.1f} ms "
        f"({ours_s / ref_s:.0f}x; {ours_s / (g.n_features + g.n_logits):.3f} s per computed row); peak extra memory {extra:.0f} MB"
    )
    return Row("attr-graph", case, "forward pass", ref_s, f"attribution graph (peak +{extra:.0f} MB)", ours_s)


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    repeats = 1 if quick else 3
    rows = []
    english = load_model("english")
    tcs = transcoders_of(english) or None
    if tcs is None:  # not trained yet: random ones of the shipped shape (the cost does not depend on training)
        tcs = {layer: Transcoder.random(layer, 128, 1024, 16, skip=True) for layer in range(english.info.n_layers)}
    for n in (64, english.info.n_ctx):
        rows.append(_case("english", english, tcs, _prompt(english, n, gen), ag.CONFIG, repeats))
    with tempfile.TemporaryDirectory() as tmp:
        families.build("gpt2", Path(tmp), layers=12, width=768, heads=12, mlp=3072, positions=1024, tokenizer=WORDS, vocab=50257, init=0.02)
        model = load_model(tmp)
        tcs = {layer: Transcoder.random(layer, 768, 3072, 16, skip=True) for layer in range(12)}
        cfg = dataclasses.replace(ag.CONFIG, max_features=64)  # each feature row costs ~4 P L d² multiply-adds per pass here
        for n in (64, 512):
            rows.append(_case("GPT-2 small shape", model, tcs, _prompt(model, n, gen), cfg, repeats))
    return rows
