"""Task datasets: clean and corrupted prompt pairs with an answer token and a wrong token.

Each task is a known mechanism of the `stories` model organism (workbench/train/stories.py),
generated from the same world, on names and templates that no training story uses:

- ioi: "When Mia and Tom went to the market, Tom gave an apple to" -> " Mia" (the indirect object),
  wrong " Tom"; corrupted: the second mention of the subject becomes a third name (the IOI paper's
  ABC distribution), so nothing says which of the two is the indirect object;
- pronoun: "Tom and Mia went to the park. Mia was happy because" -> " she", wrong " he";
  corrupted: the clause's person is the other one, of the other gender;
- greater_than: "The long siege went on from 1732 until 17" -> a year ending after 32
  (answer "33", wrong "31"); corrupted: the start year ends in 01 (as Hanna et al. 2023);
- capital (factual recall): a held-out question phrasing about a country, answer its capital;
  corrupted: another country (wrong: that country's capital);
- induction: BOS + random words, then the same words again, cut mid-copy; the answer is the word
  that followed the current one in the first copy; corrupted: that following word is another one.

In every pair the clean and corrupted prompts have the same number of tokens and differ in one
token (induction: one token of the first copy), and the answer and wrong are single tokens.
The metric of a pair is the logit difference logit(answer) - logit(wrong) at the last position.
The datasets ship as JSON beside the model (models/stories/tasks/<task>.json); `load` reads them.

`Pair` is the workbench's one prompt pair: patching, the node and edge methods, the scoreboard and the
task circuits all take it, with the metric's kind beside it (metrics.Metric.of reads a pair with it).
The pair's helpers live here too: `check_pair` (the one input check of a pair on a model),
`compare_tokens`, `candidate_answers` and `corrupt_word` (what the Patching page offers), and the
pair generators and readers (`induction_pairs`, `parse_pairs`, `dataset_pairs`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from workbench.errors import InputError
from workbench.metrics import Metric
from workbench.model import LoadedModel
from workbench.runs import encode, next_token_topk, run_prompt
from workbench.tokens import Alignment, align, ordinary_token_ids, single_token_id, token_labels
from workbench.train import stories

TASKS = {
    "ioi": "indirect object: who receives the object (the name that is not repeated)",
    "pronoun": "pronoun agreement: she or he after a clause about a named person",
    "greater_than": "greater-than: the end year of a span comes after its start year",
    "capital": "factual recall: a country's capital, asked in a held-out phrasing",
    "induction": "induction: a repeated sequence of words is continued from its first copy",
}


@dataclass(frozen=True)
class Pair:
    """One clean/corrupted prompt pair: two prompts of one length, the answer token the clean one should produce and the
    wrong token the corrupted one points to, each as a token string (" Mary", with its leading space) or a token id.

    The one prompt pair of the workbench: patching, the node and edge methods and the scoreboard take a Pair and a
    metric's kind; `ids` resolves the answer and wrong tokens for a tokenizer, and `metrics.Metric.of(pair, tokenizer,
    kind)` makes the metric they read."""

    clean: str
    corrupted: str
    answer: str | int
    wrong: str | int

    def ids(self, tokenizer) -> tuple[int, int]:
        """(answer id, wrong id): ids as given, strings resolved; InputError when a string is not exactly one token."""
        return _token_id(tokenizer, self.answer, "answer"), _token_id(tokenizer, self.wrong, "wrong")


def _token_id(tokenizer, token: str | int, what: str) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        return int(token)
    return single_token_id(tokenizer, token, what)


@dataclass(frozen=True)
class Task:
    """A named task: its pairs and how they were made."""

    name: str
    description: str
    pairs: tuple[Pair, ...]
    split: str  # "held_out": names/templates/phrasings no training story uses

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "split": self.split, "pairs": [asdict(p) for p in self.pairs]}


def _cut(template: str, slot: str) -> str:
    """The template up to (not including) the slot, with the space before it removed."""
    return template[: template.index("{" + slot + "}")].rstrip()


def ioi(rng: random.Random, w: stories.World, names, templates) -> Pair:
    (n1, _), (n2, _), (c, _) = rng.sample(names, 3)
    s, io = (n1, n2) if rng.random() < 0.5 else (n2, n1)
    template = _cut(rng.choice(templates), "IO")
    slots = dict(A=n1, B=n2, place=rng.choice(stories.PLACES), obj=stories.a(rng.choice(stories.OBJECTS)))
    return Pair(template.format(S=s, **slots), template.format(S=c, **slots), " " + io, " " + s)


def pronoun(rng: random.Random, w: stories.World, names, templates) -> Pair:
    (n1, g1), (n2, g2) = stories.pick_two(rng, names, different_gender=True)
    if rng.random() < 0.5:
        (n1, g1), (n2, g2) = (n2, g2), (n1, g1)
    template = _cut(rng.choice(templates), "p")
    slots = dict(
        A=n1, B=n2, place=rng.choice(stories.PLACES), obj=stories.a(rng.choice(stories.OBJECTS)), animal=rng.choice(stories.ANIMALS)
    )
    if "{A}" not in template:  # a one-person template: the corrupted person is another name of the other gender
        n2 = rng.choice([n for n, g in names if g != g1])
    return Pair(template.format(X=n1, **slots), template.format(X=n2, **slots), " " + stories.PRON[g1][0], " " + stories.PRON[g2][0])


def greater_than(rng: random.Random, w: stories.World, events, templates) -> Pair:
    century = rng.randint(11, 18)
    start = rng.randint(5, 90)
    template = _cut(rng.choice(templates), "y2")
    event = rng.choice(events)
    clean = template.format(event=event, y1=century * 100 + start) + f" {century}"
    corrupted = template.format(event=event, y1=century * 100 + 1) + f" {century}"
    return Pair(clean, corrupted, f"{start + 1:02d}", f"{start - 1:02d}")


def capital(rng: random.Random, w: stories.World, names, templates) -> Pair:
    (country, cap), (other, other_cap) = rng.sample(w.countries, 2)
    template = _cut(rng.choice(templates), "capital")
    name = rng.choice(names)[0]
    return Pair(template.format(country=country, name=name), template.format(country=other, name=name), " " + cap, " " + other_cap)


def induction_words(w: stories.World) -> list[str]:
    """The words an induction sequence is drawn from: every space-led word of the vocabulary
    (they re-tokenize to the same ids however they are joined)."""
    return sorted({p for p in stories.vocabulary(w) if p.startswith(" ") and p[1:].isalpha()})


def induction(rng: random.Random, words: list[str], names: list[str], length: int = 20) -> Pair:
    """The sequence opens with a name (a name is a token with or without its leading space, so the
    prompt needs none: pages strip a leading space)."""
    seq = rng.sample(words, length + 1)
    seq[0] = " " + rng.choice([n for n in names if " " + n not in seq])
    k = rng.randint(length // 2, length - 2)  # the prompt stops after seq[k] in the second copy
    other = seq[length]  # a word not in the sequence
    first = seq[:length]
    clean = "".join(first) + "".join(first[: k + 1])
    swapped = [*first[: k + 1], other, *first[k + 2 :]]
    corrupted = "".join(swapped) + "".join(first[: k + 1])
    return Pair(clean.lstrip(), corrupted.lstrip(), first[k + 1], other)


def build(name: str, n: int = 200, seed: int = 0, split: str = "held_out", w: stories.World | None = None) -> Task:
    """n pairs of a task, deterministic for the seed; split "held_out" (held-out names and templates)
    or "train" (training names and templates: what the model saw, for comparison)."""
    if name not in TASKS:
        raise InputError(f"unknown task '{name}': choose one of {', '.join(TASKS)}")
    w = w or stories.world()
    rng = random.Random(f"{name}-{seed}-{split}")
    held = split == "held_out"
    names = list(w.held_out_names if held else w.names)
    if name == "ioi":
        make = lambda: ioi(rng, w, names, stories.IOI_HELD_OUT if held else stories.IOI_TRAIN)  # noqa: E731
    elif name == "pronoun":
        make = lambda: pronoun(rng, w, names, stories.PRONOUN_HELD_OUT if held else stories.PRONOUN_TRAIN)  # noqa: E731
    elif name == "greater_than":
        events = stories.EVENTS_HELD_OUT if held else stories.EVENTS_TRAIN
        make = lambda: greater_than(rng, w, events, stories.YEARS_HELD_OUT if held else stories.YEARS_TRAIN)  # noqa: E731
    elif name == "capital":
        make = lambda: capital(rng, w, names, stories.CAPITAL_HELD_OUT if held else stories.CAPITAL_TRAIN)  # noqa: E731
    else:
        words = induction_words(w)
        everyone = [n for n, _ in w.all_names]
        make = lambda: induction(rng, words, everyone)  # noqa: E731
    return Task(name, TASKS[name], tuple(make() for _ in range(n)), split)


def write(folder: Path, n: int = 200, seed: int = 0) -> list[Path]:
    """Writes every task's held-out pairs as folder/tasks/<task>.json; returns the paths."""
    out = folder / "tasks"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TASKS:
        path = out / f"{name}.json"
        path.write_text(json.dumps(build(name, n, seed).to_json(), indent=1) + "\n")
        paths.append(path)
    return paths


def available(folder: Path) -> list[str]:
    """The tasks shipped beside a model (empty for a model without task datasets)."""
    return [name for name in TASKS if (Path(folder) / "tasks" / f"{name}.json").exists()]


def load(folder: Path, name: str) -> Task:
    """A shipped task of a model folder; a clear message when the model has none."""
    path = Path(folder) / "tasks" / f"{name}.json"
    if name not in TASKS:
        raise InputError(f"unknown task '{name}': choose one of {', '.join(TASKS)}")
    if not path.exists():
        raise InputError(f"this model ships no task datasets (no {path}); the 'stories' model has them")
    data = json.loads(path.read_text())
    return Task(data["name"], data["description"], tuple(Pair(**p) for p in data["pairs"]), data["split"])


# ---- a pair on a model: the one input check, its tokens, the answers to offer, a corrupted prompt ------------------


def check_pair(model: LoadedModel, pair: Pair, metric: str = "logit difference") -> tuple[torch.Tensor, torch.Tensor, Metric]:
    """((pos,), (pos,), Metric): the clean and corrupted ids and the metric of kind `metric` the pair reads, or InputError
    saying what to change."""
    measure = Metric.of(pair, model.tokenizer, metric).check(model)
    clean, _ = encode(model, pair.clean)
    corrupted, _ = encode(model, pair.corrupted)
    if len(clean) != len(corrupted):
        cmp = compare_tokens(model, pair.clean, pair.corrupted)
        raise InputError(
            f"clean and corrupted prompts must have the same number of tokens ({len(clean)} vs {len(corrupted)}): "
            f"change words for words of the same token count (first difference at position {cmp.differ[0] if cmp.differ else min(len(clean), len(corrupted))})"
        )
    return clean, corrupted, measure


def compare_tokens(model: LoadedModel, clean: str, corrupted: str) -> Alignment:
    """Both prompts' tokens side by side (`labels_a` clean, `labels_b` corrupted), and where they differ."""
    return align(model.tokenizer, encode(model, clean)[0], encode(model, corrupted)[0])


def candidate_answers(model: LoadedModel, clean: str, corrupted: str, k: int = 8) -> tuple[dict[str, int], dict[str, int]]:
    """({label: id} answers, {label: id} wrongs) to offer, best guesses first.

    Where the prompts differ in one token, that token of each prompt comes first (the usual
    copying or fact pair: the clean prompt's word is the answer); then each run's top predictions.
    """
    clean_ids, corrupted_ids = encode(model, clean)[0], encode(model, corrupted)[0]
    answers: dict[str, int] = {}
    wrongs: dict[str, int] = {}
    if len(clean_ids) == len(corrupted_ids):
        differ = (clean_ids != corrupted_ids).nonzero().flatten().tolist()
        if len(differ) == 1:
            a, w = int(clean_ids[differ[0]]), int(corrupted_ids[differ[0]])
            answers[token_labels(model.tokenizer, [a])[0]] = a
            wrongs[token_labels(model.tokenizer, [w])[0]] = w
    for prompt, out in ((clean, answers), (corrupted, wrongs)):
        top = next_token_topk(model, run_prompt(model, prompt), k=k)
        for label, i in zip(top.labels, top.ids, strict=True):
            out.setdefault(label, i)
    return answers, wrongs


def corrupt_word(model: LoadedModel, clean: str, word: str, replacement: str) -> str:
    """The clean prompt with every `word` replaced by `replacement`; InputError unless the token count stays the same."""
    if not word or word not in clean:
        raise InputError(f"'{word}' does not occur in the clean prompt")
    corrupted = clean.replace(word, replacement)
    a, b = encode(model, clean)[0], encode(model, corrupted)[0]
    if len(a) != len(b):
        n_word = len(model.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"])
        n_rep = len(model.tokenizer(" " + replacement.strip(), add_special_tokens=False)["input_ids"])
        raise InputError(
            f"'{word}' is {n_word} token(s) but '{replacement}' is {n_rep}: the prompts would differ in length ({len(a)} vs {len(b)}); pick a replacement of the same token count"
        )
    return corrupted


# ---- prompt pairs for the sweeps: generated, typed, or read from a shipped task dataset ------------------


def induction_pairs(model, n_pairs: int = 8, length: int = 8, repeat: int = 4, seed: int = 0) -> list[Pair]:
    """Copying prompt pairs for the circuits model: random words, then the first `repeat` again.

    Clean: w1..wL w1..wR -> answer w(R+1). Corrupted: the earlier copy's w(R+1) swapped for another
    word x, so an induction head now points to x (the wrong token). Made of token ids (a random token's
    text need not read back as one token), so the pairs carry the answer and wrong ids themselves.
    """
    gen = torch.Generator().manual_seed(seed)
    words = ordinary_token_ids(model.tokenizer, model.info.d_vocab)
    pairs = []
    for _ in range(n_pairs):
        pick = words[torch.randperm(len(words), generator=gen)[: length + 1]]
        seq, other = pick[:length], int(pick[length])
        clean_ids = torch.cat([seq, seq[:repeat]])
        corrupted_ids = clean_ids.clone()
        corrupted_ids[repeat] = other
        decode = model.tokenizer.decode
        pairs.append(Pair(decode(clean_ids), decode(corrupted_ids), int(seq[repeat]), other))
    return pairs


def parse_pairs(model, text: str) -> list[Pair]:
    """Prompt pairs typed one per line as `clean | corrupted | answer | wrong` (answer and wrong: single tokens, with their
    space); InputError at the first line that is not four fields or whose answer or wrong is not one token."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 4:
            raise InputError(
                f"line {n} has {len(parts)} field(s): write clean | corrupted | answer | wrong, e.g. 'a b c a b | a x c a b | c | x'"
            )
        clean, corrupted, answer, wrong = (p.strip() for p in parts)
        answer, wrong = " " + answer.lstrip(), " " + wrong.lstrip()  # a word after a space, as in the prompts
        pair = Pair(clean, corrupted, answer, wrong)
        pair.ids(model.tokenizer)  # single tokens, checked while the line is in view
        out.append(pair)
    if not out:
        raise InputError("type at least one prompt pair: clean | corrupted | answer | wrong")
    return out


def dataset_pairs(model, task: str, n_pairs: int) -> list[Pair]:
    """The first n pairs of a shipped task dataset whose prompts have as many tokens as its first pair's
    (the node scores are per position, so the pairs of one scoreboard share a length)."""
    pairs = load(Path(model.info.source), task).pairs

    def length(text: str) -> int:
        return len(model.tokenizer(text)["input_ids"])

    n = length(pairs[0].clean)
    return [p for p in pairs if length(p.clean) == n and length(p.corrupted) == n][:n_pairs]


@dataclass(frozen=True)
class Score:
    """How a model does on a task, measured with the plain transformers model.

    accuracy: the share of pairs answered right (ioi, pronoun: answer above wrong; capital: the
    answer first among all capitals; induction: the answer first in the whole vocabulary;
    greater_than: the mean probability, among the two-digit year endings, of those after the start).
    logit_diff: mean logit(answer) - logit(wrong) on the clean prompts; corrupted_logit_diff on the corrupted."""

    task: str
    accuracy: float
    logit_diff: float
    corrupted_logit_diff: float
    pairs: int


def last_logits(model, tokenizer, prompts: list[str]):
    """(prompt, vocab) logits at each prompt's last position, BOS prepended, from a plain transformers model."""
    rows = [[tokenizer.bos_token_id, *tokenizer(p)["input_ids"]] for p in prompts]
    out = []
    with torch.no_grad():
        for length in sorted({len(r) for r in rows}):  # equal lengths batch together: no padding
            idx = [i for i, r in enumerate(rows) if len(r) == length]
            result = model(torch.tensor([rows[i] for i in idx]))
            logits = getattr(result, "logits", result)[:, -1]  # (n, vocab): a transformers output, or a bridge's logits
            out.extend(zip(idx, logits, strict=True))
    return torch.stack([row for _, row in sorted(out, key=lambda t: t[0])])


def token_id(tokenizer, piece: str) -> int:
    ids = tokenizer(piece)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"the answer '{piece}' is {len(ids)} tokens for this model's tokenizer: a task's answers must be single tokens")
    return ids[0]


def score(model, tokenizer, task: Task) -> Score:
    """The task measured on `model`: a transformers causal LM (the card: independent of the workbench), or a bridge."""
    clean = last_logits(model, tokenizer, [p.clean for p in task.pairs])  # (pair, vocab)
    corrupted = last_logits(model, tokenizer, [p.corrupted for p in task.pairs])
    ans = torch.tensor([token_id(tokenizer, p.answer) for p in task.pairs])
    wrong = torch.tensor([token_id(tokenizer, p.wrong) for p in task.pairs])
    rows = torch.arange(len(task.pairs))
    diff = clean[rows, ans] - clean[rows, wrong]
    corrupted_diff = corrupted[rows, ans] - corrupted[rows, wrong]
    if task.name == "greater_than":
        years = torch.tensor([token_id(tokenizer, f"{i:02d}") for i in range(100)])
        probs = clean[:, years].softmax(-1)  # (pair, 100): over the year endings only
        starts = torch.tensor([int(p.answer) - 1 for p in task.pairs])
        accuracy = (probs * (torch.arange(100)[None] > starts[:, None])).sum(-1).mean().item()
    elif task.name == "capital":
        caps = torch.tensor([token_id(tokenizer, " " + c) for _, c in stories.world().countries])
        accuracy = (caps[clean[:, caps].argmax(-1)] == ans).float().mean().item()
    elif task.name == "induction":
        accuracy = (clean.argmax(-1) == ans).float().mean().item()
    else:
        accuracy = (diff > 0).float().mean().item()
    return Score(task.name, round(accuracy, 4), round(diff.mean().item(), 4), round(corrupted_diff.mean().item(), 4), len(task.pairs))


# ---- what the model's card says about each task, and links that open a task in other views ------


@dataclass(frozen=True)
class TaskCard:
    """One task as the model's card measured it (card.json, written by workbench/train/stories_card.py)."""

    name: str
    description: str
    pairs: int
    accuracy: float
    logit_diff: float
    corrupted_logit_diff: float
    train_accuracy: float  # on training names and templates, for comparison
    components: tuple[tuple[str, int, int], ...]  # (kind, layer, head): "head" or "mlp" (head -1)
    labels: tuple[str, ...]  # "L1H2", "MLP0"
    ablation_cut: float | None
    random_cut: float | None
    verdict: str


def card(folder: Path) -> list[TaskCard]:
    """The tasks of a model's card, in the order of TASKS; a clear message when the card has none."""
    path = Path(folder) / "card.json"
    measured = json.loads(path.read_text()).get("measured", {}) if path.exists() else {}
    if "tasks" not in measured:
        raise InputError(f"this model's card measures no tasks ({path}); the 'stories' model's does")
    out = []
    for name, row in measured["tasks"].items():
        comps = row.get("components", [])
        out.append(
            TaskCard(
                name,
                TASKS.get(name, name),
                row["held_out"]["pairs"],
                row["held_out"]["accuracy"],
                row["held_out"]["logit_diff"],
                row["held_out"]["corrupted_logit_diff"],
                row["train_templates"]["accuracy"],
                tuple((c["kind"], c["layer"], c["head"]) for c in comps),
                tuple(c["label"] for c in comps),
                row.get("ablation_cut"),
                row.get("random_cut"),
                row["verdict"],
            )
        )
    return out


def edit_line(components, corrupted: str) -> str:
    """The Intervene page's compact edit line: each component resample-ablated from the corrupted prompt."""
    from urllib.parse import quote

    items = [
        f"ablate head {layer}.{head} resample" if kind == "head" else f"ablate mlp {layer} resample" for kind, layer, head in components
    ]
    return "; ".join([*items, f"resample {quote(corrupted, safe='')}"]) if items else ""


def links(model_name: str, pair: Pair, components=()) -> dict[str, str]:
    """Relative URLs that open one pair in the Patching, Graph and Intervene pages, settings in the query."""
    from urllib.parse import urlencode

    patch = {"model": model_name, "clean": pair.clean, "corrupted": pair.corrupted, "site": "z", "direction": "denoising"}
    patch["metric"] = "logit difference"
    graph = {"model": model_name, "prompt": pair.clean, "answer": pair.answer, "wrong": pair.wrong}
    intervene = {"model": model_name, "prompt": pair.clean, "metric": "logit difference", "answer": pair.answer, "wrong": pair.wrong}
    if components:
        intervene["edits"] = edit_line(components, pair.corrupted)
    return {
        "Patching": "Patching?" + urlencode(patch),
        "Graph": "Graph?" + urlencode(graph),
        "Intervene": "Intervene?" + urlencode(intervene),
    }
