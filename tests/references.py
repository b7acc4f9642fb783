"""Independent references for the tests: plain `transformers` and hand computations, no workbench analysis code.

Each function here reads the Hugging Face model (its own forward with `output_attentions` /
`output_hidden_states`, or hooks on its modules) or the answer key's construction
(workbench/train/constructed.py), so that a test compares the workbench with something that the
workbench did not compute.
"""

from __future__ import annotations

import torch


def hf_model(model):
    """The plain transformers model of a loaded model's folder (eager attention, so that attentions are returned)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model.info.source, use_safetensors=True, attn_implementation="eager").eval()


@torch.no_grad()
def hf_patterns(hf, ids: torch.Tensor) -> torch.Tensor:
    """(batch, layer, head, query, key) attention weights of plain transformers on ids (batch, pos)."""
    return torch.stack(hf(ids, output_attentions=True).attentions, 1).float()


def repeat_scores_by_hand(pattern: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """(layer, head) induction and previous-token scores of a pattern (layer, head, q, k) over BOS + n tokens + the same n.

    The definitions written out, position by position: induction is the attention from position n + i
    (the second copy's i-th token) to position i + 1 (the token after its first occurrence); previous
    token is the attention from every query but the first to the one before it.
    """
    q = torch.arange(n + 1, 2 * n + 1)
    induction = pattern[..., q, q - n + 1].mean(-1)
    rows = torch.arange(1, pattern.shape[-1])
    previous = pattern[..., rows, rows - 1].mean(-1)
    return {"induction": induction, "previous token": previous}


def constructed_heads(hf) -> list[tuple[int, int]]:
    """(layer, head) of every head of a GPT-2 whose query weights are not zero: on the answer key, by construction,
    the previous-token head in layer 0 and the induction head in layer 1 (every other head is zero)."""
    d, n_heads = hf.config.n_embd, hf.config.n_head
    d_head = d // n_heads
    found = []
    for layer, block in enumerate(hf.transformer.h):
        w_q = block.attn.c_attn.weight[:, :d]  # Conv1D (d_model, 3 d_model): queries first
        for head in range(n_heads):
            if w_q[:, head * d_head : (head + 1) * d_head].abs().max() > 0:
                found.append((layer, head))
    return found
