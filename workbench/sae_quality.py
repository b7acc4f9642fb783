"""SAE quality on held-out text, and the held-out text itself (read by dashboards.py, train/sae.py, train/transcoders.py).

- `heldout_text` and `windows`: the held-out text, read as the card reads text (train/card.py):
  BOS + consecutive pieces of n_ctx - 1 tokens.
- `quality`: the figures the field reports for an SAE, on held-out text: fraction of variance
  explained, next-token loss recovered when the reconstruction replaces the stream (0 = the stream
  zero-ablated, 1 = the model unchanged; through `run_edited` with a `map` edit), L0, dead latents.

Position 0 (BOS) is left out everywhere: its residual stream is one constant vector per site (it
attends only to itself), of a much larger norm than any other, and an SAE would spend latents on it
(SAELens's evaluation leaves special tokens out as well).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench import engine
from workbench.edit_maps import ZeroAblate
from workbench.errors import InputError
from workbench.model import MODELS_DIR, LoadedModel
from workbench.runs import run_edited, run_tokens
from workbench.sae import SAE

HELDOUT_FILES = ("heldout_sample.txt", "heldout_author.txt")  # held-out paragraphs of every source, and of Moby Dick
CHUNK = 16  # windows per forward pass


# ---- text ---------------------------------------------------------------------------------------


def heldout_text(model: LoadedModel) -> tuple[str, str]:
    """(name, text) of the held-out text that dashboards and quality are measured on.

    The model's own held-out samples when its folder has them; the stories model's held-out stories (generated:
    held-out names and phrasings, stories.heldout_stories); otherwise the English model's (English prose that any
    English tokenizer reads: a user's GPT-2 SAE is shown on it)."""
    from workbench.train import stories

    if stories.is_stories_model(model):
        return stories.HELDOUT_NAME, stories.heldout_stories()
    for folder in (Path(model.info.source), MODELS_DIR / "english"):
        if all((folder / f).is_file() for f in HELDOUT_FILES):
            name = " + ".join(f"models/{folder.name}/{f}" if folder.parent == MODELS_DIR else str(folder / f) for f in HELDOUT_FILES)
            return name, "\n\n".join((folder / f).read_text() for f in HELDOUT_FILES)
    raise InputError("no held-out text found: the English model's heldout_*.txt files are missing from models/english")


def windows(model: LoadedModel, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (windows, n_ctx) BOS + consecutive pieces of `text`'s ids, valid (windows, n_ctx) bool: a text token, not BOS or padding)."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_ctx = min(model.info.n_ctx, 256)  # a long context only makes a window slower, not more informative
    width = n_ctx - 1
    pieces = [ids[i : i + width] for i in range(0, len(ids), width)]
    bos = model.bos_id if model.bos_id is not None else (model.tokenizer.eos_token_id or 0)
    rows = torch.full((len(pieces), n_ctx), bos)
    valid = torch.zeros(len(pieces), n_ctx, dtype=torch.bool)
    for i, piece in enumerate(pieces):
        rows[i, 1 : 1 + len(piece)] = torch.tensor(piece)
        valid[i, 1 : 1 + len(piece)] = True
    return rows, valid


def activations(model: LoadedModel, rows: torch.Tensor, hooks: list[str]):
    """Yields (start row, logits (chunk, pos, d_vocab), {hook: (chunk, pos, d_model)}) over `rows` in chunks."""
    for start in range(0, len(rows), CHUNK):
        logits, cache = run_tokens(model, rows[start : start + CHUNK], names=hooks)
        yield start, logits.float().cpu(), {h: cache[h].float().cpu() for h in hooks}


def text_hash(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


# ---- quality ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Splice:
    """An engine `map` function: the stream replaced by the SAE's reconstruction, BOS (position 0) kept."""

    sae: SAE

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_in)
        out = x.clone()
        out[:, 1:] = self.sae(x[:, 1:])
        return out


@dataclass(frozen=True)
class Quality:
    """An SAE's reconstruction on held-out text (BOS excluded)."""

    hook_name: str
    k: int | None  # the TopK k it was measured with
    variance_explained: float  # 1 - Σ|x - x̂|² / Σ|x - mean x|²
    loss_clean: float  # next-token loss, nats per token, model unchanged
    loss_spliced: float  # with the reconstruction in place of the stream
    loss_zero: float  # with the stream zero-ablated
    loss_recovered: float  # (loss_zero - loss_spliced) / (loss_zero - loss_clean)
    l0: float  # mean number of active features per token
    dead: int  # features that never fire on the text
    dead_fraction: float
    tokens: int

    def row(self) -> dict:
        return dataclasses.asdict(self)


@torch.no_grad()
def quality(model: LoadedModel, sae: SAE, text: str, k: int | None = None) -> Quality:
    """The SAE's Quality on `text`; `k` evaluates a TopK SAE with another k (same weights)."""
    if k is not None:
        sae = dataclasses.replace(sae, k=int(k))
    rows, valid = windows(model, text)
    site, layer = sae.site, sae.layer
    splice = [engine.Edit("map", site, layer, fn=Splice(sae))]
    zero = [engine.Edit("map", site, layer, fn=ZeroAblate())]
    err = 0.0  # Σ|x - x̂|²
    x_sum = torch.zeros(sae.d_in, dtype=torch.float64)
    x_sq = 0.0
    n = active = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    scored = 0
    for start, logits, cache in activations(model, rows, [sae.hook_name]):
        chunk, keep = rows[start : start + CHUNK], valid[start : start + CHUNK]
        x = sae.flat(cache[sae.hook_name][keep])  # (tokens, d_in), BOS and padding left out (hook_z: heads concatenated)
        a = sae.encode(x)  # (tokens, d_sae)
        err += float(((sae.decode(a, like=x) - x) ** 2).sum())
        x_sum += x.double().sum(0)
        x_sq += float((x.double() ** 2).sum())
        n += len(x)
        active += int((a > 0).sum())
        fired |= (a > 0).any(0)
        targets = keep[:, 1:]  # predicting a text token, from a position before it
        tgt = chunk[:, 1:][targets]
        for name, edits in (("clean", None), ("spliced", splice), ("zero", zero)):
            out = logits if edits is None else run_edited(model, chunk, edits)[0].float().cpu()
            losses[name] += float(torch.nn.functional.cross_entropy(out[:, :-1][targets], tgt, reduction="sum"))
        scored += len(tgt)
    total = x_sq - float((x_sum**2).sum()) / n  # Σ|x - mean|²
    clean, spliced, zeroed = (losses[name] / scored for name in ("clean", "spliced", "zero"))
    dead = int((~fired).sum())
    return Quality(
        hook_name=sae.hook_name,
        k=sae.k,
        variance_explained=1 - err / total,
        loss_clean=clean,
        loss_spliced=spliced,
        loss_zero=zeroed,
        loss_recovered=(zeroed - spliced) / (zeroed - clean),
        l0=active / n,
        dead=dead,
        dead_fraction=dead / sae.d_sae,
        tokens=n,
    )
