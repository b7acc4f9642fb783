"""How a model's mechanisms formed during training, read from its shipped checkpoints.

A trained shipped model keeps fp16 snapshots of its run (`MODEL@STEP`, see checkpoints.py) and its
training log (`training.json`). For every snapshot this measures, through the same analyses as the
other views:
- head scores on BOS + n random tokens repeated twice (attention.head_types_on_repeats):
  previous-token, duplicate-token and induction score of every head;
- the in-context loss, as Olsson et al. (2022) define it: the mean loss at late positions of a
  text minus the mean loss at early positions. Negative means the model predicts better the more
  of the context it has read; induction heads are what makes it fall sharply. The text is the
  model's held-out sample (English) or BOS + n random tokens twice (a model without one);
- the induction phase change: the interval between two snapshots over which the best layer's
  induction score (its heads' scores summed: trained models spread induction over a layer's heads,
  each head scoring 0.15-0.2 where together they score 0.55-0.85) rose the most, when it rose by at
  least `PHASE_CHANGE_RISE`.
The loss curve comes from the training log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import attention, checkpoints
from workbench.errors import InputError
from workbench.heads import repeated_tokens
from workbench.model import MODELS_DIR, SHIPPED, LoadedModel, load_model
from workbench.runs import run_prompt
from workbench.tokens import ordinary_token_ids

HEAD_TYPES = ("previous token", "duplicate token", "induction")
PHASE_CHANGE_RISE = 0.1  # a rise of the best layer's induction score smaller than this is no phase change
EARLY = (1, 0.1)  # positions 1 .. 10% of the window: "early"
LATE = 0.8  # the last 20% of the window: "late"


@dataclass(frozen=True)
class Formation:
    """Scores of every head and the in-context loss at each checkpoint of one model's training."""

    model: str
    steps: tuple[int, ...]  # (checkpoint,) training steps of the snapshots
    scores: dict[str, torch.Tensor]  # head type -> (checkpoint, layer, head)
    early_loss: torch.Tensor  # (checkpoint,) nats, mean over the early positions
    late_loss: torch.Tensor  # (checkpoint,) nats, mean over the late positions
    loss_curve: dict[str, list[tuple[int, float]]]  # logged quantity -> (step, value) from training.json
    phase_change: tuple[int, int] | None  # (step before, step after) or None
    settings: dict = field(default_factory=dict)  # n, seqs, seed, text: how it was measured

    @property
    def in_context_loss(self) -> torch.Tensor:
        """(checkpoint,) late minus early loss, in nats: negative when later tokens are predicted better."""
        return self.late_loss - self.early_loss

    def best(self, head_type: str) -> torch.Tensor:
        """(checkpoint,) the highest score any head has, of one type."""
        return self.scores[head_type].flatten(1).max(-1).values

    def best_layer(self, head_type: str) -> torch.Tensor:
        """(checkpoint,) the highest sum over one layer's heads: a mechanism spread over a layer's heads, as induction often is."""
        return self.scores[head_type].sum(-1).max(-1).values

    def rows(self) -> list[dict]:
        out = []
        for i, step in enumerate(self.steps):
            layers, heads = self.scores[HEAD_TYPES[0]].shape[1:]
            for layer in range(layers):
                for head in range(heads):
                    row = dict(step=step, layer=layer, head=head)
                    row |= {t: float(self.scores[t][i, layer, head]) for t in HEAD_TYPES}
                    row |= dict(in_context_loss=float(self.in_context_loss[i]))
                    out.append(row)
        return out


def trained_models() -> list[str]:
    """The shipped models that have training checkpoints."""
    return [name for name in SHIPPED if checkpoints.steps(MODELS_DIR / name)]


def check_model(name: str) -> Path:
    folder = MODELS_DIR / name
    if name not in SHIPPED or not checkpoints.steps(folder):
        have = ", ".join(trained_models()) or "none"
        raise InputError(f"'{name}' has no training checkpoints to show; the models that have them: {have}")
    return folder


