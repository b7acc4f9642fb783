"""The training loop every trained model shares: a GPT-2 from `transformers`, AdamW, stages, checkpoints.

A run is a list of `Stage`s (a curriculum): each has its own number of steps, learning-rate shape
and data. A step's batch is one or more `Part`s (e.g. English windows and a copying task), each
with its own loss weight and, optionally, the token ids its loss is computed over (see
`copying.py` for why a copying task's loss is taken over its pool's logits only).

Determinism and resuming: the batch of global step s is drawn from a generator seeded with
(seed, s) alone, the initial weights come from the seed, and the number of CPU threads is fixed by
the config, so a run -- stopped and resumed from its last saved state or not -- reproduces the same
weights on the same machine. The run folder holds `state.pt` (weights, optimiser, step, log; saved
every `save_every` steps), `log.jsonl`, and fp16 snapshots `checkpoints/step-NNNNNN.safetensors`
at the steps asked for: those ship with the model, so the workbench can show how it learned.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel


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
    # bf16 autocast of each step's forward (weights, gradients and optimiser stay fp32): this CPU has AVX-512 BF16;
    # bf16.training measures its speed and loss against fp32 on the stories recipe
    autocast: bool = False


@dataclass(frozen=True)
class Part:
    """One piece of a step's batch: ids (batch, pos), a loss mask (batch, pos-1) over the targets
    ids[:, 1:], a weight in the step's loss, and optionally the token ids the loss is taken over."""

    ids: torch.Tensor
    mask: torch.Tensor
    weight: float = 1.0
    vocab: torch.Tensor | None = None  # (n,) ids: softmax over these logits only; None = all
    name: str = "loss"


@dataclass(frozen=True)
class Stage:
    """`steps` steps whose batches come from `batch(generator)`; lr constant or cosine to lr x min_lr."""

    name: str
    steps: int
    batch: Callable[[torch.Generator], list[Part]]
    lr: float = 2e-3
    schedule: str = "constant"  # "constant" or "cosine" (with `warmup` linear steps first)
    warmup: int = 0
    min_lr: float = 0.1  # cosine ends at lr x min_lr


def gpt2_config(cfg: TrainConfig, bos_id: int, eos_id: int) -> GPT2Config:
    """A GPT-2 of the config's shape: one dropout everywhere, the unembedding tied to the token embedding."""
    shape = {name: getattr(cfg, name) for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")}
    dropout = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), cfg.dropout)
    return GPT2Config(**shape, **dropout, bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=True)


