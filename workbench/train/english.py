"""The English model: a small GPT-2 trained on public-domain English (corpus.py), with induction heads (the default until the stories model).

The tokenizer is a byte-level BPE trained on the same training text, so every string has an
encoding (no unknown token) and leading spaces stay part of the token, as in GPT-2.

The recipe (`RECIPE`, chosen by the measured short runs recorded in `search.py` and the card):
1. a copying curriculum (copying.py) over a growing pool of the vocabulary's own ids, at a
   constant learning rate, with the loss over the pool's logits: induction heads form here;
2. English windows with copying sequences over the whole vocabulary mixed into every step, with a
   cosine learning rate: English alone erodes the heads (measured: best head 0.52 -> 0.09 in 800
   steps), so the copies stay in the mix while English is learned.
Evaluation is in bits per character, so that vocabularies of different sizes compare.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from workbench.train import common, copying, corpus

EOT = "<|endoftext|>"
OUT_OF_DOMAIN = Path("/usr/share/common-licenses/GPL-3")  # legal English: in no training source


@dataclass(frozen=True)
class Recipe:
    """Everything a run of the English model depends on (with `common.TrainConfig` for the shape)."""

    model: common.TrainConfig = field(
        default_factory=lambda: common.TrainConfig(
            n_layer=2, n_head=4, n_embd=128, n_positions=256, vocab_size=2048, weight_decay=0.01, threads=1, log_every=50
        )
    )
    curriculum: tuple[tuple[int, int], ...] = ((96, 1200), (1024, 500), (0, 500))  # (pool size, steps); 0 = every id
    copy_length: int = 49  # BOS + 48 tokens in the curriculum
    copy_batch: int = 64
    sinusoidal_positions: bool = False  # start the position embeddings as sinusoids (common.sinusoidal_positions_)
    english_steps: int = 8000
    english_batch: int = 16
    english_lr: float = 2e-3
    mix_copy_batch: int = 8  # copying sequences per English step, over the whole vocabulary
    mix_copy_length: int = 129  # BOS + 128: room for the BOS + 50 + 50 test
    mix_copy_weight: float = 0.25
    mix_max_span: int = 60


RECIPE = Recipe()


def train_tokenizer(text: str, vocab_size: int, max_length: int = 256) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # paragraphs as the iterator keeps memory small and the merges deterministic
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=None, model_max_length=max_length)


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> np.ndarray:
    """The text as one stream of ids, groups of 64 paragraphs separated by <|endoftext|>."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    chunks = text.split("\n\n")
    ids: list[int] = []
    for enc in tokenizer(["\n\n".join(chunks[i : i + 64]) for i in range(0, len(chunks), 64)])["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


def english_batch(data: torch.Tensor, batch_size: int, n: int, bos: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (batch, n) of the stream, each starting with <|endoftext|> as BOS as GPT-2 is used."""
    starts = torch.randint(0, len(data) - n, (batch_size,), generator=generator)
    ids = torch.stack([data[s : s + n] for s in starts.tolist()])
    ids[:, 0] = bos
    return ids, torch.ones(batch_size, n - 1, dtype=torch.bool)


def batches(stream: np.ndarray, cfg: common.TrainConfig, generator: torch.Generator):
    """Endless English batches (the tests' tiny runs)."""
    data = torch.from_numpy(stream.astype(np.int64))
    while True:
        yield english_batch(data, cfg.batch_size, cfg.n_positions, int(stream[-1]), generator)


SNAPSHOT_PRECISION = "int8"  # 12 snapshots of the 2 x 128 model: 8.5 MB (17 MB in fp16)


def snapshot_steps(recipe: Recipe) -> tuple[int, ...]:
    """Where the run keeps a snapshot: dense in the curriculum (where the heads form), sparser in English."""
    bounds, total = [], 0
    for _, steps in recipe.curriculum:
        total += steps
        bounds.append(total)
    first = bounds[0] if bounds else 0
    early = [first // 4, first // 2, 3 * first // 4, *bounds]  # around the phase change, then each pool
    late = [total + recipe.english_steps * k // 6 for k in range(1, 7)]
    return tuple(sorted({s for s in early + late if s > 0}))


def stages(recipe: Recipe, train_ids: np.ndarray, bos: int, vocab_size: int) -> list[common.Stage]:
    """The curriculum, then English mixed with copies (module doc)."""
    data = torch.from_numpy(train_ids.astype(np.int64))
    # the pools are prefixes of one fixed shuffle of every id but BOS
    order = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(recipe.model.seed))
    everyone = order[order != bos]
    out = []
    for size, steps in recipe.curriculum:
        pool = everyone[: size or len(everyone)]

        def copy_stage(g, pool=pool):
            return [copying.copy_part(pool, recipe.copy_batch, recipe.copy_length, bos, g)]

        out.append(common.Stage(f"copy, pool {len(pool)}", steps, copy_stage, lr=2e-3, schedule="constant"))

    def mixed(g):
        ids, mask = english_batch(data, recipe.english_batch, recipe.model.n_positions, bos, g)
        parts = [common.Part(ids, mask, 1.0, name="english_loss")]
        if recipe.mix_copy_batch:
            parts.append(
                copying.copy_part(
                    everyone,
                    recipe.mix_copy_batch,
                    recipe.mix_copy_length,
                    bos,
                    g,
                    weight=recipe.mix_copy_weight,
                    pool_logits=False,
                    max_span=recipe.mix_max_span,
                )
            )
        return parts

    out.append(common.Stage("English + copies", recipe.english_steps, mixed, lr=recipe.english_lr, schedule="cosine", warmup=0))
    return out


@torch.no_grad()
def stream_loss(model: GPT2LMHeadModel, tokenizer, stream: np.ndarray, n_positions: int, max_windows: int | None = None) -> dict:
    """Loss of consecutive BOS-prefixed windows of `stream`, evenly spread when `max_windows` is set.

    Returns nats per token and bits per character (the characters the scored tokens decode to)."""
    data = torch.from_numpy(stream.astype(np.int64))
    width = n_positions - 1
    starts = list(range(0, len(data) - width, width))
    if max_windows and len(starts) > max_windows:
        starts = [starts[round(i * (len(starts) - 1) / (max_windows - 1))] for i in range(max_windows)]
    bos = int(stream[-1])
    windows = torch.stack([data[s : s + width] for s in starts])
    ids = torch.cat([torch.full((len(starts), 1), bos), windows], dim=1)  # (windows, n_positions)
    total, count, chars = 0.0, 0, 0
    for chunk in ids.split(16):
        logits = model(chunk).logits[:, :-1].float()
        targets = chunk[:, 1:]
        keep = targets != bos  # document separators are no characters of text
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        total += (losses * keep.flatten()).sum().item()
        count += int(keep.sum())
        chars += sum(len(tokenizer.decode(row[row != bos].tolist())) for row in targets)
    return {"nats_per_token": total / count, "bits_per_char": total / math.log(2) / chars}


@torch.no_grad()
def induction_check(model: GPT2LMHeadModel, vocab_size: int, bos: int, n: int = 50, seqs: int = 8, seed: int = 0) -> dict:
    """Best head and best layer-sum induction score on BOS + n random ids twice, and the two copies' losses.

    Computed from the plain transformers model's attentions (eager), independently of the workbench."""
    gen = torch.Generator().manual_seed(seed)
    candidates = torch.tensor([i for i in range(vocab_size) if i != bos])
    rows = []
    for _ in range(seqs):
        pick = candidates[torch.randperm(len(candidates), generator=gen)[:n]]
        rows.append(torch.cat([torch.tensor([bos]), pick, pick]))
    ids = torch.stack(rows)  # (seqs, 1 + 2n)
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        out = model(ids, output_attentions=True)
    finally:
        model.config._attn_implementation = impl
    pattern = torch.stack(out.attentions, dim=1).mean(0)  # (layer, head, q, k)
    q = torch.arange(n + 1, 2 * n + 1)
    scores = pattern[..., q, q - n + 1].mean(-1)  # (layer, head)
    losses = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(0)  # (2n,)
    return {
        "induction_best_head": round(scores.max().item(), 4),
        "induction_best_layer_sum": round(scores.sum(-1).max().item(), 4),
        "first_copy_loss": round(losses[1:n].mean().item(), 4),  # targets 2..n (the first token is unpredictable)
        "second_copy_loss": round(losses[n + 1 :].mean().item(), 4),
    }


def out_of_domain_text() -> str:
    """The GPL-3 text with its paragraphs unwrapped: English in no training source, on every Debian machine."""
    return corpus.lay_out(corpus.normalise_text(OUT_OF_DOMAIN.read_text()), "prose")


def prepare(cache: Path, vocab_size: int, n_positions: int):
    """(tokenizer, train ids, held-out ids, held-out text, documents)."""
    docs = corpus.documents(corpus.fetch(cache))
    train_text, heldout_text = corpus.split_text(docs)
    tokenizer = train_tokenizer(train_text, vocab_size, n_positions)
    return tokenizer, encode(tokenizer, train_text), encode(tokenizer, heldout_text), heldout_text, docs, train_text


def build(out: Path, cache: Path, recipe: Recipe = RECIPE, run_dir: Path | None = None, snapshots=(), log=print) -> dict:
    cfg = recipe.model
    tokenizer, train_ids, heldout_ids, _, docs, train_text = prepare(cache, cfg.vocab_size, cfg.n_positions)
    log(f"corpus: {len(train_text):,} chars -> {len(train_ids):,} tokens train, {len(heldout_ids):,} held out")
    eot = tokenizer.convert_tokens_to_ids(EOT)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(common.gpt2_config(cfg, eot, eot))
    if recipe.sinusoidal_positions:
        common.sinusoidal_positions_(model)
    ood_ids = encode(tokenizer, out_of_domain_text())

    def evaluate(m):
        held = stream_loss(m, tokenizer, heldout_ids, cfg.n_positions, max_windows=24)
        return {"heldout_bpc": round(held["bits_per_char"], 4)} | induction_check(m, cfg.vocab_size, eot, seqs=4)

    record = common.run_stages(
        model,
        stages(recipe, train_ids, eot, cfg.vocab_size),
        cfg,
        run_dir,
        snapshots,
        evaluate,
        log=log,
        snapshot_precision=SNAPSHOT_PRECISION,
    )
    record["recipe"] = asdict(recipe)
    held = stream_loss(model, tokenizer, heldout_ids, cfg.n_positions)
    ood = stream_loss(model, tokenizer, ood_ids, cfg.n_positions)
    record["heldout"] = {k: round(v, 4) for k, v in held.items()}
    record["out_of_domain"] = {k: round(v, 4) for k, v in ood.items()} | {"text": str(OUT_OF_DOMAIN)}
    record["induction"] = induction_check(model, cfg.vocab_size, eot)
    record["corpus"] = {
        "train_chars": len(train_text),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(heldout_ids),
        "sources": sorted({d.source for d in docs}),
        "layouts": {d.source: d.layout for d in docs},
        "documents": len(docs),
    }
    common.save(model, tokenizer, out, record)
    if run_dir is not None:
        record["checkpoints"] = common.ship_snapshots(run_dir, out)
        common.save(model, tokenizer, out, record)
    write_samples(out, docs)
    return record


HELD_OUT_AUTHOR = "mobydick"  # the tuned lens is validated on this author's paragraphs, and trained on the others'


def write_samples(out: Path, docs: list[corpus.Document]) -> None:
    """Held-out and out-of-domain samples ship with the model, so that the card's numbers can be re-measured.

    heldout_sample.txt: held-out paragraphs spread over every source but HELD_OUT_AUTHOR;
    heldout_author.txt: HELD_OUT_AUTHOR's held-out paragraphs (the tuned lens's validation text);
    heldout_prose.txt: held-out paragraphs of the prose sources (the line-break measure);
    out_of_domain_sample.txt: the unwrapped GPL-3."""
    held = corpus.heldout_paragraphs(docs)
    (out / "heldout_sample.txt").write_text(corpus.spread_sample([p for d, p in held if d.title != HELD_OUT_AUTHOR], 60_000))
    (out / "heldout_author.txt").write_text(corpus.spread_sample([p for d, p in held if d.title == HELD_OUT_AUTHOR], 30_000))
    (out / "heldout_prose.txt").write_text(corpus.spread_sample([p for d, p in held if d.layout == "prose"], 30_000))
    (out / "out_of_domain_sample.txt").write_text(out_of_domain_text())
