"""Long prompts: every view at ~1,024 tokens within the memory budget, by asking only for what it reads.

A full activation cache grows with the square of the prompt: at 1,024 tokens a GPT-2-small-shaped
model's attention patterns alone are 12 layers x 12 heads x 1,024² floats (604 MB in float32),
and every hook of the model together about 2 GB, twice that while the run computes it. So a long
prompt never asks for the whole cache. Each view asks the run layer for what it draws:
- attention: every layer's patterns, kept in float16 as each layer computes them (one hook per
  layer, the last position's logits only), so the float32 patterns of only one layer are alive
  at a time; the head-type scores are taken a layer at a time (attention.py);
- lens: the residual stream at the lens points (points x positions x d_model), read through the
  unembedding a chunk of positions at a time (lens.py), never points x positions x vocabulary;
- attribution: integrated gradients' steps in batches that fit the budget (`ig_batch`), each
  block checkpointed through the forward engine so that a backward pass keeps only the residual
  stream between blocks (attribution.py);
- patching: a chosen window of positions (`patching.sweep(window=...)`), its cost shown first;
- compare: both prompts' patterns in float16, their difference taken a layer at a time (compare.py).

`plan(model, n_tokens, view)` says, before anything runs, what a view will hold at this length,
what a full cache would hold, and the longest prompt the budget allows.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from workbench.lens import lens_points
from workbench.model import LoadedModel
from workbench.runs import all_hook_names, encode, estimate_bytes, memory_budget


def map_large_allocations() -> None:
    """Makes glibc give every allocation over 1 MB its own mapping, returned to the system when freed.

    By default glibc raises this threshold (up to 32 MB) after large frees, so a long prompt's
    chunked tensors of 5-32 MB land in the heap, interleaved with the small results kept from each
    chunk, and the heap fragments: the lens difference of two 1,024-token prompts on a GPT-2-small
    shape grew to +5.5 GB this way (+14 MB per chunk), where its live tensors are under 1 GB.
    A fixed threshold turns the dynamic adjustment off. No-op off glibc.

    It changes the whole process's allocator, so the library never calls it by itself: the app
    (ui.View.start, when a page first runs) and the long-prompt benchmarks do, where long prompts are expected.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 2**20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


LONG_TOKENS = 256  # prompts longer than this switch a page to its long-prompt views
VIEWS = ("attention", "lens", "attribution", "patching", "compare")


def _bytes(dtype_name: str) -> int:
    return 2 if dtype_name in ("float16", "bfloat16") else 8 if dtype_name == "float64" else 4


def full_cache_bytes(model: LoadedModel, n_tokens: int) -> int:
    """Bytes of every activation of the model, and the logits, for one prompt of n_tokens (what a full cache holds)."""
    return estimate_bytes(model, n_tokens, all_hook_names(model)) // 2  # estimate_bytes counts the run's transient copy too


def _forward_bytes(model: LoadedModel, n: int) -> int:
    """Bytes alive in one block while a plain forward pass runs (no cache): residual copies, MLP, one layer's scores."""
    i = model.info
    return 4 * n * (6 * i.d_model + 3 * i.d_mlp + 3 * i.n_heads * n)


def preview_bytes(model: LoadedModel, n: int, site: str, method: str) -> int:
    """Estimated peak bytes of a long prompt's patching preview (preview.py: gradients block by block, reduced per layer).

    The residual stream entering every block; the gradients of the residual stream carried down
    together (1, or n_layers + 1 for AtP*'s GradDrop); one block's graph (about a layer's share of a
    full cache, with its gradient); the site's activations in both runs at every layer; where
    AtP*'s QK fix reads patterns (queries, keys), one layer's pattern with its gradient per stream
    and the recomputed pattern; both runs' logits and the engine's check against them. Measured
    (bench_long): +1,203 MB for AtP* on the residual stream at 1,024 tokens of a GPT-2-small
    shape with both runs computed in it (+808 MB with them cached), estimated 1,295 MB.
    """
    i = model.info
    resid = 4 * n * i.d_model
    streams = i.n_layers + 1 if method == "AtP*" else 1
    one_block = 2 * full_cache_bytes(model, n) // max(1, i.n_layers)
    width = {"resid_pre": i.d_model, "attn_out": i.d_model, "mlp_out": i.d_model, "pattern": i.n_heads * n}
    per_position = width.get(site.removesuffix("_pos"), i.n_heads * i.d_head)  # q, k, v, z: every head's vectors
    sites = 3 * 4 * i.n_layers * n * per_position
    if method == "AtP*" and site.removesuffix("_pos") in ("q", "k"):
        sites += (streams + 3) * 4 * i.n_heads * n * n  # one layer's pattern, its gradients, the recomputed one
    logits = 4 * 4 * n * i.d_vocab  # both runs' logits (the baselines) and the engine's check against them, on every position
    return (i.n_layers + streams) * resid + one_block + sites + logits


