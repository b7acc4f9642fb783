"""An intervention from the attribution graph (attribution_graph_checks.intervene: the graph's top 5 features ablated,
predicted and measured every way the page shows) against one forward pass of the same prompt, with and without the
two first-order references, on a GPT-2-small shape (12 layers, width 768, 12 heads, vocabulary 50,257, random weights;
random TopK transcoders 3,072 wide, k = 16, skip path) at 64 and 512 tokens: what the Attribution graph page runs on
every change of its intervention, at the size users bring. The graph itself is built once, outside the timing
(bench_attribution_graph times it)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_attribution_graph import word_prompt
from benchmarks.bench_graph import WORDS
from benchmarks.common import Row, compare
from workbench import attribution_graph as ag
from workbench import attribution_graph_checks as graph_checks
from workbench import families
from workbench.model import load_model
from workbench.runs import encode, run_tokens
from workbench.transcoder import Transcoder


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    repeats = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        families.build("gpt2", Path(tmp), layers=12, width=768, heads=12, mlp=3072, positions=1024, tokenizer=WORDS, vocab=50257, init=0.02)
        model = load_model(tmp)
        tcs = {layer: Transcoder.random(layer, 768, 3072, 16, skip=True) for layer in range(12)}
        cfg = dataclasses.replace(ag.CONFIG, max_features=64)
        for n in (64, 512):
            prompt = word_prompt(model, n, gen)
            g = ag.build(model, prompt, tcs, cfg)
            top = g.top_features(5)
            tokens, _ = encode(model, prompt)

            def forward(tokens=tokens):
                with torch.no_grad():
                    run_tokens(model, tokens[None])

            def bare(g=g, top=top):
                graph_checks.intervene(model, g, top, 0.0, tcs, references=False)

            def full(g=g, top=top):
                graph_checks.intervene(model, g, top, 0.0, tcs, references=True)

            ref_s, bare_s = compare(forward, bare, repeats, warmup=1)
            _, full_s = compare(forward, full, repeats, warmup=0)
            print(
                f"graph intervention, GPT-2 small shape, {n} tokens: {bare_s:.2f} s vs forward {ref_s * 1e3:.0f} ms "
                f"({bare_s / ref_s:.1f}x); with the first-order references {full_s:.2f} s ({full_s / ref_s:.1f}x)"
            )
            rows.append(Row("graph-iv", f"GPT-2 small, {n} tokens", "forward pass", ref_s, "intervention", bare_s))
            rows.append(Row("graph-iv", f"GPT-2 small, {n} tokens", "forward pass", ref_s, "intervention + references", full_s))
    return rows
