"""The attribution graph (transcoders, backward passes of the frozen replacement model, pruning) against one forward
pass of the same prompt, in time and in peak memory: the default model (`workbench.model.DEFAULT_MODEL`, its shipped
transcoders) at 64 tokens and at 512 or its whole context if shorter, and a GPT-2-small shape (12 layers, width 768, 12 heads,
vocabulary 50,257, random weights) with random TopK transcoders (width 3,072, k = 16, skip path) at 64 and 512
tokens, where `max_features` (64: the CPU here is small and shared) bounds the feature rows computed; the time per
row scales the rest.

Peak memory: the largest level of torch's allocations made while the call runs, above the level before it, from
torch's profiler (every allocation and free in order, not sampled); measured in a run of its own, since the
profiler slows what it watches. Times come from runs without it."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_graph import WORDS
from benchmarks.common import Row, compare
from workbench import attribution_graph as ag
from workbench import families
from workbench.model import DEFAULT_MODEL, load_model
from workbench.runs import encode, run_tokens
from workbench.transcoder import Transcoder, transcoders_of


def peak_bytes(fn) -> int:
    """The peak of torch's allocations made while `fn` runs, above their level before (torch's profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = sorted((e for e in p.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    level = top = 0
    for e in events:
        level += e.nbytes()
        top = max(top, level)
    return top


def word_prompt(model, n: int, gen: torch.Generator) -> str:
    """A prompt of random word tokens that encodes to exactly n tokens (BOS included): single-token words only."""
    tok = model.tokenizer
    words = tok.convert_ids_to_tokens(list(range(len(tok))))
    vocab = [w[1:] for w in words if w.startswith("Ġ") and w[1:].isalpha()]
    vocab = [w for w in vocab if len(tok(" " + w)["input_ids"]) == len(tok("")["input_ids"]) + 1][:2000]
    pick = torch.randint(0, len(vocab), (n - 1,), generator=gen).tolist()
    prompt = "".join(" " + vocab[i] for i in pick)
    assert len(encode(model, prompt)[0]) == n, (len(encode(model, prompt)[0]), n)
    return prompt


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
    else:  # one graph, the forward pass timed around it
        ref_s, _ = compare(forward, forward, 3, warmup=0)
        start = time.perf_counter()
        ours()
        ours_s = time.perf_counter() - start
    ref_mem, ours_mem = peak_bytes(forward), peak_bytes(ours)
    g = found["g"]
    mb = 2**20
    case = f"{name}, {len(tokens)} tokens"
    print(
        f"attribution graph {case}: {g.active_total} active features, {g.n_features} rows computed (max_features "
        f"{cfg.max_features}), {int(g.node_mask.sum())} nodes / {int(g.edge_mask.sum())} edges kept; time {ours_s:.2f} s vs "
        f"forward {ref_s * 1e3:.1f} ms ({ours_s / ref_s:.0f}x; {ours_s / (g.n_features + g.n_logits):.3f} s per computed row); "
        f"peak memory {ours_mem / mb:.1f} MB vs forward {ref_mem / mb:.1f} MB ({ours_mem / ref_mem:.1f}x; planned "
        f"{g.plan.bytes / mb:.0f} MB)"
    )
    return Row("attr-graph", case, "forward pass", ref_s, f"attribution graph (peak {ours_mem / ref_mem:.1f}x)", ours_s)


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    repeats = 1 if quick else 3
    rows = []
    default = load_model(DEFAULT_MODEL)
    tcs = transcoders_of(default) or None
    if tcs is None:  # not trained yet: random ones of the shipped shape (the cost does not depend on training)
        d = default.info.d_model
        tcs = {layer: Transcoder.random(layer, d, 8 * d, 16, skip=True) for layer in range(default.info.n_layers)}
    for n in (64, min(512, default.info.n_ctx)):
        rows.append(_case(DEFAULT_MODEL, default, tcs, word_prompt(default, n, gen), ag.CONFIG, repeats))
    with tempfile.TemporaryDirectory() as tmp:
        families.build("gpt2", Path(tmp), layers=12, width=768, heads=12, mlp=3072, positions=1024, tokenizer=WORDS, vocab=50257, init=0.02)
        model = load_model(tmp)
        tcs = {layer: Transcoder.random(layer, 768, 3072, 16, skip=True) for layer in range(12)}
        cfg = dataclasses.replace(ag.CONFIG, max_features=64)  # each feature row costs ~4 P L d² multiply-adds per pass here
        for n in (64, 512):
            rows.append(_case("GPT-2 small shape", model, tcs, word_prompt(model, n, gen), cfg, 1 if n > 64 else repeats))
    return rows
