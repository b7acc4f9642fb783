"""Head scores: how much of each head's attention goes where a known mechanism would put it.

All scores read an attention pattern `pattern[layer, head, query, key]` whose rows sum to 1, so a
score is a fraction of attention in [0, 1]; 1 means the head does exactly that and nothing else.

- previous-token score: mean attention from each position to the position just before it;
- every score leaves out query 0, which can only attend to itself (see `choosing_rows`);
- induction score, on a repeated random sequence (BOS, t_1..t_N, t_1..t_N): mean attention from
  each token of the second copy to the token right after that token's first occurrence, i.e.
  from position N+i to position i+1 (BOS at 0, first copy at 1..N). A perfect induction head
  scores 1. The N random tokens are drawn without replacement whenever the vocabulary allows, so
  that "its first occurrence" is unique even for the circuits model's 96-word vocabulary.

`transformer_lens.head_detector.detect_head` re-tokenizes a string (random tokens can merge at
the seam) and its default "mul" measure scores a perfect induction head ~0.5 here, so the scores
are computed directly from token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformer_lens import head_detector

from workbench import cost
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import hook_names, provenance, run_tokens
from workbench.tokens import ordinary_token_ids


def repeated_tokens(candidates: torch.Tensor, n: int, bos_id: int, generator: torch.Generator) -> torch.Tensor:
    """(1 + 2n,) ids: BOS, then n random ids from `candidates`, then the same n again."""
    if n <= len(candidates):
        pick = candidates[torch.randperm(len(candidates), generator=generator)[:n]]
    else:
        pick = candidates[torch.randint(0, len(candidates), (n,), generator=generator)]
    return torch.cat([torch.tensor([bos_id]), pick, pick])


def target_masks(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """(query, key) 0/1 masks of where each head type attends, from the token ids (pos,).

    The masks are transformer-lens's detection patterns (head_detector), plus key 0 for "first token".
    """
    t = tokens[None].cpu()
    pos = tokens.shape[0]
    first = torch.zeros(pos, pos)
    first[:, 0] = 1
    return {
        "previous token": head_detector.get_previous_token_head_detection_pattern(t).float(),
        "duplicate token": head_detector.get_duplicate_token_head_detection_pattern(t).float(),
        "induction": head_detector.get_induction_head_detection_pattern(t).float(),
        "first token": first,
    }


def choosing_rows(pos: int) -> torch.Tensor:
    """(pos,) bool: the query rows that can choose where to attend. Query 0 sees only itself (weight 1
    on BOS, whatever the head does), so it would bias every score toward "first token"."""
    rows = torch.ones(pos, dtype=torch.bool)
    rows[0] = False
    return rows


def attention_share(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(...) mean share of attention on the mask's keys, over the rows that can choose and have a target.

    pattern (..., query, key), mask (query, key); NaN where no row has a target.
    """
    rows = (mask.sum(-1) > 0) & choosing_rows(mask.shape[0])
    if not rows.any():
        return torch.full(pattern.shape[:-2], float("nan"))
    return (pattern * mask).sum(-1)[..., rows].mean(-1)


def _repeat_ids(n: int) -> torch.Tensor:
    """(1 + 2n,) stand-in ids with the shape of repeated_tokens(n): a start marker, n distinct ids, the same n again."""
    return torch.cat([torch.tensor([-1]), torch.arange(n), torch.arange(n)])


def induction_score(pattern: torch.Tensor, n: int) -> torch.Tensor:
    """(layer, head) scores from a (layer, head, query, key) pattern over a repeated sequence of length 1 + 2n."""
    assert pattern.shape[-1] == 1 + 2 * n, "pattern must come from repeated_tokens(n)"
    return attention_share(pattern, target_masks(_repeat_ids(n))["induction"])


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """(layer, head) mean attention from each position (but the first) to the one before it."""
    return attention_share(pattern, target_masks(torch.arange(pattern.shape[-1]))["previous token"])


@dataclass(frozen=True)
class RepeatScores:
    """Per-head scores measured on `seqs` repeated random sequences of n tokens (see module doc)."""

    n: int
    seqs: int
    seed: int
    induction: torch.Tensor  # (layer, head)
    previous_token: torch.Tensor  # (layer, head), over the same sequences
    tokens: torch.Tensor | None = None  # (seqs, 1 + 2n), when kept
    patterns: torch.Tensor | None = None  # (seqs, layer, head, q, k), when kept
    provenance: dict = field(default_factory=dict, repr=False)  # model and source, prompt(s), settings, versions (runs.provenance)

    def strongest_induction_head(self) -> tuple[int, int]:
        layer, head = divmod(int(self.induction.argmax()), self.induction.shape[1])
        return layer, head


def repeat_scores(
    model: LoadedModel, n: int = 50, seqs: int = 8, seed: int = 0, keep_patterns: bool = False, progress=None
) -> RepeatScores:
    """Runs `seqs` sequences BOS + n random tokens + the same n tokens and scores every head.

    One sequence per model call, `progress(done, seqs)` after each (its False cancels: cost.report).
    """
    if not 2 <= n <= (model.info.n_ctx - 1) // 2:
        raise InputError(f"n must be between 2 and {(model.info.n_ctx - 1) // 2} for this model's context, got {n}")
    gen = torch.Generator().manual_seed(seed)
    bos = model.bos_id if model.bos_id is not None else 0
    words = ordinary_token_ids(model.tokenizer, model.info.d_vocab)
    ids = torch.stack([repeated_tokens(words, n, bos, gen) for _ in range(seqs)])  # (seqs, 1+2n)
    names = hook_names(model, "attn.hook_pattern")
    rows = []
    for i in range(seqs):
        _, cache = run_tokens(model, ids[i : i + 1], names, last_only=True)
        rows.append(torch.stack([cache[name][0].float().cpu() for name in names]))  # (layer, head, q, k)
        cost.report(progress, i + 1, seqs, "head scores on repeated random tokens")
    per_seq = torch.stack(rows)  # (seqs, layer, head, q, k)
    pattern = per_seq.mean(0)  # (layer, head, q, k)
    kept = (ids, per_seq) if keep_patterns else (None, None)
    return RepeatScores(
        n, seqs, seed, induction_score(pattern, n), previous_token_score(pattern), *kept,
        provenance=provenance(model, [], view="repeat scores", n=n, seqs=seqs, seed=seed),
    )  # fmt: skip