def view_bytes(model: LoadedModel, n: int, view: str, chunk: int = 32) -> int:
    """Estimated peak bytes a view holds for a prompt of n tokens in long-prompt mode (see the module doc)."""
    i = model.info
    if view == "attention":  # float16 patterns of every layer, plus the forward pass
        return 2 * i.n_layers * i.n_heads * n * n + _forward_bytes(model, n)
    if view == "lens":  # residual points, the run's logits, and one chunk's readout (logits, log-probs, probs)
        points = len(lens_points(model))
        return 4 * (points * n * i.d_model + n * i.d_vocab + 3 * points * min(chunk, n) * i.d_vocab) + _forward_bytes(model, n)
    if view == "attribution":  # one batch of IG steps; long prompts checkpoint each block (attribution.py)
        if n > LONG_TOKENS:
            return ig_batch(model, n, checkpointed=True) * checkpointed_bytes(model, n) + _forward_bytes(model, n)
        return ig_batch(model, n) * 2 * grad_bytes(model, n)
    if view == "patching":
        from workbench.patch_sites import batch_size

        return batch_size(model, n) * _forward_bytes(model, n) + 2 * 4 * n * i.d_model * (i.n_layers + 1)
    if view == "compare":  # two prompts' float16 patterns and their difference, one layer's in float32; then the lens of both
        points = len(lens_points(model))
        patterns = 3 * 2 * i.n_layers * i.n_heads * n * n + 3 * 4 * i.n_heads * n * n + _forward_bytes(model, n)
        lens_both = 2 * 4 * (points * n * i.d_model + n * i.d_vocab) + 8 * 4 * points * lens_chunk(model) * i.d_vocab
        return patterns + lens_both
    raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")


def lens_chunk(model: LoadedModel) -> int:
    """Positions per chunk of a long prompt's lens comparison: the ~8 live (point, chunk, vocabulary) tensors of two prompts in 1/8 of the budget."""
    per_position = 8 * 4 * len(lens_points(model)) * model.info.d_vocab
    return max(1, min(32, memory_budget() // 8 // per_position))


def grad_bytes(model: LoadedModel, n: int) -> int:
    """Bytes one sequence of n tokens keeps for its backward pass: about every activation, once."""
    return full_cache_bytes(model, n)


def checkpointed_bytes(model: LoadedModel, n: int) -> int:
    """Bytes one sequence holds in a backward pass with each block checkpointed.

    The residual stream between blocks, and one block's insides recomputed with their gradients:
    measured at ~4x what the block keeps for backward (bench_long: 4 sequences of 1,024 tokens on a
    GPT-2 small shape peaked at +2.9 GB).
    """
    i = model.info
    return 4 * n * i.d_model * (i.n_layers + 1) + 4 * grad_bytes(model, n) // i.n_layers


def ig_batch(model: LoadedModel, n: int, budget: int | None = None, checkpointed: bool = False) -> int:
    """Integrated-gradients steps per forward/backward pass that fit the memory budget (at least 1).

    Without checkpointing, half the budget: grad_bytes counts what the backward pass keeps, not the
    transients of computing it (checkpointed_bytes counts those).
    """
    budget = memory_budget() if budget is None else budget
    per_row = checkpointed_bytes(model, n) if checkpointed else 2 * grad_bytes(model, n)
    return max(1, min(64, budget // max(1, per_row)))


@dataclass(frozen=True)
class Plan:
    """What a view will hold for a prompt, said before it runs."""

    view: str
    n_tokens: int
    view_bytes: int  # this view's estimated peak in long-prompt mode
    full_cache_bytes: int  # every activation of the model at this length, for comparison
    budget: int  # this server's budget (WORKBENCH_MEMORY_MB)
    max_tokens: int  # the longest prompt (up to the context) whose view fits the budget

    @property
    def fits(self) -> bool:
        return self.view_bytes <= self.budget

    def message(self) -> str:
        mb = 2**20
        fit = "fits" if self.fits else "does NOT fit"
        return (
            f"{self.view.capitalize()} at {self.n_tokens:,} tokens holds about {self.view_bytes / mb:,.0f} MB "
            f"(a full cache would hold {self.full_cache_bytes / mb:,.0f} MB): it {fit} this server's budget of "
            f"{self.budget / mb:,.0f} MB, which allows this view up to {self.max_tokens:,} tokens."
        )


def plan(model: LoadedModel, n_tokens: int, view: str) -> Plan:
    budget = memory_budget()
    lo, hi = 1, model.info.n_ctx
    if view_bytes(model, hi, view) <= budget:
        lo = hi
    else:  # the longest length that fits: view_bytes grows with n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if view_bytes(model, mid, view) <= budget else (lo, mid - 1)
    return Plan(view, n_tokens, view_bytes(model, n_tokens, view), full_cache_bytes(model, n_tokens), budget, lo)


def n_tokens(model: LoadedModel, prompt: str, truncate: bool = False) -> int:
    """The prompt's length in tokens (BOS included), as a run would see it."""
    return len(encode(model, prompt, truncate)[0])


# ---- patching ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepCost:
    """What a patching sweep will run, said before it runs."""

    site: str
    window: tuple[int, int] | None  # positions start..stop-1, or None for all
    cells: int  # patched runs
    passes: int  # batched forward passes
    per_pass: int  # patched runs per pass, at most
    bytes: int  # estimated peak memory of one pass and the two runs it starts from

    def message(self) -> str:
        where = "every position" if self.window is None else f"positions {self.window[0]}..{self.window[1] - 1}"
        return (
            f"This sweep patches {self.cells:,} cells ({where}) in {self.passes:,} batched forward passes of up to "
            f"{self.per_pass} runs, holding about {self.bytes / 2**20:,.0f} MB."
        )


def sweep_cost(model: LoadedModel, n_tokens: int, site: str, window: tuple[int, int] | None = None) -> SweepCost:
    from workbench import patch_sites  # imported here: patch_sites imports the run layer this module sits beside

    s = patch_sites.site_named(site)
    cells = s.cells(model, n_tokens)
    keep = patch_sites.window_cells(s, cells, window, n_tokens)
    per_pass = patch_sites.batch_size(model, n_tokens)
    passes = patch_sites.plan_passes(s, cells, per_pass, n_tokens, keep)
    return SweepCost(site, window, len(keep), len(passes), per_pass, view_bytes(model, n_tokens, "patching"))
