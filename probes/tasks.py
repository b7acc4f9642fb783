"""The task datasets of a model (the stories model): accuracy and logit difference on each task's held-out pairs, with
the circuit its card names; --task picks one."""

from __future__ import annotations

from pathlib import Path

from workbench import tasks
from workbench.errors import InputError
from workbench.figures import tasks as draw

from .common import run_probe

DEFAULTS = {"model": "stories", "task": None, "pairs": 0}


def add_arguments(p):
    p.add_argument("--task", choices=list(tasks.TASKS), help="one task (default: every task the model ships)")
    p.add_argument("--pairs", type=int, help="measure on the first N pairs only (default: all)")


def body(model, s, out):
    folder = Path(model.info.source)
    names = [s["task"]] if s.get("task") else tasks.available(folder)
    if not names or not (folder / "tasks").is_dir():
        raise InputError(f"the model '{model.info.name}' ships no task datasets; try --model stories")
    cards = {c.name: c for c in tasks.card(folder)}
    rows = []
    for name in names:
        task = tasks.load(folder, name)
        if s.get("pairs"):
            task = tasks.Task(task.name, task.description, task.pairs[: int(s["pairs"])], task.split)
        with model.lock:
            score = tasks.score(model.bridge, model.tokenizer, task)
        c = cards.get(name)
        rows.append(
            {
                **score.__dict__,
                "components": " ".join(c.labels) if c else "",
                "ablation_cut": c.ablation_cut if c else None,
                "random_cut": c.random_cut if c else None,
                "verdict": c.verdict if c else "",
            }
        )
        print(f"{name}: accuracy {score.accuracy:.1%}, logit difference {score.logit_diff:.2f} ({score.pairs} pairs)")
    out.data("tasks", {"model": model.info.name, "tasks": rows}, rows)
    out.figure(draw.tasks_figure([cards[n] for n in names if n in cards]), "tasks")


def main(argv=None) -> int:
    return run_probe("tasks", __doc__, add_arguments, DEFAULTS, body, argv)
