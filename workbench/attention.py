"""Attention: every head's pattern on a prompt, what one token attends to, head types, and one head's arithmetic.

A head's pattern `pattern[query, key]` is the softmax of its scaled, causally masked scores
q·k/√d_head, so each row (one query position) sums to 1 over the keys at or before it.

Head types score each head by the share of its attention that goes where a known behaviour puts
it, averaged over the query positions where that behaviour has somewhere to look:
- previous token: key = query - 1;
- duplicate token: keys holding the same token as the query, earlier in the prompt;
- induction: keys right after an earlier occurrence of the query's token;
- first token ("attention sink"): key 0, the BOS;
- entropy: the mean entropy of the rows, in nats (low: focused; log(n): spread evenly).
The target masks come from `transformer_lens.head_detector`'s detection patterns; the score is a
share of attention (TransformerLens's "mul" measure divides by all rows, so a perfect induction
head scores ~0.5 there -- see heads.py).

Long prompts take the same functions: past `long.LONG_TOKENS` tokens `patterns` runs the prompt
once without the run cache, each layer's hook keeping its pattern in float16 as it is computed (a
full cache of a 1,024-token prompt holds ~2 GB, its float32 patterns alone 604 MB on a GPT-2-small
shape), and head types are always scored one layer at a time in float32 (long.py plans the memory).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench import cost, engine, long
from workbench.errors import InputError
from workbench.heads import attention_share, choosing_rows, repeat_scores, target_masks
from workbench.model import LoadedModel
from workbench.runs import Run, check_position, encode, head_results, hook_names, provenance, run_prompt, run_tokens
from workbench.tokens import token_labels

HEAD_TYPES = ("previous token", "duplicate token", "induction", "first token", "entropy")
KEEP_DTYPE = torch.float16  # patterns of long prompts: 3 significant digits, half float32's memory


@dataclass(frozen=True)
class Patterns:
    """Every head's attention pattern on one prompt."""

    model: str
    prompt: str
    labels: list[str]  # token labels, (pos,)
    pattern: torch.Tensor  # (layer, head, query, key); float16 for a long prompt
    tokens: torch.Tensor  # (pos,) token ids, BOS first
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)

    @property
    def shape(self) -> tuple[int, int, int]:
        layers, heads, pos, _ = self.pattern.shape
        return layers, heads, pos

    def head(self, layer: int, head: int) -> torch.Tensor:
        """(query, key) pattern of one head."""
        check_head(self.pattern.shape[0], self.pattern.shape[1], layer, head)
        return self.pattern[layer, head]


def check_head(n_layers: int, n_heads: int, layer: int, head: int) -> None:
    if not 0 <= layer < n_layers:
        raise InputError(f"layer {layer} does not exist: this model has layers 0..{n_layers - 1}")
    if not 0 <= head < n_heads:
        raise InputError(f"head {head} does not exist: each layer has heads 0..{n_heads - 1}")


def patterns(model: LoadedModel, prompt: str, truncate: bool = False, chunked: bool | None = None) -> Patterns:
    """Every head's pattern on `prompt`, (layer, head, query, key).

    Not `chunked` (by default: up to long.LONG_TOKENS tokens): from the shared run cache, float32.
    `chunked`: one uncached forward pass whose hook at each layer copies its pattern to float16 on
    the CPU and keeps nothing else, the logits computed for the last position only, so that one
    layer's float32 patterns are alive at a time.
    """
    tokens, _ = encode(model, prompt, truncate)
    if not (len(tokens) > long.LONG_TOKENS if chunked is None else chunked):
        run = run_prompt(model, prompt, hook_names(model, "attn.hook_pattern"), truncate=truncate)
        return dataclasses.replace(patterns_of(run), provenance=provenance(model, [prompt], view="attention patterns", truncate=truncate))
    names = hook_names(model, "attn.hook_pattern")
    kept: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(act: torch.Tensor, hook) -> None:
            kept[name] = act[0].detach().to("cpu", KEEP_DTYPE)  # (head, query, key)

        return keep

    run_tokens(model, tokens[None], hooks=[(n, keeper(n)) for n in names], last_only=True)
    pattern = torch.stack([kept[n] for n in names])  # (layer, head, query, key) float16
    labels = token_labels(model.tokenizer, tokens.tolist())
    settings = dict(view="attention patterns", truncate=truncate, chunked=True, dtype="float16")
    return Patterns(model.info.name, prompt, labels, pattern, tokens, provenance(model, [prompt], **settings))


