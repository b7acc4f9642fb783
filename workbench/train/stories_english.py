"""The stories model's world mixed with public-domain English: one tokenizer for both, English windows in every step.

Why (the model-organisms issue): a model trained on the stories alone writes only the world's sentences; mixed
with the English corpus (corpus.py) it should also read English, as the English model does, while its tasks keep
their circuits. Two things make the mix possible here:

- **One tokenizer.** The stories tokenizer is a closed word list (no English word outside the world has an id).
  A byte-level BPE trained on English plus stories, pre-split as the stories tokenizer splits (years in two-digit
  pieces), splits 312 of the world's pieces into several tokens at 4,096 ids (measured), so a name or a capital
  would no longer be one answer token. Each piece of the world's vocabulary (stories.vocabulary) is therefore
  counted PIECE_WEIGHT times among the BPE's training words: at 4,096 ids every piece is then one token, and
  English reads 3.66 characters a token (3,072 ids: 3.36; the English model's own 2,048-id BPE: fewer).
  `tokenizer` checks that every piece is one token and refuses to return one where any is not.
- **The same recipe** (stories.Recipe: the copying stage, then stories + answer rows + copies), with
  `english_batch` rows of English windows (english.english_batch) added to every mixed step, and the held-out
  English's bits per character measured at every evaluation (the English model's card gives its own).

`python -m workbench.train stories-english` trains one into runs/stories-english (the model in its `model/`): there
`stories_card.write` finds it, puts its evaluations in the table of what was tried and measures its final model beside
the shipped one, whether or not it is shipped (with `--out`/`--run-dir` elsewhere, the card does not see it).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.train import common, corpus, english, stories

# the stories recipe under bf16 autocast: the stories card measured it faster at equal loss on this recipe (0.79 of
# fp32's step time), and the issue asks a new run to use it where it is
RECIPE = stories.Recipe(model=dataclasses.replace(stories.shape(), autocast=True))
PIECE_WEIGHT = 3000  # counts of each world piece among the BPE's training words (measured: 200 left 150 pieces split)
STORIES_FOR_BPE = 20_000  # stories whose words the BPE counts beside the English


@dataclass(frozen=True)
class Mix:
    """What the English adds to a stories recipe."""

    vocab_size: int = 4096
    english_batch: int = 8  # rows of English windows (n_positions tokens) per mixed step
    english_weight: float = 1.0
    eval_windows: int = 24  # held-out English windows per evaluation during training (the final measure reads all)


def _split() -> str:
    """The stories tokenizer's pre-split, with runs of punctuation and of white space kept whole (English has them)."""
    return stories.SPLIT.replace(r"[^\sA-Za-z\d]", r"[^\sA-Za-z\d]+").replace(r"|\s", r"|\s+")


def tokenizer(english_text: str, w: stories.World, vocab_size: int):
    """A byte-level BPE over English and the world's stories in which every world piece is one token (module doc)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_split()), behavior="isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[stories.EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    rng = random.Random("bpe")
    pieces = stories.vocabulary(w)[2:]  # without <|endoftext|> and <unk>
    texts = english_text.split("\n\n") + [stories.story(rng, w) for _ in range(STORIES_FOR_BPE)]
    tok.train_from_iterator(texts + pieces * PIECE_WEIGHT, trainer=trainer)
    split = [p for p in pieces if len(tok.encode(p).ids) != 1]
    if split:
        raise ValueError(f"{len(split)} world pieces are not one token at {vocab_size} ids (e.g. {split[:5]}): raise vocab_size")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=stories.EOT, eos_token=stories.EOT, model_max_length=128)


def english_text(cache: Path) -> tuple[str, str]:
    """(training text, held-out text) of the English corpus, split as the English model's."""
    return corpus.split_text(corpus.documents(corpus.fetch(cache)))


def build(out: Path, texts: tuple[str, str], recipe: stories.Recipe | None = None, mix: Mix = Mix(), run_dir=None, log=print) -> dict:
    """Trains the stories recipe with English mixed in (module doc) into `out`, from English `texts` (training,
    held-out: english_text); the record adds the held-out English's bits per character."""
    train_text, heldout_text = texts
    recipe = recipe or RECIPE
    w = stories.world(recipe.world_seed)
    tok = tokenizer(train_text, w, mix.vocab_size)
    n = (recipe.model or stories.shape()).n_positions
    train_ids = torch.from_numpy(english.encode(tok, train_text).astype(np.int64))
    heldout_ids = english.encode(tok, heldout_text)
    eot = tok.bos_token_id
    log(f"English: {len(train_text):,} chars -> {len(train_ids):,} tokens; {len(tok)} ids")

    def extra(g: torch.Generator) -> list[common.Part]:
        ids, mask = english.english_batch(train_ids, mix.english_batch, n, eot, g)
        return [common.Part(ids, mask, mix.english_weight, name="english_loss")]

    def extra_eval(model) -> dict:
        return {"english_bpc": round(english.stream_loss(model, tok, heldout_ids, n, max_windows=mix.eval_windows)["bits_per_char"], 4)}

    record = stories.build(out, recipe, run_dir, log, tok=tok, extra=extra, extra_eval=extra_eval)
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(out)
    held = english.stream_loss(model, tok, heldout_ids, n)
    record["mix"] = {"vocab_size": mix.vocab_size, "english_batch": mix.english_batch, "english_weight": mix.english_weight}
    record["english_heldout"] = {k: round(v, 4) for k, v in held.items()} | {"n_positions": n, "tokens": len(heldout_ids)}
    common.save(model, tok, out, record)
    return record