@torch.no_grad()
def sinusoidal_positions_(model: GPT2LMHeadModel) -> None:
    """Starts the (still learned) position embeddings as sinusoids of GPT-2's embedding scale.

    A previous-token head needs pos_i . W_QK . pos_(i-1) high at every position; from random position
    embeddings that is learned one position at a time (measured: over 1,000 steps at 128 positions).
    Sinusoids make "one back" the same rotation everywhere, so one W_QK serves every position."""
    wpe = model.transformer.wpe.weight  # (n_positions, d_model)
    n, d = wpe.shape
    pos = torch.arange(n)[:, None].float()
    freq = torch.exp(-torch.arange(0, d, 2).float() * (math.log(10_000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    wpe.copy_(table * model.config.initializer_range / table.std())


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup then cosine from cfg.lr to 0.1 x cfg.lr over cfg.steps (the one-stage runs)."""
    return stage_lr(Stage("", cfg.steps, lambda g: [], cfg.lr, "cosine", cfg.warmup), step)


def stage_lr(stage: Stage, step: int) -> float:
    """The learning rate at `step` (counted from the stage's start)."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    if stage.schedule == "constant":
        return stage.lr
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (stage.min_lr + (1 - stage.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))


def masked_loss(model: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss over the masked targets; with `vocab`, the softmax runs over those ids only."""
    logits = model(ids).logits[:, :-1]  # (batch, pos-1, vocab)
    targets = ids[:, 1:]
    if vocab is not None:
        logits = logits[..., vocab]  # (batch, pos-1, n)
        lookup = torch.full((model.config.vocab_size,), -100, dtype=torch.long)
        lookup[vocab] = torch.arange(len(vocab))
        targets = lookup[targets]
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=-100)
    mask = mask.flatten().float() * (targets.flatten() >= 0)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def optimizer(model: GPT2LMHeadModel, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one global step's batch: depends on (seed, step) alone, so resuming is exact."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


SCALE_SUFFIX = ".int8_row_scale"


def snapshot_tensors(state: dict[str, torch.Tensor], precision: str = "fp16") -> dict[str, torch.Tensor]:
    """A state dict as stored in a snapshot: fp16, or ("int8") matrices as int8 rows with one fp16 scale per row.

    int8 halves a snapshot again (a 4 x 128 model with 4,096 tokens: 2.7 MB in fp16, 1.4 MB in int8) at a
    relative error of at most 1/254 of each row's largest weight; vectors (biases, norms) stay fp16."""
    out = {}
    for name, w in state.items():
        if name == "lm_head.weight":  # tied to the token embedding
            continue
        w = w.detach().float()
        if precision == "int8" and w.dim() == 2:
            scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127  # (rows, 1)
            out[name] = (w / scale).round().clamp(-127, 127).to(torch.int8).contiguous()
            out[name + SCALE_SUFFIX] = scale.squeeze(-1).to(torch.float16)
        else:
            out[name] = w.to(torch.float16).contiguous()
    return out


def _save_snapshot(model: GPT2LMHeadModel, path: Path, precision: str = "fp16") -> None:
    save_file(snapshot_tensors(model.state_dict(), precision), str(path), metadata={"precision": precision})


def run_stages(
    model: GPT2LMHeadModel,
    stages: Sequence[Stage],
    cfg: TrainConfig,
    run_dir: Path | None = None,
    snapshots: Sequence[int] = (),
    evaluate: Callable[[GPT2LMHeadModel], dict[str, float]] | None = None,
    eval_every: int = 500,
    save_every: int = 200,
    log: Callable[[str], None] = print,
    snapshot_precision: str = "fp16",
    until: int | None = None,
) -> dict:
    """Trains `model` in place through `stages`, resuming from `run_dir/state.pt` if it is there.

    `until` stops after that many steps (state saved), as an interrupted run would: the same call
    without it resumes there.

    Returns the training record: per-step losses (every cfg.log_every steps), evaluations (every
    `eval_every` steps and at each snapshot), tokens seen, wall time."""
    torch.set_num_threads(cfg.threads)
    opt = optimizer(model, cfg.weight_decay)
    total = sum(s.steps for s in stages)
    start_step, history, tokens, seconds = 0, [], 0, 0.0
    state_path = run_dir / "state.pt" if run_dir else None
    if run_dir:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if state_path and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step, history, tokens, seconds = state["step"], state["history"], state["tokens"], state["seconds"]
        log(f"resumed at step {start_step} of {total}")
    bounds = [0]
    for s in stages:
        bounds.append(bounds[-1] + s.steps)
    model.train()
    began = time.time() - seconds
    for step in range(start_step, min(total, until or total)):
        k = max(i for i in range(len(stages)) if bounds[i] <= step)
        stage = stages[k]
        lr = stage_lr(stage, step - bounds[k])
        for group in opt.param_groups:
            group["lr"] = lr
        parts = stage.batch(step_generator(cfg.seed, step))
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.autocast):
            losses = {p.name: masked_loss(model, p.ids, p.mask, p.vocab).float() for p in parts}
        loss = sum(p.weight * losses[p.name] for p in parts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += sum(p.ids.numel() for p in parts)
        done = step + 1
        # evaluations are logged lines too: every eval_every steps, at each snapshot, and at the end
        evaluating = evaluate is not None and (done % eval_every == 0 or done == total or done in snapshots)
        if done == 1 or done % cfg.log_every == 0 or done == total or done in snapshots or evaluating:
            rec = {"step": done, "stage": stage.name, "lr": round(lr, 6), "tokens": tokens, "seconds": round(time.time() - began, 1)}
            rec |= {name: round(v.item(), 4) for name, v in losses.items()}
            if evaluating:
                model.eval()
                rec |= evaluate(model)
                model.train()
            history.append(rec)
            log(json.dumps(rec))
            if run_dir:
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
        if run_dir and done in snapshots:
            _save_snapshot(model, run_dir / "checkpoints" / f"step-{done:06d}.safetensors", snapshot_precision)
        if state_path and (done % save_every == 0 or done in (total, until)):
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": done,
                "history": history,
                "tokens": tokens,
                "seconds": time.time() - began,
            }
            torch.save(state, state_path.with_suffix(".tmp"))
            os.replace(state_path.with_suffix(".tmp"), state_path)
    model.eval()
    return {
        "config": asdict(cfg),
        "stages": [{"name": s.name, "steps": s.steps, "lr": s.lr, "schedule": s.schedule, "warmup": s.warmup} for s in stages],
        "tokens_seen": tokens,
        "train_seconds": round(time.time() - began, 1),
        "history": history,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }


def train(model, batches, cfg: TrainConfig, evaluate=None, log: Callable[[str], None] = print) -> dict:
    """One cosine stage over an iterator of (ids, mask) batches (the tests' tiny runs use this)."""

    def batch(_generator):
        ids, mask = next(batches)
        return [Part(ids, mask)]

    stage = Stage("train", cfg.steps, batch, cfg.lr, "cosine", cfg.warmup)
    return run_stages(model, [stage], cfg, evaluate=evaluate, eval_every=cfg.log_every * 10, log=log)


def save(model: GPT2LMHeadModel, tokenizer, out: Path, record: dict) -> None:
    """Writes a Hugging Face folder: config.json, model.safetensors, tokenizer files, training.json."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def ship_snapshots(run_dir: Path, out: Path) -> list[int]:
    """Copies a run's fp16 snapshots into out/checkpoints (what ships with the model); returns their steps."""
    dest = out / "checkpoints"
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("step-*.safetensors"):
        old.unlink()
    steps = []
    for path in sorted((run_dir / "checkpoints").glob("step-*.safetensors")):
        (dest / path.name).write_bytes(path.read_bytes())
        steps.append(int(path.stem.split("-")[1]))
    return steps
