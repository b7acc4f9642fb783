"""Patching methods: AtP* and EAP-IG against the exact patching they estimate, the whole scoreboard against the naive
one-run-per-cell exact patching through the model's hooks, and AtP*'s passes counted (≤ layers + 2 per pair)."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.common import Row, compare
from workbench import edges, engine, families, methods, scoreboard, tasks
from workbench.model import MODELS_DIR, load_model
from workbench.runs import run_edited

PAIRS = 8


@contextmanager
def counted():
    """Counts engine forward passes and autograd backward passes while inside (the functions themselves, wrapped)."""
    counts = {"forward": 0, "backward": 0}
    forward, grad = engine.forward, torch.autograd.grad

    def count_forward(*a, **k):
        counts["forward"] += 1
        return forward(*a, **k)

    def count_grad(*a, **k):
        counts["backward"] += 1
        return grad(*a, **k)

    engine.forward, torch.autograd.grad = count_forward, count_grad
    try:
        yield counts
    finally:
        engine.forward, torch.autograd.grad = forward, grad


def atp_star_passes(model, prompt_pairs) -> dict:
    """AtP*'s forward and backward passes per prompt pair, counted."""
    pairs = methods.prepare_all(model, prompt_pairs)
    with counted() as counts:
        methods.atp_star(model, pairs)
    return {k: v / len(pairs) for k, v in counts.items()}


def naive_exact(model, prompt_pairs) -> None:
    """Every node and edge patched one run at a time through the model's own hooks (runs.run_edited): the plain way."""
    pairs = methods.prepare_all(model, prompt_pairs)
    w = pairs[0].weights
    for pair in pairs:
        with torch.no_grad():
            base = pair.run("base", capture=edges.capture_names(w)).captured
            source = pair.run("source", capture=edges.capture_names(w)).captured
        for node in methods.nodes_of(w):
            run_edited(model, pair.base_tokens[None], [methods.node_edit(node, source)], last_only=True)
        for e in edges.edges_of(w):
            change = edges.sender_output(w, e.sender, source) - edges.sender_output(w, e.sender, base)
            value = edges.receive(w, e.receiver, edges.receiver_input(w, e.receiver, base) + change)
            run_edited(model, pair.base_tokens[None], [edges.receiver_edit(w, e.receiver, value)], last_only=True)


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    rows = []
    repeats = 1 if quick else 3
    for name in ("circuits", "answer-key"):
        model = load_model(name)
        prompt_pairs = tasks.induction_pairs(model, PAIRS)
        pairs = methods.prepare_all(model, prompt_pairs)
        ref, ours = compare(
            lambda m=model, p=pairs: methods.exact_nodes(m, p), lambda m=model, p=pairs: methods.atp_star(m, p), repeats, warmup=1
        )
        rows.append(Row("methods", f"{name}: nodes", "exact node patching (batched)", ref, "AtP* (QK fix, GradDrop)", ours))
        ref, ours = compare(
            lambda m=model, p=pairs: edges.exact_edges(m, p), lambda m=model, p=pairs: edges.eap_ig(m, p, 5), repeats, warmup=1
        )
        rows.append(Row("methods", f"{name}: edges", "exact edge patching (batched)", ref, "EAP-IG, 5 steps", ours))
        t = time.perf_counter()
        naive_exact(model, prompt_pairs)
        ref = time.perf_counter() - t
        t = time.perf_counter()
        sb = scoreboard.run(model, prompt_pairs, "induction pairs")
        ours = time.perf_counter() - t
        rows.append(Row("methods", f"{name}: scoreboard", "exact, a run per cell (hooks)", ref, f"whole scoreboard ({PAIRS} pairs)", ours))
        print(f"scoreboard on {name}, induction task, {PAIRS} pairs: {ours:.1f} s (the issue's bound: 120 s)")
        for r in sb.table():
            print(f"  {r['level']:<6} {r['method']:<7} spearman {r['spearman']:.3f} recall@10 {r['recall@10']:.2f} area {r['area']:.3f}")
    # AtP*'s cost does not grow with the number of nodes: count its passes on models of growing size
    with tempfile.TemporaryDirectory() as tmp:
        for layers, heads in ((2, 4), (4, 8)):
            model = load_model(
                str(
                    families.build(
                        "gpt2",
                        Path(tmp) / f"g{layers}",
                        layers=layers,
                        heads=heads,
                        width=64,
                        kv_heads=heads,
                        tokenizer=MODELS_DIR / "circuits",
                    )
                )
            )
            prompt_pairs = tasks.induction_pairs(model, 2, length=6, repeat=3)
            n = len(methods.nodes_of(engine.weights_of(model)))
            c = atp_star_passes(model, prompt_pairs)
            print(f"AtP* on gpt2 {layers} layers × {heads} heads ({n} nodes): {c['forward']:.0f} forward, {c['backward']:.0f} backward passes per pair"
                  f" (≤ layers + 2 = {layers + 2} forward-and-backward passes: {max(c['forward'], c['backward']) <= layers + 2 and c['forward'] + c['backward'] <= 2 * (layers + 2)})")  # fmt: skip
    return rows
