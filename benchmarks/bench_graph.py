"""The information-flow graph (route tracing + figure) after the cached run, vs one forward pass with the cache it reads:
a 64-token prompt on the English model, and 128 tokens on a GPT-2-small-shaped model (12 layers, width 768, 12 heads,
random weights). Also the peak extra memory of one graph, sampled from the process's resident set."""

from __future__ import annotations

import ctypes
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import Row, compare
from workbench import families, graph, graph_faithfulness, graph_parts
from workbench.figures import graph as draw
from workbench.model import MODELS_DIR, load_model
from workbench.runs import encode, hook_names, run_tokens

WORDS = MODELS_DIR / "circuits"  # word tokens: a prompt of random words keeps its token count


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _in_use() -> int:
    """Bytes the C heap holds for live allocations (glibc's mallinfo2: heap in use + mmapped chunks); torch's CPU tensors live there."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def peak_extra_mb(fn) -> float:
    """The largest rise of live C-heap allocations over their level before `fn`, sampled every millisecond while it runs.

    Not the resident set: freed memory stays resident in the allocator's heap, so a peak after earlier work would not show.
    """
    peak, done = [0], threading.Event()
    base = _in_use()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _in_use() - base)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return peak[0] / 2**20


def _case(name: str, model, prompt: str, quick: bool) -> list[Row]:
    tokens, _ = encode(model, prompt)
    names = hook_names(model, *graph_parts.GRAPH_HOOKS, "mlp.hook_post")
    graph_parts.graph_run(model, prompt)  # the cached run every view shares

    def forward():
        with torch.no_grad():
            run_tokens(model, tokens[None], names)

    def ours():
        draw.graph_figure(graph.build(model, prompt))

    def ours_with_run():
        model.run_cache.clear()
        draw.graph_figure(graph.build(model, prompt))

    repeats = 3 if quick else 10
    case = f"{name}, {len(tokens)} tokens"
    rows = []
    ref_s, ours_s = compare(forward, ours, repeats, warmup=1)
    rows.append(Row("graph", case, "forward with its cache", ref_s, "graph + figure (cached run)", ours_s))
    ref_s, ours_s = compare(forward, ours_with_run, repeats, warmup=1)
    rows.append(Row("graph", case, "forward with its cache", ref_s, "run + graph + figure", ours_s))

    g = graph.build(model, prompt)

    def check():
        graph_faithfulness.faithfulness(model, g, "mean")

    ref_s, ours_s = compare(forward, check, max(2, repeats // 3), warmup=1)
    rows.append(Row("graph", case, "forward with its cache", ref_s, "faithfulness check (mean, 12 runs)", ours_s))

    def every_node():
        draw.graph_figure(graph.build(model, prompt, threshold=0.0))

    ref_s, ours_s = compare(forward, every_node, max(2, repeats // 3), warmup=1)
    rows.append(Row("graph", case, "forward with its cache", ref_s, "graph + figure, threshold 0 (all nodes)", ours_s))
    graph_parts.graph_run(model, prompt)
    every = peak_extra_mb(every_node)
    extra = peak_extra_mb(ours)
    print(
        f"graph {case}: {len(g.edges)} edges, {len(g.nodes)} nodes; peak extra memory of one graph + figure: {extra:.0f} MB "
        f"(threshold 0, every node decomposed: {every:.0f} MB)"
    )
    return rows


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    english = load_model("english")
    ids = torch.randint(300, 2000, (63,), generator=gen)
    prompt = english.tokenizer.decode(ids)
    while len(encode(english, prompt)[0]) > 64:  # BPE may merge across the seams: trim to 64 tokens with BOS
        ids = ids[:-1]
        prompt = english.tokenizer.decode(ids)
    rows = _case("english", english, prompt, quick)
    with tempfile.TemporaryDirectory() as tmp:
        families.build("gpt2", Path(tmp), layers=12, width=768, heads=12, mlp=3072, positions=1024, tokenizer=WORDS, vocab=50257, init=0.02)
        model = load_model(tmp)
        words = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))
        vocab = [w for w in words if w.isalpha()]
        pick = torch.randint(0, len(vocab), (127,), generator=gen).tolist()
        rows += _case("GPT-2 small shape", model, " ".join(vocab[i] for i in pick), quick)
    return rows