def patterns_of(run: Run) -> Patterns:
    return Patterns(run.model, run.prompt, run.labels, run.stack("attn.hook_pattern").float(), run.tokens)


@dataclass(frozen=True)
class TokenFocus:
    """Where one token attends, and who attends to it, in every layer and head."""

    position: int
    label: str
    attends_to: torch.Tensor  # (layer, head, key) the row of `position`; keys after it are 0
    attended_by: torch.Tensor  # (layer, head, query) the column of `position`; queries before it are 0


def token_focus(p: Patterns, position: int) -> TokenFocus:
    pos = check_position(p.shape[2], position)
    return TokenFocus(pos, p.labels[pos], p.pattern[:, :, pos, :], p.pattern[:, :, :, pos])


def downsample(grid: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """(..., q, k) grid max-pooled to at most `size` x `size` cells, and the pooling factor.

    Max, not mean, so that a sharp head (one key per query) stays visible when shrunk.
    """
    n = grid.shape[-1]
    factor = math.ceil(n / size)
    if factor <= 1:
        return grid, 1
    pad = factor * math.ceil(n / factor) - n
    padded = torch.nn.functional.pad(grid, (0, pad, 0, pad))
    lead = padded.shape[:-2]
    pooled = torch.nn.functional.max_pool2d(padded.reshape(-1, 1, *padded.shape[-2:]), factor)
    return pooled.reshape(*lead, *pooled.shape[-2:]), factor


@dataclass(frozen=True)
class HeadTypes:
    """Per-head scores (layer, head) for each head type, on one sequence of tokens."""

    source: str  # "prompt" or "repeated random tokens (n=.., seqs=..)"
    scores: dict[str, torch.Tensor]  # head type -> (layer, head)
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)

    def ranked(self, head_type: str, k: int | None = None) -> list[dict]:
        """Rows (layer, head, score) sorted by the score, highest first (lowest first for entropy)."""
        s = self.scores[head_type]
        order = s.flatten().argsort(descending=head_type != "entropy")[:k]
        n_heads = s.shape[1]
        return [dict(layer=int(i) // n_heads, head=int(i) % n_heads, score=float(s.flatten()[i])) for i in order]

    def rows(self) -> list[dict]:
        layers, heads = next(iter(self.scores.values())).shape
        return [
            dict(layer=layer, head=head, **{t: float(self.scores[t][layer, head]) for t in self.scores})
            for layer in range(layers)
            for head in range(heads)
        ]


def head_types_of(pattern: torch.Tensor, tokens: torch.Tensor, source: str = "prompt") -> HeadTypes:
    """Scores from a (layer, head, query, key) pattern over `tokens` (pos,); query 0 is left out (it cannot choose).

    Scored one layer at a time in float32, so that a long prompt's float16 patterns are never copied whole."""
    masks = target_masks(tokens)  # name -> (query, key)
    rows = choosing_rows(pattern.shape[-1])
    per_layer = []
    for layer in range(pattern.shape[0]):
        p = pattern[layer : layer + 1].float()  # (1, head, query, key)
        scores = {name: attention_share(p, mask) for name, mask in masks.items()}
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (1, head, query)
        scores["entropy"] = entropy[..., rows].mean(-1) if rows.any() else torch.full(p.shape[:2], float("nan"))
        per_layer.append(scores)
    return HeadTypes(source, {name: torch.cat([s[name] for s in per_layer]) for name in per_layer[0]})


def head_types(model: LoadedModel, of: Run | Patterns) -> HeadTypes:
    """Head types on a prompt's own patterns: from its run (with the patterns cached) or its `patterns`, short or long."""
    p = patterns_of(of) if isinstance(of, Run) else of
    types = head_types_of(p.pattern, p.tokens, "prompt")
    return dataclasses.replace(types, provenance=provenance(model, [p.prompt], view="head types"))


def _repeats_on_disk(n: int, seqs: int, seed: int) -> tuple[str, Callable, Callable]:
    """(file name, to_disk, from_disk) of head types on repeated random tokens in the per-model disk cache."""

    def to_disk(h: HeadTypes) -> tuple[dict, dict]:
        return dict(h.scores), {"source": h.source, "order": list(h.scores), "provenance": h.provenance}

    def from_disk(tensors: dict, meta: dict) -> HeadTypes:
        return HeadTypes(meta["source"], {k: tensors[k] for k in meta["order"]}, meta["provenance"])

    return f"head-types-n{n}-s{seqs}-seed{seed}", to_disk, from_disk


def head_types_on_repeats(model: LoadedModel, n: int = 50, seqs: int = 8, seed: int = 0, progress=None) -> HeadTypes:
    """Head types on the standard probe: BOS + n random tokens repeated twice (see heads.py).

    Per model, not per prompt (seqs × (2n + 1) tokens: ~60 forward passes of a short prompt): computed
    once per model's weights and kept on disk next to its folder (cost.disk_cached). `progress(done,
    seqs)` after each sequence; its False cancels (nothing is kept).
    """
    name, to_disk, from_disk = _repeats_on_disk(n, seqs, seed)
    compute = lambda: _head_types_on_repeats(model, n, seqs, seed, progress)  # noqa: E731
    return cost.disk_cached(model, name, compute, to_disk, from_disk)


def stored_head_types_on_repeats(model: LoadedModel, n: int = 50, seqs: int = 8, seed: int = 0) -> HeadTypes | None:
    """`head_types_on_repeats` if it is already on disk for this model, else None (nothing is run)."""
    name, to_disk, from_disk = _repeats_on_disk(n, seqs, seed)
    return cost.disk_cached(model, name, None, to_disk, from_disk)


def repeats_estimate(model: LoadedModel, n: int = 50, seqs: int = 8) -> cost.Estimate:
    """What `head_types_on_repeats` costs when it is not on disk: seqs sequences of 2n + 1 tokens, one call each."""
    return cost.estimate(model, "head scores on repeated random tokens", 2 * n + 1, passes=seqs, calls=seqs)


def _head_types_on_repeats(model: LoadedModel, n: int, seqs: int, seed: int, progress=None) -> HeadTypes:
    s = repeat_scores(model, n=n, seqs=seqs, seed=seed, keep_patterns=True, progress=progress)
    per_seq = [head_types_of(p, t) for p, t in zip(s.patterns, s.tokens, strict=True)]
    mean = {k: torch.stack([h.scores[k] for h in per_seq]).nanmean(0) for k in per_seq[0].scores}
    return HeadTypes(
        f"repeated random tokens (n={n}, {seqs} sequences, seed {seed})",
        mean,
        provenance(model, [], view="head types on repeated random tokens", n=n, seqs=seqs, seed=seed),
    )


@dataclass(frozen=True)
class HeadAnatomy:
    """One head, one query: softmax(q·Kᵀ/√d_head)·V and the output projection, with the prompt's numbers."""

    layer: int
    head: int
    query: int
    labels: list[str]  # key labels (pos,)
    q: torch.Tensor  # (d_head,) the query vector at `query` (after rotary, for rotary models)
    k: torch.Tensor  # (key, d_head) every position's key (after rotary; the shared key/value head under GQA)
    v: torch.Tensor  # (key, d_head) every position's value
    scores: torch.Tensor  # (key,) q·k
    scale: float  # the scores' divisor: √d_head, or the model's own (GPT-2's × layer+1 when it scales by layer)
    scaled: torch.Tensor  # (key,) scores / scale
    masked: torch.Tensor  # (key,) scaled, with -inf after the query (the causal mask)
    weights: torch.Tensor  # (key,) softmax(masked): the pattern row
    weighted_values: torch.Tensor  # (key, d_head) weights[:, None] * v
    z: torch.Tensor  # (d_head,) the sum of the weighted values
    output: torch.Tensor  # (d_model,) z @ W_O[head]: what the head writes to the residual stream
    model_pattern_row: torch.Tensor  # (key,) the model's own hook_pattern row, to compare
    model_output: torch.Tensor  # (d_model,) the model's own hook_z of this head · W_O, to compare
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)


def head_anatomy(model: LoadedModel, prompt: str, layer: int, head: int, query: int, truncate: bool = False) -> HeadAnatomy:
    """One head's arithmetic at one query, from the model's own q, k, v (see HeadAnatomy).

    Rotary models rotate q and k by position before the dot product: the rotation and the score
    scale come from the forward engine, which is checked against the model's pattern here too.
    """
    info = model.info
    check_head(info.n_layers, info.n_heads, layer, head)
    b = f"blocks.{layer}.attn."
    run = run_prompt(model, prompt, [b + n for n in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z")], truncate=truncate)
    query = check_position(run.n_tokens, query)
    kv_head = head // (info.n_heads // info.n_kv_heads)  # grouped-query attention: the key/value head this head reads
    q = run[b + "hook_q"][:, head].float()  # (pos, d_head)
    k = run[b + "hook_k"][:, kv_head].float()  # (key, d_head)
    v = run[b + "hook_v"][:, kv_head].float()  # (key, d_head)
    try:
        w = engine.weights_of(model)
    except engine.Unsupported as err:
        w = None
        if model.bridge.cfg.positional_embedding_type != "standard":
            raise InputError(f"the head's arithmetic cannot be shown for this model: {err}") from err
    scale = math.sqrt(info.d_head) if w is None else 1.0 / w.layers[layer].scale
    if w is not None and w.rotary is not None:
        cos, sin = w.rotary.cos_sin(run.n_tokens, "cpu")
        q = w.rotary(q[None, :, None], cos.cpu(), sin.cpu())[0, :, 0]  # (pos, d_head), rotated by position
        k = w.rotary(k[None, :, None], cos.cpu(), sin.cpu())[0, :, 0]
    q = q[query]  # (d_head,)
    scores = k @ q  # (key,)
    scaled = scores / scale
    future = torch.arange(run.n_tokens) > query
    masked = scaled.masked_fill(future, float("-inf"))
    weights = masked.softmax(-1)
    weighted = weights[:, None] * v  # (key, d_head)
    z = weighted.sum(0)
    w_o = engine.block_weights(model, layer).W_O  # (head, d_head, d_model)
    return HeadAnatomy(
        layer, head, query, run.labels, q, k, v, scores, scale, scaled, masked, weights, weighted, z, z @ w_o[head],
        run[b + "hook_pattern"][head, query].float(), head_results(model, run, layer)[query, head],
        provenance(model, [prompt], view="head anatomy", layer=layer, head=head, query=query),
    )  # fmt: skip


def pattern_rows(p: Patterns, layer: int, head: int) -> list[dict]:
    """CSV rows of one head's pattern: query, key, their tokens, weight (the visible triangle only)."""
    grid = p.head(layer, head)
    return [
        dict(query=q, query_token=p.labels[q], key=k, key_token=p.labels[k], weight=float(grid[q, k]))
        for q in range(grid.shape[0])
        for k in range(q + 1)
    ]
