"""Other transcoder sets on the shipped set's task checks: whether a different kind of transcoder makes the attribution
graph's predictions hold where the shipped one's miss.

`python -m workbench.train transcoders MODEL --compare DIR [--compare DIR ...]` measures each set in DIR (per-layer
transcoders trained with other settings, e.g. `python -m workbench.train transcoders MODEL --k 64 --width 2048
--jacobian 1 --out DIR`, or a cross-layer transcoder, `python -m workbench.train clt MODEL --out DIR`) as the shipped
set is measured: its held-out quality (train/transcoders.quality, or train/clt.quality for a cross-layer set) and the
task checks (task_circuits.check_task, the same CheckConfig, pairs and tolerance). The records go to compare.json
beside the shipped card, whose README shows them (`section`). The shipped set is not replaced by this: its recipe is
chosen on held-out quality alone (train/transcoders.search); the comparison answers a question about the method.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from workbench.train.transcoders import CONFIG, heldout, recipe, task_checks
from workbench.transcoder import is_cross_layer, load_set

FILE = "compare.json"
FLAGS = {"k": "--k", "width": "--width", "jacobian": "--jacobian", "tokens": "--steps", "seed": "--seed"}


def command(model_name: str, cross_layer: bool, trained_with: dict) -> str:
    """The command that trains a set with `trained_with` (its cfg.json's record), from the flags where it departs from
    what that command trains by default (the model's recipe; a cross-layer set: CONFIG)."""
    base = dataclasses.asdict(CONFIG if cross_layer else recipe(model_name))
    parts = [f"python -m workbench.train {'clt' if cross_layer else 'transcoders'} {model_name}"]
    for name, flag in FLAGS.items():
        value = trained_with.get(name)
        if value is not None and value != base[name]:
            parts.append(f"{flag} {value // CONFIG.batch if name == 'tokens' else f'{value:g}'}")
    departs = sorted(n for n in trained_with if n in base and n not in FLAGS and n != "threads" and trained_with[n] != base[n])
    if departs:
        parts.append("(and " + ", ".join(f"{n} {trained_with[n]}" for n in departs) + ")")
    return " ".join(parts)


def measure(model, folder: Path) -> dict:
    """One set's record: how it was trained, its held-out quality, its task checks (module doc)."""
    from workbench.train import clt, transcoders

    tcs = load_set(folder)
    cross = is_cross_layer(tcs)
    cfg = json.loads((folder / "layer0" / "cfg.json").read_text()).get("trained_with", {})
    q = (clt.quality if cross else transcoders.quality)(model, tcs, *heldout(model))
    layers = list(q["layers"].values())
    checks = task_checks(model, tcs)
    return {
        "folder": folder.name,
        "kind": "cross-layer" if cross else "per-layer",
        "width": tcs[0].W_enc.shape[1],
        "trained_with": cfg,
        "command": command(model.info.name, cross, cfg),
        "variance_explained": [r["variance_explained"] for r in layers],
        "response_explained": [r["response_explained"] for r in layers] if all("response_explained" in r for r in layers) else None,
        "l0": [r["l0"] for r in layers],
        "loss_recovered": q["all_layers"]["loss_recovered"],
        "checks": {name: _summary(c) for name, c in checks["tasks"].items() if "error" not in c},
    }


def _summary(c: dict) -> dict:
    """A task's check (task_checks' record) in a few numbers: pairs passed, the within-tolerance counts, beats random."""
    pairs = c["pairs"]
    return {"passed": round(c["passed"] * len(pairs)), "pairs": len(pairs), "within": c["within_tolerance"],
            "beats_random": sum(p["beats_random"] for p in pairs)}  # fmt: skip


def compare(model_name: str, folders: list[Path], out: Path | None = None) -> dict:
    """Measures every set in `folders` and writes compare.json in the shipped transcoders' folder `out`; rewrites that
    card's README with them."""
    from workbench.model import load_model
    from workbench.train.transcoders import FOLDER, write_card

    model = load_model(model_name)
    out = out or Path(model.info.source) / FOLDER
    record = {"model": model_name, "sets": [measure(model, Path(f)) for f in folders]}
    (out / FILE).write_text(json.dumps(record, indent=1) + "\n")
    write_card(out, json.loads((out / "card.json").read_text()))
    return record


def section(out: Path, card: dict) -> str:
    """The card's section on the other sets (compare.json in `out`), every number from that file and the card; empty
    without it."""
    path = out / FILE
    if not path.is_file() or "task_circuits" not in card:
        return ""
    sets = json.loads(path.read_text())["sets"]
    shipped = card["task_circuits"]["tasks"]
    names = [n for n in shipped if "error" not in shipped[n]]

    def cells(passed: dict) -> str:
        return " | ".join(passed.get(n, "-") for n in names)

    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.3f}"

    q = card["quality"]
    rows = [
        f"| shipped (per-layer, width {card['config']['width']}, k {card['config']['k']}) | `python -m workbench.train transcoders {card['model']}` | "
        f"{mean([r['variance_explained'] for r in q['layers'].values()])} | {q['all_layers']['loss_recovered']:.3f} | "
        + cells(
            {
                n: f"{round(shipped[n]['passed'] * len(shipped[n]['pairs']))} ({shipped[n]['within_tolerance']['measured_tangent']})"
                for n in names
            }
        )
        + " |"
    ]
    for s in sets:
        k = s["trained_with"].get("k", "?")
        rows.append(
            f"| {s['folder']} ({s['kind']}, width {s['width']}, k {k}) | `{s['command']}` | {mean(s['variance_explained'])} | "
            f"{s['loss_recovered']:.3f} | "
            + cells({n: f"{c['passed']} ({c['within']['measured_tangent']})" for n, c in s["checks"].items()})
            + " |"
        )
    return (
        "\n### Other transcoder sets on the same checks\n\n"
        f"`python -m workbench.train transcoders {card['model']} --compare DIR` ({FILE}, `workbench/train/transcoder_compare.py`): "
        "each set measured as this one is, on the same held-out data and the same pairs, tolerance and clamp. Not shipped "
        "(the recipe is chosen on held-out quality alone); the command trains each again. Per task: pairs that pass the "
        "check, and in brackets how many the real model's first-order reference (its tangent, the final norm exact) puts "
        "within the tolerance for that set's graphs.\n\n"
        "| set | trained by | variance explained (mean over layers) | loss recovered, all layers | " + " | ".join(names) + " |\n"
        "|" + "---|" * (4 + len(names)) + "\n" + "\n".join(rows) + "\n"
    )
