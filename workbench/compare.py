"""Two prompts side by side: how attention and the logit lens change between them.

Positions are compared one to one, from the start. Where the two prompts tokenize to the same
length the comparison covers every position; otherwise it covers the shared prefix length, and
the result says so (`Alignment.same_length`). Causality gives a check for free: before the first
differing token the two runs are identical, so every difference there is exactly zero.

Long prompts take the same functions: past `long.LONG_TOKENS` tokens each prompt's patterns are
kept in float16 (attention.patterns) and their difference is taken a layer at a time, and the lens
difference reads only the residual stream at the lens points, a chunk of positions at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench import attention, long
from workbench import lens as lens_
from workbench.model import LoadedModel
from workbench.runs import Run, encode, hook_names, provenance, run_prompt, run_tokens
from workbench.tokens import Alignment, align, token_labels


def align_runs(model: LoadedModel, a: Run, b: Run) -> Alignment:
    return align(model.tokenizer, a.tokens, b.tokens)


@dataclass(frozen=True)
class PatternDiff:
    alignment: Alignment
    a: torch.Tensor  # (layer, head, n, n) prompt A's patterns over the compared positions
    b: torch.Tensor  # same for prompt B
    diff: torch.Tensor  # b - a
    change: torch.Tensor  # (layer, head) total variation per query row, averaged: 0 = same, 1 = disjoint
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)


def _names(model: LoadedModel) -> list[str]:
    """What both comparisons read: asked for together, each prompt runs once for the whole page."""
    return hook_names(model, "attn.hook_pattern") + [name for _, name in lens_.lens_points(model)]


def pattern_diff(model: LoadedModel, prompt_a: str, prompt_b: str, chunked: bool | None = None) -> PatternDiff:
    """B's patterns minus A's over the compared positions, and each head's change.

    Not `chunked` (by default: both prompts up to long.LONG_TOKENS tokens): from the shared run
    cache, whose runs lens_diff reuses. `chunked`: each prompt's patterns kept in float16
    (attention.patterns), the difference stored in float16 too."""
    if chunked is None:
        chunked = max(long.n_tokens(model, prompt_a), long.n_tokens(model, prompt_b)) > long.LONG_TOKENS
    if chunked:
        pa, pb = (attention.patterns(model, p, chunked=True) for p in (prompt_a, prompt_b))
    else:
        pa, pb = (attention.patterns_of(run_prompt(model, p, _names(model))) for p in (prompt_a, prompt_b))
    al = align(model.tokenizer, pa.tokens, pb.tokens)
    n = al.n
    a, b = pa.pattern[..., :n, :n], pb.pattern[..., :n, :n]  # (layer, head, n, n)
    diff = torch.empty_like(a)
    change = torch.empty(a.shape[:2])  # (layer, head)
    for layer in range(a.shape[0]):  # a layer at a time: float32 arithmetic on one layer of a long prompt's float16
        d = b[layer].float() - a[layer].float()  # (head, n, n)
        diff[layer] = d
        change[layer] = 0.5 * d.abs().sum(-1).mean(-1)  # total variation distance of each row, mean over queries
    return PatternDiff(al, a, b, diff, change, provenance(model, [prompt_a, prompt_b], view="pattern difference", chunked=chunked))


@dataclass(frozen=True)
class LensDiff:
    alignment: Alignment
    points: list[str]
    top_a: list[list[str]]  # (point, n) prompt A's top-1 token
    top_b: list[list[str]]
    prob_a: torch.Tensor  # (point, n) top-1 probability
    prob_b: torch.Tensor
    js: torch.Tensor  # (point, n) Jensen-Shannon divergence between the two readings, nats (0..ln 2)
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)


def _residuals_only(model: LoadedModel, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """((point, pos, d_model) residual stream at the lens points, (pos,) tokens) of one uncached run."""
    tokens, _ = encode(model, prompt)
    names = [name for _, name in lens_.lens_points(model)]
    _, cache = run_tokens(model, tokens[None], names, last_only=True)
    return torch.stack([cache[n][0] for n in names]).float().cpu(), tokens


def lens_diff(model: LoadedModel, prompt_a: str, prompt_b: str, chunk: int = 32, with_patterns: bool = True) -> LensDiff:
    """`with_patterns`: run the prompts (cached) with the patterns too, so that pattern_diff shares the runs.

    False, for long prompts: each prompt runs once, uncached, keeping only the residual stream at
    the lens points and the last position's logits.
    """
    points = lens_.lens_points(model)
    if with_patterns:
        run_a, run_b = run_prompt(model, prompt_a, _names(model)), run_prompt(model, prompt_b, _names(model))
        al = align_runs(model, run_a, run_b)
        ra, rb = lens_.residuals(run_a, model)[:, : al.n], lens_.residuals(run_b, model)[:, : al.n]  # (point, n, d_model)
    else:
        (ra, ta), (rb, tb) = _residuals_only(model, prompt_a), _residuals_only(model, prompt_b)
        al = align(model.tokenizer, ta, tb)
        ra, rb = ra[:, : al.n], rb[:, : al.n]  # (point, n, d_model)
    tops_a, tops_b, probs_a, probs_b, js = [], [], [], [], []
    # before the first differing token both runs are the same (causality): B's readout there is A's, read once
    first = min(al.differ, default=al.n)
    for start, logits_a in lens_.no_grad_chunks(lens_.read_chunks(model, ra, chunk)):  # (point, c, d_vocab)
        stop = start + logits_a.shape[1]
        if stop <= first:
            logits_b = logits_a
        else:
            with torch.no_grad():
                own = lens_.readout(model, rb[:, max(start, first) : stop])  # (point, stop - max(start, first), d_vocab)
            logits_b = torch.cat([logits_a[:, : max(0, first - start)], own], 1)
        la, lb = logits_a.log_softmax(-1), logits_b.log_softmax(-1)  # (point, c, d_vocab)
        pa, pb = la.exp(), lb.exp()
        mid = (0.5 * (pa + pb)).clamp_min(1e-30).log()
        js.append(0.5 * ((pa * (la - mid)).sum(-1) + (pb * (lb - mid)).sum(-1)).clamp_min(0))
        ma, mb = la.max(-1), lb.max(-1)
        tops_a.append(ma.indices)
        tops_b.append(mb.indices)
        probs_a.append(ma.values.exp())
        probs_b.append(mb.values.exp())
    ids_a, ids_b = torch.cat(tops_a, 1), torch.cat(tops_b, 1)

    def labels(ids: torch.Tensor) -> list[list[str]]:
        flat = token_labels(model.tokenizer, ids.flatten().tolist())
        return [flat[i * al.n : (i + 1) * al.n] for i in range(ids.shape[0])]

    return LensDiff(
        al, [label for label, _ in points], labels(ids_a), labels(ids_b), torch.cat(probs_a, 1), torch.cat(probs_b, 1), torch.cat(js, 1),
        provenance(model, [prompt_a, prompt_b], view="lens difference", chunk=chunk),
    )  # fmt: skip