def _text_windows(model: LoadedModel, folder: Path, n: int, seqs: int, seed: int) -> tuple[list[str], str]:
    """Prompts the in-context loss is measured on, and what they are."""
    sample = folder / "heldout_sample.txt"
    if sample.exists():
        paragraphs = [p for p in sample.read_text().split("\n\n") if len(p) > 1500]
        return [p[:4000] for p in paragraphs[:seqs]], f"{seqs} long paragraphs of the held-out sample"
    gen = torch.Generator().manual_seed(seed)
    ids = [repeated_tokens(ordinary_token_ids(model.tokenizer, model.info.d_vocab), n, -1, gen)[1:] for _ in range(seqs)]
    return [model.tokenizer.decode(row) for row in ids], f"{seqs} sequences of {n} random tokens repeated twice"


def _position_losses(model: LoadedModel, prompts: list[str]) -> tuple[float, float]:
    """(early, late) mean next-token loss over the prompts' windows (truncated to the context)."""
    early, late = [], []
    for prompt in prompts:
        run = run_prompt(model, prompt, truncate=True)
        losses = torch.nn.functional.cross_entropy(run.logits[:-1], run.tokens[1:], reduction="none")  # (pos-1,)
        pos = len(losses)
        early.append(losses[EARLY[0] : max(EARLY[0] + 1, int(EARLY[1] * pos))].mean())
        late.append(losses[int(LATE * pos) :].mean())
    return float(torch.stack(early).mean()), float(torch.stack(late).mean())


def phase_change(steps: tuple[int, ...], best: torch.Tensor) -> tuple[int, int] | None:
    """(step before, step after) of the largest rise of `best` between snapshots, if it is a real rise."""
    if len(steps) < 2:
        return None
    rise = best[1:] - best[:-1]
    i = int(rise.argmax())
    return (steps[i], steps[i + 1]) if float(rise[i]) >= PHASE_CHANGE_RISE else None


def loss_curve(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every numeric quantity of the training log, as (step, value) pairs."""
    history = json.loads((folder / "training.json").read_text()).get("history", [])
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in history:
        for key, value in rec.items():
            if key not in ("step", "tokens", "seconds", "lr") and isinstance(value, int | float):
                out.setdefault(key, []).append((int(rec["step"]), float(value)))
    return out


def formation(name: str, n: int = 50, seqs: int = 8, seed: int = 0, progress=None) -> Formation:
    """Head scores and in-context loss at every checkpoint of shipped model `name` (module doc).

    `progress(done, total)` is called after each checkpoint; returning False stops early."""
    folder = check_model(name)
    steps = tuple(checkpoints.steps(folder))
    first = load_model(f"{name}{checkpoints.SEPARATOR}{steps[0]}")
    n = min(n, (first.info.n_ctx - 1) // 2)
    prompts, text = _text_windows(first, folder, n, seqs, seed)
    per_type: dict[str, list[torch.Tensor]] = {t: [] for t in HEAD_TYPES}
    early, late = [], []
    done_steps = []
    for i, step in enumerate(steps):
        model = first if i == 0 else load_model(f"{name}{checkpoints.SEPARATOR}{step}")
        types = attention.head_types_on_repeats(model, n=n, seqs=seqs, seed=seed)
        for t in HEAD_TYPES:
            per_type[t].append(types.scores[t])
        e, lt = _position_losses(model, prompts)
        early.append(e)
        late.append(lt)
        done_steps.append(step)
        if progress is not None and progress(i + 1, len(steps)) is False:
            break
    scores = {t: torch.stack(v) for t, v in per_type.items()}  # (checkpoint, layer, head)
    done = tuple(done_steps)
    best = scores["induction"].sum(-1).max(-1).values  # (checkpoint,) the best layer's heads together
    return Formation(
        model=name,
        steps=done,
        scores=scores,
        early_loss=torch.tensor(early),
        late_loss=torch.tensor(late),
        loss_curve=loss_curve(folder),
        phase_change=phase_change(done, best),
        settings=dict(n=n, seqs=seqs, seed=seed, text=text, early_positions=EARLY, late_from=LATE),
    )
