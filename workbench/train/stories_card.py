"""The stories model's card, written by code: each task measured, its circuit found and confirmed.

For every task of `workbench/tasks.py` (held-out names and templates):
1. accuracy and logit difference, measured with the plain `transformers` model (`tasks.score`);
2. the components the workbench's activation patching finds: a denoising sweep of every head's
   output (site "z") and of every MLP's output at each position (site "mlp_out"), averaged over
   pairs; a component is named when patching it alone restores at least `FIND` of the clean
   logit difference (an MLP layer counts its best position);
3. the named components ablated together in the clean run, with plain `transformers` hooks (not the
   workbench's engine): each one's output is replaced by its output on the pair's corrupted prompt
   (resample ablation, at every position); the share of the logit difference that goes away,
   against the same number of random components (heads for heads, MLPs for MLPs) ablated alike.
A task counts as *found* when the ablation cuts its logit difference by at least half and random
components cut it by less than a fifth; a task the model does not solve, or whose patching names no
component, is reported *absent*: nothing is drawn for it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from workbench import tasks
from workbench.train import bf16, stories_english

FIND = 0.15  # a component restores at least this share of the clean logit difference on its own
MAX_HEADS = 6
MAX_MLPS = 2
PAIRS_FOR_PATCHING = 8
RANDOM_DRAWS = 10
OPENINGS = (
    "When Lily and Tom went to the market,",
    "Ben had a dog.",
    '"Where is my hat?" asked Mia.',
    "The war lasted from 1732 to",
    "Anna and Jack played at the park.",
)


@dataclass(frozen=True)
class Component:
    """A head ("head", layer, head) or an MLP ("mlp", layer, -1) and its mean patching effect."""

    kind: str
    layer: int
    head: int
    effect: float

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"


def find_components(model, task: tasks.Task, n_pairs: int = PAIRS_FOR_PATCHING) -> tuple[list[Component], dict]:
    """Components named by the workbench's patching (denoising, logit difference), and the mean grids.

    Returns (components, {"z": (layer, head) grid, "mlp": (layer,) best-position effects})."""
    from workbench import patching

    heads, mlps = [], []
    for p in task.pairs[:n_pairs]:
        heads.append(patching.sweep(model, p, "z", "denoising").values)  # (layer, head)
        mlp = patching.sweep(model, p, "mlp_out", "denoising").values  # (layer, position)
        mlps.append(mlp.nan_to_num(0.0).max(-1).values)  # (layer,)
    z = torch.stack(heads).nanmean(0)  # (layer, head)
    m = torch.stack(mlps).mean(0)  # (layer,)
    named = [Component("head", int(i), int(h), round(z[i, h].item(), 4)) for i, h in (z >= FIND).nonzero().tolist()]
    named = sorted(named, key=lambda c: -c.effect)[:MAX_HEADS]
    mlp_named = sorted([Component("mlp", i, -1, round(m[i].item(), 4)) for i in range(len(m)) if m[i] >= FIND], key=lambda c: -c.effect)
    return named + mlp_named[:MAX_MLPS], {"z": z.tolist(), "mlp": m.tolist()}


# ---- ablation with plain transformers hooks ---------------------------------------------------


def _ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer(p)["input_ids"]] for p in prompts])


def _record(model, ids: torch.Tensor) -> dict:
    """Each block's head outputs (the input of attn.c_proj) and MLP outputs on `ids`, plain hooks."""
    saved, handles = {}, []
    for i, block in enumerate(model.transformer.h):
        handles.append(block.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: saved.__setitem__(("head", i), a[0].detach())))
        handles.append(block.mlp.register_forward_hook(lambda m, a, out, i=i: saved.__setitem__(("mlp", i), out.detach())))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return saved


def ablated_logits(model, clean_ids: torch.Tensor, source: dict, components: list[tuple[str, int, int]]) -> torch.Tensor:
    """(batch, vocab) last-position logits of the clean run with each component's output taken from `source`."""
    d_head = model.config.n_embd // model.config.n_head
    handles = []
    for i, block in enumerate(model.transformer.h):
        heads = [h for kind, layer, h in components if kind == "head" and layer == i]
        if heads:

            def pre(m, args, i=i, heads=heads):
                x = args[0].clone()  # (batch, pos, n_head * d_head): the heads' outputs side by side
                for h in heads:
                    x[..., h * d_head : (h + 1) * d_head] = source[("head", i)][..., h * d_head : (h + 1) * d_head]
                return (x,)

            handles.append(block.attn.c_proj.register_forward_pre_hook(pre))
        if any(kind == "mlp" and layer == i for kind, layer, _ in components):
            handles.append(block.mlp.register_forward_hook(lambda m, a, out, i=i: source[("mlp", i)]))
    try:
        with torch.no_grad():
            return model(clean_ids).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


