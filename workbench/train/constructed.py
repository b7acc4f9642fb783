"""The answer key: a circuits model whose weights implement induction by construction (not trained).

Its mechanism is known exactly, so it is ground truth for every view: what the attention, patching,
attribution or graph views show on it can be checked against the construction below (the trained
`circuits` model learned the same mechanism by itself). It is a plain GPT-2 (2 layers, 4 heads of 96, width 384, untied
unembedding) over the circuits vocabulary, with weights written by hand:

- the residual stream has named subspaces: TOKEN (one-hot of the current word, 96 dims), PREV
  (the previous word, written by layer 0), OUT (the word to predict, written by layer 1), POS
  (sinusoids of the position, 47 frequencies) and two constant dims (+c, −c) that fix the layer
  norms' scale so that every layer norm acts as a known constant factor;
- layer 0, head 0 is a previous-token head: its query is the position rotated one step back,
  its key the position, so it attends from i to i − 1; its value copies TOKEN into PREV;
- layer 1, head 0 is an induction head: its query reads TOKEN, its key reads PREV, so it attends
  to the positions right after earlier occurrences of the current word; its value copies their
  TOKEN into OUT;
- the unembedding reads OUT. Every other head, both MLPs and all biases are zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from workbench.train import circuits

N_WORDS = len(circuits.WORDS)  # 96 = d_head: one query/key dimension per word
D_HEAD, N_HEADS = 96, 4
D_MODEL = D_HEAD * N_HEADS  # 384
TOKEN, PREV, OUT = 0, N_WORDS, 2 * N_WORDS  # subspace starts
N_FREQ = 47
POS = 3 * N_WORDS  # 288 .. 288 + 2 * 47 = 382
STAB = POS + 2 * N_FREQ  # 382, 383: +c, -c
C = 4.0  # the constant dims' size: large enough that the layer norms' scale barely moves
N_CTX = 128
# gains as small as keep every head sharp (induction score > 0.999): larger ones amplify float32 rounding
# in transformer-lens's weight processing (logits off by 2e-3 at 8 / 6 / 12)
PREV_GAIN, INDUCTION_GAIN, OUT_GAIN = 2.0, 3.5, 3.0


def _freqs() -> torch.Tensor:
    # periods from 128 positions down: no two positions within the context share every phase
    return math.pi * torch.arange(1, N_FREQ + 1).float() / 64


def build(out: Path) -> dict:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=N_WORDS + 2, n_positions=N_CTX, n_embd=D_MODEL, n_layer=2, n_head=N_HEADS,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    config._attn_implementation = "eager"  # the scores read attention weights
    model = GPT2LMHeadModel(config)
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for name in sd:
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[name] = torch.ones(D_MODEL)
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            sd[name] = model.state_dict()[name]
    # embeddings: words one-hot in TOKEN; BOS and <unk> are all zero there
    wte = torch.zeros(N_WORDS + 2, D_MODEL)
    wte[2 + torch.arange(N_WORDS), TOKEN + torch.arange(N_WORDS)] = 1.0
    sd["transformer.wte.weight"] = wte
    pos = torch.arange(N_CTX).float()[:, None] * _freqs()  # (pos, freq)
    wpe = torch.zeros(N_CTX, D_MODEL)
    wpe[:, POS : POS + N_FREQ] = torch.cos(pos)
    wpe[:, POS + N_FREQ : STAB] = torch.sin(pos)
    wpe[:, STAB], wpe[:, STAB + 1] = C, -C
    sd["transformer.wpe.weight"] = wpe

    # GPT-2's c_attn is a Conv1D: x @ W with W (d_model, 3 * d_model) = [W_Q | W_K | W_V], heads in blocks of D_HEAD
    def qkv(layer: int) -> torch.Tensor:
        return sd[f"transformer.h.{layer}.attn.c_attn.weight"]

    w = _freqs()
    # layer 0, head 0: query = position rotated one step back, key = position
    q0, k0, v0 = qkv(0)[:, 0:D_HEAD], qkv(0)[:, D_MODEL : D_MODEL + D_HEAD], qkv(0)[:, 2 * D_MODEL : 2 * D_MODEL + D_HEAD]
    cos_rows, sin_rows = POS + torch.arange(N_FREQ), POS + N_FREQ + torch.arange(N_FREQ)
    f = torch.arange(N_FREQ)
    # q_cos = cos(a - w) = cos a cos w + sin a sin w ; q_sin = sin(a - w) = sin a cos w - cos a sin w
    q0[cos_rows, f] = torch.cos(w) * PREV_GAIN
    q0[sin_rows, f] = torch.sin(w) * PREV_GAIN
    q0[sin_rows, N_FREQ + f] = torch.cos(w) * PREV_GAIN
    q0[cos_rows, N_FREQ + f] = -torch.sin(w) * PREV_GAIN
    k0[cos_rows, f] = 1.0
    k0[sin_rows, N_FREQ + f] = 1.0
    v0[TOKEN + torch.arange(N_WORDS), torch.arange(N_WORDS)] = 1.0
    o0 = sd["transformer.h.0.attn.c_proj.weight"]  # (d_model, d_model): z (heads concatenated) -> residual
    o0[torch.arange(N_WORDS), PREV + torch.arange(N_WORDS)] = 1.0
    # layer 1, head 0: query = TOKEN, key = PREV, value = TOKEN -> OUT
    q1, k1, v1 = qkv(1)[:, 0:D_HEAD], qkv(1)[:, D_MODEL : D_MODEL + D_HEAD], qkv(1)[:, 2 * D_MODEL : 2 * D_MODEL + D_HEAD]
    q1[TOKEN + torch.arange(N_WORDS), torch.arange(N_WORDS)] = INDUCTION_GAIN
    k1[PREV + torch.arange(N_WORDS), torch.arange(N_WORDS)] = INDUCTION_GAIN
    v1[TOKEN + torch.arange(N_WORDS), torch.arange(N_WORDS)] = 1.0
    o1 = sd["transformer.h.1.attn.c_proj.weight"]
    o1[torch.arange(N_WORDS), OUT + torch.arange(N_WORDS)] = 1.0
    # the unembedding reads OUT; BOS and <unk> are never predicted
    lm = torch.zeros(N_WORDS + 2, D_MODEL)
    lm[2 + torch.arange(N_WORDS), OUT + torch.arange(N_WORDS)] = OUT_GAIN
    lm[:2, STAB] = -1.0
    sd["lm_head.weight"] = lm
    model.load_state_dict(sd)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    circuits.make_tokenizer().save_pretrained(out)
    scores = {str(n): circuits.induction_scores(model, n).tolist() for n in (20, 50)}
    record = {
        "constructed": True,
        "task": "Not trained: weights written by hand (workbench/train/constructed.py) to implement a previous-token head "
        "(layer 0, head 0) feeding an induction head (layer 1, head 0).",
        "config": {
            "n_layer": 2,
            "n_head": N_HEADS,
            "n_embd": D_MODEL,
            "n_positions": N_CTX,
            "vocab_size": N_WORDS + 2,
            "tie_word_embeddings": False,
        },
        "tokens_seen": 0,
        "train_seconds": 0,
        "machine": "none",
        "induction_scores": scores,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
