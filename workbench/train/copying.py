"""The copying task that grows induction heads: random tokens in which one span is copied later.

Each sequence is BOS + `length - 1` tokens drawn uniformly from a pool of token ids; one span of
h tokens (uniform in [min_span, max_span]) is copied after a gap drawn uniformly from everything
the length allows, at a uniform offset. The loss counts only the copied positions after the first
token of the copy: those are exactly the tokens that can be predicted, and only by finding the
earlier occurrence of the current token and reading what followed it -- a previous-token head
feeding an induction head. Gaps must vary widely: with copies only 6-18 positions apart a model
learned fixed-offset positional heads instead (../shared/NOTES.md).

Why the loss is taken over the pool's logits only (`Part.vocab`): measured here on a 2-layer model
with 4,096 vocabulary rows, the copying task over all logits showed no phase change in 4,800 steps,
while the same task with the softmax over the 96 pool ids had it at 400-600 steps, as a 97-token
model does. The pool then grows (96 -> 1,024 -> every id), and the heads carry over to the whole
vocabulary.
"""

from __future__ import annotations

import torch

from workbench.train.common import Part


def copy_batch(
    pool: torch.Tensor, batch_size: int, length: int, bos: int, generator: torch.Generator, min_span: int = 4, max_span: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, length) ids and (batch, length-1) loss mask over the targets ids[:, 1:] (module doc)."""
    ids = pool[torch.randint(0, len(pool), (batch_size, length), generator=generator)]
    ids[:, 0] = bos
    mask = torch.zeros(batch_size, length - 1, dtype=torch.bool)
    body = length - 1  # positions 1 .. length-1
    top = min(max_span, body // 2)
    for b in range(batch_size):
        h = int(torch.randint(min_span, top + 1, (1,), generator=generator))
        gap = int(torch.randint(0, body - 2 * h + 1, (1,), generator=generator))
        src = 1 + int(torch.randint(0, body - 2 * h - gap + 1, (1,), generator=generator))
        dst = src + h + gap
        ids[b, dst : dst + h] = ids[b, src : src + h]
        mask[b, dst : dst + h - 1] = True  # targets dst+1 .. dst+h-1: predictable from the first copy
    return ids, mask


def copy_part(
    pool: torch.Tensor,
    batch_size: int,
    length: int,
    bos: int,
    generator: torch.Generator,
    weight: float = 1.0,
    pool_logits: bool = True,
    max_span: int = 16,
) -> Part:
    """A copying batch as a training `Part`; with `pool_logits` the loss's softmax runs over the pool only."""
    ids, mask = copy_batch(pool, batch_size, length, bos, generator, max_span=max_span)
    return Part(ids, mask, weight, pool if pool_logits else None, name="copy_loss")
