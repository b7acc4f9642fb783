"""Every view at 1,024 tokens on a GPT-2-small-shaped model (random weights): peak extra memory and time.

Memory is the process's peak resident size above what it held before the view ran (Linux: freed
heap handed back with malloc_trim, the peak reset through /proc/self/clear_refs, then read from
VmHWM after), printed
against a full cache's (every hook of the model, as `run_tokens` keeps them) measured in the
same run. Times are single runs (a 1,024-token GPT-2-small forward takes seconds on two cores);
the full-resolution attention grid is timed as the median of three draws, its figure's size
printed beside it. The views, as the long-prompt mode runs them (planned by workbench/long.py):
- attention: float16 patterns of every layer, the whole grid at every token, one head, the token
  focus of the last position and head types by layer;
- lens: the logit lens (residual points only, read through the unembedding in chunks);
- attribution: integrated gradients, one batch of as many steps as the budget allows (each block
  checkpointed through the engine);
- patching: the residual stream over a window of 8 positions, every layer;
- compare: two prompts' pattern difference (float16, by layer) and the lens difference.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_patching import gpt2_small_shaped
from benchmarks.common import Row
from workbench import attention, compare, lens, long, patching, tasks
from workbench.attribution import Answer, input_attribution
from workbench.figures import attention as draw_attention
from workbench.figures import long as draw
from workbench.model import load_model
from workbench.preview import preview_sweep
from workbench.runs import all_hook_names, encode, run_tokens

N_TOKENS = 1024
MB = 2**20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measured(fn) -> tuple[object, float, int]:
    """(result, seconds, peak extra bytes) of fn()."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so that an earlier view's memory is not reused unseen
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status("VmRSS")
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    return out, seconds, _status("VmHWM") - before


def _prompt(model, seed: int) -> tuple[str, torch.Tensor]:
    ids = torch.randint(2, 98, (N_TOKENS - 1,), generator=torch.Generator().manual_seed(seed))
    text = model.tokenizer.decode(ids)
    tokens, _ = encode(model, text)
    assert len(tokens) == N_TOKENS, "word tokens decode and encode one to one"
    return text, tokens


def run(quick: bool = False) -> list[Row]:
    long.map_large_allocations()  # as the app does (workbench/ui/view.py): the views' memory measured as served
    with tempfile.TemporaryDirectory() as tmp:
        gpt2_small_shaped(Path(tmp))
        model = load_model(tmp)
        return _measure(model, quick)


def _measure(model, quick: bool) -> list[Row]:
    prompt, tokens = _prompt(model, 0)
    other, _ = _prompt(model, 1)
    case = f"GPT-2 small shape, {N_TOKENS} tok"

    # the reference: every activation kept (over the default budget, so the budget is lifted for it)
    old = os.environ.get("WORKBENCH_MEMORY_MB")
    os.environ["WORKBENCH_MEMORY_MB"] = "100000"
    try:
        (_, cache), full_s, full_peak = measured(lambda: run_tokens(model, tokens[None], all_hook_names(model)))
        full_held = sum(t.numel() * t.element_size() for t in cache.values())
        del cache
    finally:
        if old is None:
            del os.environ["WORKBENCH_MEMORY_MB"]
        else:
            os.environ["WORKBENCH_MEMORY_MB"] = old

    def attention_view():
        p = attention.patterns(model, prompt)  # past long.LONG_TOKENS: the chunked path
        grid, _ = draw.grid_image(p)
        head = draw.head_image(p, 5, 1)
        focus = draw_attention.token_focus_figure(attention.token_focus(p, N_TOKENS - 1), p.labels)
        attention.head_types(model, p)
        return p, [grid, head, focus]

    def lens_view():
        return lens.lens(model, prompt)

    ig_steps = max(2, long.ig_batch(model, N_TOKENS, checkpointed=True))  # one full batch: the view's worst case

    def attribution_view():
        return input_attribution(model, prompt, Answer((5,)), method="integrated gradients", steps=ig_steps)

    def patching_view():
        corrupted_ids = tokens.clone()
        corrupted_ids[N_TOKENS - 4] = 2 + (corrupted_ids[N_TOKENS - 4] + 7) % 96
        corrupted = model.tokenizer.decode(corrupted_ids[1:])
        pair = tasks.Pair(prompt, corrupted, 5, 6)
        return patching.sweep(model, pair, "resid_pre", window=(N_TOKENS - 8, N_TOKENS))

    def preview_view():  # the patching page's AtP* preview, its gradients taken block by block
        corrupted_ids = tokens.clone()
        corrupted_ids[N_TOKENS - 4] = 2 + (corrupted_ids[N_TOKENS - 4] + 7) % 96
        pair = tasks.Pair(prompt, model.tokenizer.decode(corrupted_ids[1:]), 5, 6)
        return preview_sweep(model, pair, "resid_pre", method="AtP*", direction="denoising")

    def compare_view():
        return compare.pattern_diff(model, prompt, other), compare.lens_diff(
            model, prompt, other, chunk=long.lens_chunk(model), with_patterns=False
        )

    views = {"attention": attention_view, "lens": lens_view, "attribution": attribution_view}
    views |= {"patching": patching_view, "patching preview": preview_view, "compare": compare_view}
    rows, table = [], []
    for name, fn in views.items():
        model.run_cache.clear()
        out, seconds, peak = measured(fn)
        if name == "attention":
            p, figs = out
            sizes = [draw.figure_bytes(f) for f in figs]
        del out
        estimate = (
            long.preview_bytes(model, N_TOKENS, "resid_pre", "AtP*")
            if name == "patching preview"
            else long.view_bytes(model, N_TOKENS, name)
        )
        table.append((name, peak, estimate))
        rows.append(Row("long", case, f"full cache (+{full_peak / MB:,.0f} MB)", full_s, f"{name} view (+{peak / MB:,.0f} MB)", seconds))
    model.run_cache.clear()

    draws = [measured(lambda: draw.grid_image(p))[1] for _ in range(1 if quick else 3)]
    grid_fig, factor = draw.grid_image(p)
    grid_mb = draw.figure_bytes(grid_fig) / MB
    forward_s = measured(lambda: run_tokens(model, tokens[None], last_only=True))[1]
    rows.append(Row("long", case, "bridge forward", forward_s, f"full grid, 1/{factor} res, {grid_mb:.1f} MB", statistics.median(draws)))

    print(f"\nPeak extra memory at {N_TOKENS} tokens, GPT-2 small shape (budget 2,048 MB); full cache: +{full_peak / MB:,.0f} MB "
          f"peak, {full_held / MB:,.0f} MB held")  # fmt: skip
    print(f"{'view':<12} {'peak MB':>9} {'estimate MB':>12} {'vs full cache':>14}")
    for name, peak, estimate in table:
        print(f"{name:<12} {peak / MB:>9,.0f} {estimate / MB:>12,.0f} {peak / full_peak:>13.2f}x")
    print(f"attention figures (grid, one head, token focus): {', '.join(f'{s / MB:.2f} MB' for s in sizes)}\n")
    return rows
