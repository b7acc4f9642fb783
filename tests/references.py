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


def metric_by_hand(logits: torch.Tensor, answer: int, wrong: int | None, metric: str) -> torch.Tensor:
    """(batch,) the patching metric of next-token logits (batch, d_vocab), written out."""
    if metric == "logit difference":
        return logits[:, answer] - logits[:, wrong]
    if metric == "probability":
        return logits.softmax(-1)[:, answer]
    return logits.log_softmax(-1)[:, answer]


@torch.no_grad()
def gpt2_node_effects(hf, base: torch.Tensor, source: torch.Tensor, nodes, answer: int, wrong: int | None, metric: str) -> torch.Tensor:
    """(node,) the normalised effect of patching each node, on plain transformers' GPT-2 with forward hooks.

    A node (kind "q", "k", "v" with a head, or "mlp") takes its activation at every position from the source run
    (base, source: (pos,) ids); the effect is (patched − base) / (source − base) of the metric. q, k and v are
    slices of the fused c_attn output; the MLP is the block's MLP output (transformer-lens's centred residual
    writes differ from these by a multiple of the ones vector, which every layer norm removes).
    """
    d = hf.config.n_embd
    d_head = d // hf.config.n_head
    grab: dict = {}
    hooks = []
    for layer, block in enumerate(hf.transformer.h):
        for name, module in ((f"qkv{layer}", block.attn.c_attn), (f"mlp{layer}", block.mlp)):
            hooks.append(module.register_forward_hook(lambda m, a, out, name=name: grab.__setitem__(name, out.detach().clone())))
    try:
        value = {}
        for which, ids in (("base", base), ("source", source)):
            value[which] = float(metric_by_hand(hf(ids[None]).logits[:, -1].float(), answer, wrong, metric)[0])
            if which == "source":
                stored = dict(grab)
    finally:
        for h in hooks:
            h.remove()
    effects = []
    for node in nodes:
        if node.kind == "mlp":
            module, key, cols = hf.transformer.h[node.layer].mlp, f"mlp{node.layer}", slice(None)
        else:
            offset = {"q": 0, "k": d, "v": 2 * d}[node.kind] + node.head * d_head
            module, key, cols = hf.transformer.h[node.layer].attn.c_attn, f"qkv{node.layer}", slice(offset, offset + d_head)

        def patch(m, a, out, key=key, cols=cols):
            out = out.clone()
            out[..., cols] = stored[key][..., cols]
            return out

        handle = module.register_forward_hook(patch)
        try:
            patched = float(metric_by_hand(hf(base[None]).logits[:, -1].float(), answer, wrong, metric)[0])
        finally:
            handle.remove()
        effects.append((patched - value["base"]) / (value["source"] - value["base"]))
    return torch.tensor(effects)
