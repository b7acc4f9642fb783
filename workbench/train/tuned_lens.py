"""Training a tuned lens for a model: `python -m workbench.train lens english`.

The translators are trained on residuals of one text and measured on residuals of another, split by
document, never by rows of the same windows (rows of one window are nearly copies of each other,
so a row split measures memory, not reading):
- a shipped English model: trained on `heldout_sample.txt` (held-out paragraphs of every source but
  one author) and measured on `heldout_author.txt` (that author's held-out paragraphs);
- a model of the circuits vocabulary: copying sequences of two different seeds;
- `--text FILE` or a folder with only `heldout_sample.txt`: its first 80% of paragraphs train, the
  last 20% measure.
The saved stats give the KL to the final distribution per layer for the logit lens and the tuned
lens on the measuring text, and name both texts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.errors import InputError
from workbench.lens import collect_residuals, train_tuned_lens
from workbench.model import load_model


def _split(text: str, what: str) -> tuple[list[str], list[str], str, str]:
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) < 5:
        raise InputError(f"{what} has {len(paragraphs)} paragraphs: a tuned lens needs at least 5 (blank lines between them)")
    cut = int(0.8 * len(paragraphs))
    return (
        ["\n\n".join(paragraphs[:cut])],
        ["\n\n".join(paragraphs[cut:])],
        f"the first {cut} paragraphs of {what}",
        f"its last {len(paragraphs) - cut}",
    )


def texts(model, text_file: Path | None) -> tuple[list[str], list[str], str, str]:
    """(training texts, measuring texts, what each is)."""
    if text_file is not None:
        if not text_file.exists():
            raise InputError(f"no text file at {text_file}")
        return _split(text_file.read_text(encoding="utf-8", errors="replace"), str(text_file))
    folder = Path(model.info.source)
    sample, author = folder / "heldout_sample.txt", folder / "heldout_author.txt"
    if sample.exists() and author.exists():
        return (
            [sample.read_text()],
            [author.read_text()],
            "held-out paragraphs of every source but one author",
            "that author's (Melville's)",
        )
    if sample.exists():
        return _split(sample.read_text(), sample.name)
    from workbench.train import circuits

    if model.info.d_vocab == len(circuits.WORDS) + 2:  # the circuits vocabulary: text of its own task

        def copies(seed: int) -> list[str]:
            ids, _ = next(circuits.batches(circuits.CIRCUITS, torch.Generator().manual_seed(seed)))
            return [model.tokenizer.decode(row[1:]) for row in ids]

        return copies(1234), copies(4321), "copying sequences (seed 1234)", "copying sequences (seed 4321)"
    raise InputError(f"{folder} has no heldout_sample.txt: pass --text FILE with some text the model did not train on")


def build(model_name: str, text_file: Path | None = None, steps: int = 300, seed: int = 0) -> dict:
    model = load_model(model_name)
    train_texts, valid_texts, train_what, valid_what = texts(model, text_file)
    train = collect_residuals(model, train_texts)  # (point, rows, d_model)
    valid = collect_residuals(model, valid_texts)
    lens = train_tuned_lens(model, train, valid, steps=steps, seed=seed)
    lens.stats["train_text"], lens.stats["valid_text"] = train_what, valid_what
    lens.save(Path(model.info.source))
    return lens.stats
