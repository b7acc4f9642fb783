"""Head scores: how much of each head's attention goes where a known mechanism would put it.

All scores read an attention pattern `pattern[layer, head, query, key]` whose rows sum to 1, so a
score is a fraction of attention in [0, 1]; 1 means the head does exactly that and nothing else.

- previous-token score: mean attention from each position to the position just before it;
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

from dataclasses import dataclass

import torch

from workbench.errors import InputError
from workbench.model import LoadedModel


def repeated_tokens(candidates: torch.Tensor, n: int, bos_id: int, generator: torch.Generator) -> torch.Tensor:
    """(1 + 2n,) ids: BOS, then n random ids from `candidates`, then the same n again."""
    if n <= len(candidates):
        pick = candidates[torch.randperm(len(candidates), generator=generator)[:n]]
    else:
        pick = candidates[torch.randint(0, len(candidates), (n,), generator=generator)]
    return torch.cat([torch.tensor([bos_id]), pick, pick])


def induction_score(pattern: torch.Tensor, n: int) -> torch.Tensor:
    """(layer, head) scores from a (layer, head, query, key) pattern over a repeated sequence of length 1 + 2n."""
    assert pattern.shape[-1] == 1 + 2 * n, "pattern must come from repeated_tokens(n)"
    # the query at n+i holds t_i (second copy); t_i first stood at i, so the induction target is i+1
    queries = torch.arange(n + 1, 2 * n + 1)
    return pattern[..., queries, queries - n + 1].mean(-1)


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """(layer, head) mean attention from each position (but the first) to the one before it."""
    pos = pattern.shape[-1]
    q = torch.arange(1, pos)
    return pattern[..., q, q - 1].mean(-1)


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

    def strongest_induction_head(self) -> tuple[int, int]:
        layer, head = divmod(int(self.induction.argmax()), self.induction.shape[1])
        return layer, head


def candidate_tokens(model: LoadedModel) -> torch.Tensor:
    """Every token id but the special ones: what random sequences are drawn from."""
    special = set(model.tokenizer.all_special_ids)
    return torch.tensor([i for i in range(model.info.d_vocab) if i not in special and i < len(model.tokenizer)])


def repeat_scores(model: LoadedModel, n: int = 50, seqs: int = 8, seed: int = 0, keep_patterns: bool = False) -> RepeatScores:
    """Runs `seqs` sequences BOS + n random tokens + the same n tokens and scores every head."""
    if not 2 <= n <= (model.info.n_ctx - 1) // 2:
        raise InputError(f"n must be between 2 and {(model.info.n_ctx - 1) // 2} for this model's context, got {n}")
    gen = torch.Generator().manual_seed(seed)
    bos = model.bos_id if model.bos_id is not None else 0
    ids = torch.stack([repeated_tokens(candidate_tokens(model), n, bos, gen) for _ in range(seqs)])  # (seqs, 1+2n)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.info.n_layers)]
    with model.lock, torch.no_grad():
        _, cache = model.bridge.run_with_cache(ids.to(model.device), names_filter=names, return_cache_object=False)
    per_seq = torch.stack([cache[name].float().cpu() for name in names], dim=1)  # (seqs, layer, head, q, k)
    pattern = per_seq.mean(0)  # (layer, head, q, k)
    kept = (ids, per_seq) if keep_patterns else (None, None)
    return RepeatScores(n, seqs, seed, induction_score(pattern, n), previous_token_score(pattern), *kept)
