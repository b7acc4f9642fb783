"""Training a tuned lens for a model: `python -m workbench.train lens english`.

Residuals are collected from held-out text (the model folder's heldout_sample.txt, or --text);
for the circuits model, from fresh synthetic copying sequences. 80% train the translators, 20%
measure them: the saved stats give the KL to the final distribution per layer for the logit lens
and the tuned lens on the held-out 20%.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.errors import InputError
from workbench.lens import collect_residuals, train_tuned_lens
from workbench.model import load_model


def _texts(model, text_file: Path | None) -> list[str]:
    if text_file is not None:
        if not text_file.exists():
            raise InputError(f"no text file at {text_file}")
        return [text_file.read_text(encoding="utf-8", errors="replace")]
    folder = Path(model.info.source)
    if (folder / "heldout_sample.txt").exists():
        return [(folder / "heldout_sample.txt").read_text()]
    from workbench.train import circuits

    if model.info.d_vocab == len(circuits.WORDS) + 2:  # the circuits vocabulary: text of its own task
        ids, _ = next(circuits.batches(circuits.CIRCUITS, torch.Generator().manual_seed(1234)))
        return [model.tokenizer.decode(row[1:]) for row in ids]
    raise InputError(f"{folder} has no heldout_sample.txt: pass --text FILE with some text the model did not train on")


def build(model_name: str, text_file: Path | None = None, steps: int = 300, seed: int = 0) -> dict:
    model = load_model(model_name)
    resid = collect_residuals(model, _texts(model, text_file))  # (point, rows, d_model)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(resid.shape[1], generator=gen)
    cut = int(0.8 * len(order))
    lens = train_tuned_lens(model, resid[:, order[:cut]], resid[:, order[cut:]], steps=steps, seed=seed)
    lens.save(Path(model.info.source))
    return lens.stats