def measure(model_folder: Path, stories_folder: Path) -> dict:
    """The stories-and-English run's final model measured as the shipped one is (measure, on the shipped model's
    task datasets), with its bits per character on the English model's held-out sample beside the English model's."""
    import json
    import shutil

    from workbench.model import MODELS_DIR, load_model
    from workbench.train import card, stories_card

    model_folder = Path(model_folder)
    shutil.copytree(Path(stories_folder) / "tasks", model_folder / "tasks", dirs_exist_ok=True)
    m = stories_card.measure(model_folder)
    sample = MODELS_DIR / "english" / "heldout_sample.txt"
    loss = card.stream_loss(load_model(model_folder), sample.read_text())
    english_card = json.loads((MODELS_DIR / "english" / "card.json").read_text())["measured"]["heldout_sample"]
    training = json.loads((model_folder / "training.json").read_text())
    return m | {
        "english_bpc": round(loss["bits_per_char"], 4),
        "english_model_bpc": english_card["bits_per_char"],
        "n_positions": training["config"]["n_positions"],
        "vocab_size": training["config"]["vocab_size"],
        "train_seconds": training["train_seconds"],
        "tokens_seen": training["tokens_seen"],
        "steps": sum(s["steps"] for s in training["stages"]),
        "machine": training["machine"],
    }


def card_text(mixed: dict, shipped: dict) -> str:
    """The stories card's section on this run (measure), every number from `mixed` and `shipped`."""
    from workbench.train.stories_card import MIXED, TARGETS, pct, targets_met

    ind = mixed["induction"]
    rows = "".join(
        f"| {name} | {row['held_out']['accuracy']:.1%}, {row['held_out']['logit_diff']:.2f} | "
        f"{shipped['tasks'][name]['held_out']['accuracy']:.1%}, {shipped['tasks'][name]['held_out']['logit_diff']:.2f} | "
        f"{pct(TARGETS[name][0])} | {row['verdict']} |\n"
        for name, row in mixed["tasks"].items()
    )
    better = mixed["english_bpc"] <= mixed["english_model_bpc"]
    a, b = targets_met(mixed), targets_met(shipped)
    fa, fb = (sum(row["verdict"] == "found" for row in m["tasks"].values()) for m in (mixed, shipped))
    return (
        f"\n## Stories mixed with English (run J, not shipped)\n\n{MIXED}: {mixed['tokens_seen']:,} tokens in "
        f"{mixed['train_seconds'] / 60:.1f} min ({mixed['machine']}), {mixed['vocab_size']:,} ids, {mixed['n_positions']} positions. "
        "Its final model measured as this card measures the shipped one, on the same task datasets:\n\n"
        "| task | run J: accuracy, logit diff. | shipped: accuracy, logit diff. | target | run J's verdict |\n|---|---|---|---|---|\n"
        + rows
        + f"\nInduction (BOS + 50 random tokens twice): layer sum {ind['induction_best_layer_sum']:.2f}, losses "
        f"{ind['first_copy_loss']:.2f} → {ind['second_copy_loss']:.2f}. English: {mixed['english_bpc']:.3f} bits per character on "
        f"the English model's `heldout_sample.txt` against its {mixed['english_model_bpc']:.3f} "
        f"({'no worse' if better else 'worse'}; windows of {mixed['n_positions']} tokens against its 256). Targets met: run J "
        f"{len(a)} of {len(mixed['tasks'])} ({', '.join(a) or 'none'}), the shipped model {len(b)} ({', '.join(b) or 'none'}); "
        f"circuits confirmed by ablation (verdict *found*): run J {fa}, the shipped model {fb}. "
        + _verdict(len(a), fa, len(b), fb)
        + "\n\n"
        "Greedy continuations of run J:\n\n" + "".join(f"- `{p}` → `{t}`\n" for p, t in mixed["samples"].items())
    )


def _verdict(met_j: int, found_j: int, met_shipped: int, found_shipped: int) -> str:
    """Which model the issue's rule ("the default becomes the best model that meets the targets") keeps: run J only
    where it is ahead on the targets met or the circuits confirmed and behind on neither."""
    if met_j >= met_shipped and found_j >= found_shipped and (met_j, found_j) != (met_shipped, found_shipped):
        return "Run J is ahead: it should replace the shipped model."
    if met_j <= met_shipped and found_j <= found_shipped:
        targets = "fewer" if met_j < met_shipped else "no more"
        circuits = "fewer" if found_j < found_shipped else "no more"
        return f"The shipped model stays the default: run J meets {targets} targets and confirms {circuits} circuits."
    return "Neither is ahead on both counts; the shipped model stays the default."
