"""The training loop both shipped models share: a GPT-2 from `transformers`, AdamW, cosine decay.

Determinism: the data order, the initial weights and the dropout masks all come from one seed,
and the number of CPU threads is fixed by the config, so a rerun on the same machine reproduces
the same weights.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

# A batch: token ids (batch, pos) and a loss mask (batch, pos) over the targets, i.e. aligned with
# ids[:, 1:] -- True where the next-token loss counts.
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 256  # context length
    vocab_size: int = 4096
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    dropout: float = 0.0  # tiny models underfit; dropout only slows them
    seed: int = 0
    threads: int = 2  # fixed, so that a rerun reproduces the same floating-point sums
    log_every: int = 50


def gpt2_config(cfg: TrainConfig, bos_id: int, eos_id: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def masked_loss(model: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits[:, :-1]  # (batch, pos-1, vocab)
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    mask = mask.flatten().float()
    return (losses * mask).sum() / mask.sum()


def train(
    model: GPT2LMHeadModel,
    batches: Iterator[Batch],
    cfg: TrainConfig,
    evaluate: Callable[[GPT2LMHeadModel], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains in place; returns the training record (losses by step, tokens seen, wall time)."""
    torch.set_num_threads(cfg.threads)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    history, tokens, start = [], 0, time.time()
    for step in range(cfg.steps):
        ids, mask = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = masked_loss(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += ids.numel()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": round(loss.item(), 4), "tokens": tokens, "seconds": round(time.time() - start, 1)}
            if evaluate is not None and (step % (cfg.log_every * 10) == 0 or step == cfg.steps - 1):
                model.eval()
                rec.update(evaluate(model))
                model.train()
            history.append(rec)
            log(json.dumps(rec))
    model.eval()
    return {
        "config": asdict(cfg),
        "tokens_seen": tokens,
        "train_seconds": round(time.time() - start, 1),
        "history": history,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }


def save(model: GPT2LMHeadModel, tokenizer, out: Path, record: dict) -> None:
    """Writes a Hugging Face folder: config.json, model.safetensors, tokenizer files, training.json."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
