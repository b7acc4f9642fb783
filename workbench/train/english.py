"""The default model: a small GPT-2 trained on the public-domain English corpus (see corpus.py).

The tokenizer is a byte-level BPE trained on the same training text, so every string has an
encoding (no unknown token) and leading spaces stay part of the token, as in GPT-2.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from workbench.train import common, corpus

EOT = "<|endoftext|>"
ENGLISH = common.TrainConfig()


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
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
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=None, model_max_length=ENGLISH.n_positions)


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> np.ndarray:
    """The text as one stream of ids, documents/paragraph groups separated by <|endoftext|>."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    chunks = text.split("\n\n")
    ids: list[int] = []
    for enc in tokenizer(["\n\n".join(chunks[i : i + 64]) for i in range(0, len(chunks), 64)])["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


def batches(stream: np.ndarray, cfg: common.TrainConfig, generator: torch.Generator):
    """Random windows of the stream, each starting with <|endoftext|> as BOS as GPT-2 is used."""
    n = cfg.n_positions
    data = torch.from_numpy(stream.astype(np.int64))
    bos = int(stream[-1])
    while True:
        starts = torch.randint(0, len(data) - n, (cfg.batch_size,), generator=generator)
        ids = torch.stack([data[s : s + n] for s in starts.tolist()])
        ids[:, 0] = bos
        yield ids, torch.ones(cfg.batch_size, n - 1, dtype=torch.bool)


@torch.no_grad()
def heldout_loss(model: GPT2LMHeadModel, stream: np.ndarray, n_positions: int, max_windows: int = 64) -> float:
    """Mean next-token loss over consecutive BOS-prefixed windows of the held-out stream."""
    data = torch.from_numpy(stream.astype(np.int64))
    width = n_positions - 1
    windows = [data[i : i + width] for i in range(0, len(data) - width, width)][:max_windows]
    bos = torch.full((len(windows), 1), int(stream[-1]))
    ids = torch.cat([bos, torch.stack(windows)], dim=1)
    total, count = 0.0, 0
    for chunk in ids.split(16):
        logits = model(chunk).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        total, count = total + loss.item(), count + chunk[:, 1:].numel()
    return total / count


def build(out: Path, cache: Path, cfg: common.TrainConfig = ENGLISH, log=print) -> dict:
    docs = corpus.documents(corpus.fetch(cache))
    train_text, heldout_text = corpus.split_text(docs)
    tokenizer = train_tokenizer(train_text, cfg.vocab_size)
    train_ids, heldout_ids = encode(tokenizer, train_text), encode(tokenizer, heldout_text)
    log(f"corpus: {len(train_text):,} chars -> {len(train_ids):,} tokens train, {len(heldout_ids):,} held out")

    torch.manual_seed(cfg.seed)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    model = GPT2LMHeadModel(common.gpt2_config(cfg, eot, eot))
    gen = torch.Generator().manual_seed(cfg.seed)

    def evaluate(m):
        loss = heldout_loss(m, heldout_ids, cfg.n_positions, max_windows=16)
        return {"heldout_loss": round(loss, 4)}

    record = common.train(model, batches(train_ids, cfg, gen), cfg, evaluate, log)
    loss = heldout_loss(model, heldout_ids, cfg.n_positions)
    record["heldout_loss"] = round(loss, 4)
    record["heldout_perplexity"] = round(math.exp(loss), 2)
    record["corpus"] = {
        "train_chars": len(train_text),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(heldout_ids),
        "sources": sorted({d.source for d in docs}),
        "documents": len(docs),
    }
    common.save(model, tokenizer, out, record)
    # a slice of the held-out text ships with the model, so the card's loss can be re-measured
    (out / "heldout_sample.txt").write_text(heldout_text[:60_000])
    return record