def ablation_cut(model, tokenizer, task: tasks.Task, components: list[tuple[str, int, int]]) -> float:
    """The share of the task's mean clean logit difference that ablating `components` removes (module doc)."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(task.pairs):
        groups.setdefault(len(tokenizer(p.clean)["input_ids"]), []).append(i)
    clean_total, ablated_total = 0.0, 0.0
    for idx in groups.values():
        pairs = [task.pairs[i] for i in idx]
        clean_ids, corrupted_ids = _ids(tokenizer, [p.clean for p in pairs]), _ids(tokenizer, [p.corrupted for p in pairs])
        ans = torch.tensor([tasks.token_id(tokenizer, p.answer) for p in pairs])
        wrong = torch.tensor([tasks.token_id(tokenizer, p.wrong) for p in pairs])
        rows = torch.arange(len(pairs))
        with torch.no_grad():
            clean = model(clean_ids).logits[:, -1]
        ablated = ablated_logits(model, clean_ids, _record(model, corrupted_ids), components)
        clean_total += (clean[rows, ans] - clean[rows, wrong]).sum().item()
        ablated_total += (ablated[rows, ans] - ablated[rows, wrong]).sum().item()
    return 1 - ablated_total / clean_total


def random_cut(
    model, tokenizer, task: tasks.Task, components: list[tuple[str, int, int]], draws: int = RANDOM_DRAWS, seed: int = 0
) -> float:
    """Mean cut of as many random components of the same kinds, none of them named (all the others of a kind where
    the model has fewer: random_size says how many)."""
    rng = random.Random(seed)
    all_heads, all_mlps = _others(model, components)
    n_heads, n_mlps = _random_counts(model, components)
    cuts = [ablation_cut(model, tokenizer, task, rng.sample(all_heads, n_heads) + rng.sample(all_mlps, n_mlps)) for _ in range(draws)]
    return sum(cuts) / len(cuts)


def _others(model, components) -> tuple[list, list]:
    cfg = model.config
    heads = [("head", i, h) for i in range(cfg.n_layer) for h in range(cfg.n_head) if ("head", i, h) not in components]
    return heads, [("mlp", i, -1) for i in range(cfg.n_layer) if ("mlp", i, -1) not in components]


def _random_counts(model, components) -> tuple[int, int]:
    heads, mlps = _others(model, components)
    return min(len(heads), sum(k == "head" for k, _, _ in components)), min(len(mlps), sum(k == "mlp" for k, _, _ in components))


def random_size(model, components) -> int:
    """How many random components random_cut ablates for these named ones."""
    return sum(_random_counts(model, components))


# ---- the card -----------------------------------------------------------------------------------

TARGETS = {  # accuracy target and logit-difference target of each task (the model organisms issue)
    "ioi": (0.9, 2.0),
    "pronoun": (0.95, None),
    "greater_than": (0.8, None),
    "capital": (0.8, None),
    "induction": (None, None),  # judged by the layer sum and the copy losses
}


def measure(folder: Path, n_pairs: int = PAIRS_FOR_PATCHING) -> dict:
    """Every number of the card, from the weights in `folder` and its task datasets."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from workbench.model import load_model
    from workbench.train import english

    folder = Path(folder)
    hf = GPT2LMHeadModel.from_pretrained(folder, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    wb = load_model(folder)
    out: dict = {"tasks": {}}
    for name in tasks.available(folder):
        task = tasks.load(folder, name)
        held = tasks.score(hf, tok, task)
        seen = tasks.score(hf, tok, tasks.build(name, len(task.pairs), split="train"))
        row = {"held_out": asdict(held), "train_templates": asdict(seen)}
        target = TARGETS[name][0]
        # solved: a clear logit difference, or the task's own target met (greater-than's answer and wrong are neighbouring
        # years, so its logit difference stays small while the probability after the start year is high)
        if (held.logit_diff > 0.5 and held.accuracy > 0.5) or (target is not None and held.accuracy >= target):
            components, grids = find_components(wb, task, n_pairs)
            row["grids"] = grids
            row["components"] = [asdict(c) | {"label": c.label} for c in components]
            keys = [(c.kind, c.layer, c.head) for c in components]
            if keys:
                row["ablation_cut"] = round(ablation_cut(hf, tok, task, keys), 4)
                row["random_cut"] = round(random_cut(hf, tok, task, keys), 4)
                row["random_size"] = random_size(hf, keys)
        row["verdict"] = verdict(name, row)
        out["tasks"][name] = row
    out["induction"] = english.induction_check(hf, len(tok), tok.bos_token_id, n=50, seqs=8)
    out["samples"] = {p: greedy(hf, tok, p) for p in OPENINGS}
    out["n_params"] = sum(p.numel() for p in hf.parameters() if p is not hf.lm_head.weight)
    return out


def verdict(name: str, row: dict) -> str:
    """'found' (ablation cuts >= 50%, random < 20%), 'not localised', or 'absent' (module doc)."""
    if "components" not in row:
        return "absent: the model does not solve the task on held-out data"
    if not row["components"]:
        return "absent: patching names no component"
    if row["ablation_cut"] >= 0.5 and row["random_cut"] < 0.2:
        return "found"
    return f"not confirmed: ablation cuts {row['ablation_cut']:.0%}, random {row['random_cut']:.0%}"


def greedy(model, tokenizer, prompt: str, new_tokens: int = 24) -> str:
    """The greedy continuation of `prompt` by the plain transformers model (stops at <|endoftext|>)."""
    ids = _ids(tokenizer, [prompt])
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def met(name: str, row: dict, induction: dict) -> bool:
    acc, ld = TARGETS[name]
    h = row["held_out"]
    if name == "induction":
        return induction["induction_best_layer_sum"] >= 0.4 and induction["second_copy_loss"] < 0.5 * induction["first_copy_loss"]
    return h["accuracy"] >= acc and (ld is None or h["logit_diff"] >= ld)


ROOT = Path(__file__).resolve().parents[2]
MIXED = (
    "J: the shipped recipe under bf16 autocast with public-domain English mixed in: 8 rows of English windows a step, one 4,096-id BPE for both "
    "(stories_english.py; `python -m workbench.train stories-english`)"
)
# the runs tried on the way to the shipped recipe (their folders stay on the machine that trained them; the
# card keeps what it measured from them when they are gone)
TRIED = {
    "4 x 128, stories + copies (batch 8) from the start; held-out names in no training sentence": ROOT / "runs" / "stories-4layer-v1",
    "3 x 128, the same; held-out names in plain sentences only": ROOT / "runs" / "stories-3layer-v2",
    "3 x 128, the copying task alone first (batch 64), sinusoidal positions, then stories + copies (shipped until this run)": ROOT
    / "runs"
    / "stories",
    "the shipped run continued from its end: the cosine stretched to 6,000 stories steps (not shipped)": ROOT / "runs" / "stories-longer",
    # the search that chose the shipped recipe. A, B and E: a short loop kept outside the repository (stories.story_rows, batch
    # 16 x 128, AdamW, warmup 100, cosine, 64 held-out pairs a task; E's answer rows were answer_rows without the capital
    # segments); G, H and I: stories.build with the Recipe each description gives. Each run's log.jsonl is what the row reads.
    "A: 3 x 128, stories only, learned positions, lr 1e-3": ROOT / "runs" / "exp-A",
    "B: 2 x 128, stories only, sinusoidal positions, lr 1e-3": ROOT / "runs" / "exp-B",
    "E: 3 x 128, sinusoidal positions, stories + answer rows (loss at the answers only), lr 2e-3; held-out templates of unseen words": ROOT
    / "runs"
    / "exp-E",
    "G: 2 x 128, sinusoidal positions, copying alone first (no phase change in 1,000 steps), then stories + answer rows + copies (stopped)": ROOT
    / "runs"
    / "stories-G",
    "H: 2 x 128, the copying stage alone, learned positions instead of sinusoids (phase change at ~650 steps)": ROOT / "runs" / "stories-H",
    "I: 2 x 128, learned positions, copying 1,000 steps, then stories + answer rows + copies 8,000 steps; an everyday sentence "
    "taught 'while it' (not shipped: pronouns on held-out phrasings at chance)": ROOT / "runs" / "stories-final",
    MIXED: ROOT / "runs" / "stories-english",
}


def write(folder: Path, speed: bool = True) -> dict:
    folder = Path(folder)
    training = json.loads((folder / "training.json").read_text())
    old = json.loads((folder / "card.json").read_text()) if (folder / "card.json").exists() else {}
    measured = measure(folder)
    # a run whose folder is gone (another machine) keeps the row its folder gave when it was there
    kept = {row["run"]: row for row in old.get("measured", {}).get("attempts", [])}
    found = {row["run"]: row for row in attempts(TRIED)}
    measured["attempts"] = [found.get(run) or kept[run] for run in TRIED if run in found or run in kept]
    mixed = TRIED[MIXED] / "model"
    if (mixed / "model.safetensors").exists():
        measured["mixed"] = stories_english.measure(mixed, folder)
    elif "mixed" in old.get("measured", {}):
        measured["mixed"] = old["measured"]["mixed"]
    if speed:
        measured["bf16"] = bf16.training()
    elif "bf16" in old.get("measured", {}):
        measured["bf16"] = old["measured"]["bf16"]
    card = {"kind": "stories", "training": {k: v for k, v in training.items() if k != "history"}, "measured": measured}
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (folder / "README.md").write_text(readme(training, measured))
    return card


def refresh_bf16(folder: Path, measured_bf16: dict | None = None) -> dict:
    """Re-measures bf16 autocast (bf16.training) alone and rewrites the card and its README, the rest kept."""
    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    card["measured"]["bf16"] = measured_bf16 or bf16.training()
    training = json.loads((folder / "training.json").read_text())
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (folder / "README.md").write_text(readme(training, card["measured"]))
    return card


def _random(row: dict) -> str:
    """The random control's cut, with how many components it ablated where that is fewer than the named ones."""
    named = len(row.get("components", []))
    size = row.get("random_size", named)
    return pct(row.get("random_cut")) + (f" ({size})" if size < named else "")


def pct(x) -> str:
    """A share as a percentage, or a dash where there is none."""
    return "–" if x is None else f"{x:.0%}"


def readme(training: dict, m: dict) -> str:
    ind = m["induction"]
    lines = [
        "# The workbench's stories model (a model organism)\n\n",
        "A small GPT-2 trained from scratch on simple stories about a fixed small world (`workbench/train/stories.py`): "
        "people with a gender, places, objects, invented countries with capitals, spans of years, lists read back. "
        "Each task of `workbench/tasks.py` is a known regularity of that text; the task datasets in `tasks/` hold only "
        "phrasings no training story uses, and names no training story uses in a task's kind of sentence. Every number below is measured by `workbench/train/stories_card.py` "
        "(`python -m workbench.train card stories`): accuracies with the plain `transformers` model, components with the "
        "workbench's activation patching, ablations with plain `transformers` hooks.\n\n",
        "## Tasks (held-out names and templates)\n\n",
        "| task | pairs | accuracy | target | logit diff. | corrupted | on training templates | components (patching) | ablation cut | random cut | verdict |\n",
        "|---|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for name, row in m["tasks"].items():
        h, s = row["held_out"], row["train_templates"]
        comps = ", ".join(f"{c['label']} ({c['effect']:.2f})" for c in row.get("components", [])) or "–"
        target = TARGETS[name][0]
        lines.append(
            f"| {name} | {h['pairs']} | {h['accuracy']:.1%} | {pct(target)} | {h['logit_diff']:.2f} | {h['corrupted_logit_diff']:.2f} | "
            f"{s['accuracy']:.1%}, {s['logit_diff']:.2f} | {comps} | {pct(row.get('ablation_cut'))} | {_random(row)} | "
            f"{row['verdict']} |\n"
        )
    lines.append(
        "\nAccuracy: ioi and pronoun, answer above wrong; capital, the answer first among all capitals; induction, the answer "
        "first in the whole vocabulary; greater_than, the mean probability (among the 100 two-digit year endings) of the "
        "endings after the start year. A component's number is the share of the clean logit difference that patching it "
        f"alone restores (denoising, mean over {PAIRS_FOR_PATCHING} pairs; named at ≥ {FIND}). Ablation: the named components' "
        "outputs replaced by their outputs on the corrupted prompt, all positions, all pairs; random: as many other components "
        f"of the same kinds (all the others, their number in brackets, where the model has fewer), mean of {RANDOM_DRAWS} draws.\n"
    )
    lines.append(
        "\n## Targets\n\n| target | measured | met |\n|---|---|---|\n"
        + "".join(
            f"| {name} | {row['held_out']['accuracy']:.1%}, logit diff. {row['held_out']['logit_diff']:.2f} | "
            f"{'yes' if met(name, row, ind) else 'no'} |\n"
            for name, row in m["tasks"].items()
        )
        + f"| induction: layer sum ≥ 0.4, 2nd-copy loss < half the 1st (BOS + 50 random tokens twice) | layer sum "
        f"{ind['induction_best_layer_sum']:.2f}, losses {ind['first_copy_loss']:.2f} → {ind['second_copy_loss']:.2f} | "
        f"{'yes' if ind['induction_best_layer_sum'] >= 0.4 and ind['second_copy_loss'] < 0.5 * ind['first_copy_loss'] else 'no'} |\n"
    )
    lines.append("\n## Greedy continuations\n\n" + "".join(f"- `{p}` → `{t}`\n" for p, t in m["samples"].items()))
    shape = {
        k: training["config"][k] for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "weight_decay", "seed", "threads")
    }
    recipe = {k: v for k, v in training.get("recipe", {}).items() if k != "model"}
    lines.append(
        "\n## Training\n\n| setting | value |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in {**shape, **recipe}.items())
        + f"| tokens seen | {training['tokens_seen']:,} |\n| training time | {training['train_seconds'] / 60:.1f} min ({training['machine']}) |\n"
        + f"| parameters | {m['n_params']:,} |\n"
    )
    lines.append(
        "\n| stage | steps | learning rate |\n|---|---|---|\n"
        + "".join(f"| {s['name']} | {s['steps']:,} | {s['lr']:g}, {s['schedule']} |\n" for s in training["stages"])
    )
    evals = [r for r in training["history"] if "ioi_acc" in r]
    if evals:
        cols = ["step", "story_loss", "ioi_acc", "pronoun_acc", "greater_than_acc", "capital_acc", "induction_acc", "induction_layer_sum"]
        lines.append(
            "\n## How it learned (held-out evaluations logged during the run, 48 pairs each)\n\n| "
            + " | ".join(cols)
            + " |\n|"
            + "---|" * len(cols)
            + "\n"
            + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in evals)
        )
    if m.get("attempts"):
        cols = ["run", "step", "tokens", "story_loss", "ioi_acc", "pronoun_acc", "greater_than_acc", "capital_acc", "induction_layer_sum"]
        cols += ["english_bpc"] if any("english_bpc" in r for r in m["attempts"]) else []
        lines.append(
            "\n## What was tried (the last held-out evaluation of each run)\n\n| "
            + " | ".join(cols)
            + " |\n|"
            + "---|" * len(cols)
            + "\n"
            + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in m["attempts"])
        )
    if m.get("mixed"):
        lines.append(stories_english.card_text(m["mixed"], m))
    if m.get("bf16"):
        lines.append("\n" + bf16.sentence(m["bf16"], training) + "\n")
    if training.get("checkpoints"):
        lines.append(
            f"\nCheckpoints in `checkpoints/` (int8): steps {', '.join(map(str, training['checkpoints']))}; open e.g. `stories@{training['checkpoints'][0]}`.\n"
        )
    return "".join(lines)


def attempts(runs: dict[str, Path]) -> list[dict]:
    """The last held-out evaluation of each training run tried ({description: run folder with log.jsonl})."""
    out = []
    for description, folder in runs.items():
        log = Path(folder) / "log.jsonl"
        if not log.exists():
            continue
        evals = [json.loads(line) for line in log.read_text().splitlines() if '"ioi_acc"' in line]
        if evals:
            last = evals[-1]
            out.append({"run": description, **{k: last[k] for k in ("step", "tokens", "seconds") if k in last}} | _scores(last))
    return out


def targets_met(m: dict) -> list[str]:
    """The targets a measured model (measure) meets, by name."""
    ind = m["induction"]
    return [name for name, row in m["tasks"].items() if met(name, row, ind)]


def _scores(rec: dict) -> dict:
    keys = (
        "story_loss",
        "english_bpc",
        "ioi_acc",
        "pronoun_acc",
        "greater_than_acc",
        "capital_acc",
        "induction_acc",
        "induction_layer_sum",
    )
    return {k: rec[k] for k in keys if k in rec}
