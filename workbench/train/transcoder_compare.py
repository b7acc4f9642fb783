"""Other transcoder sets on the shipped set's task checks: whether a different kind of transcoder makes the attribution
graph's predictions hold where the shipped one's miss.

`python -m workbench.train transcoders MODEL --compare DIR [--compare DIR ...]` measures each set in DIR (per-layer
transcoders trained with other settings, e.g. `python -m workbench.train transcoders MODEL --k 64 --width 2048
--jacobian 1 --out DIR`, or a cross-layer transcoder, `python -m workbench.train clt MODEL --out DIR`) as the shipped
set is measured: its held-out quality (train/transcoders.quality, or train/clt.quality for a cross-layer set) and the
task checks (task_circuits.check_task, the same CheckConfig, pairs and tolerance). The records go to compare.json
beside the shipped card (a set measured again replaces its record, the others stay), whose README shows them
(`section`). The shipped set is not replaced by this: its recipe is chosen on held-out quality alone
(train/transcoders.search); the comparison answers a question about the method.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from workbench.errors import InputError
from workbench.runs import versions
from workbench.task_circuits import pairs_passed
from workbench.train.transcoders import CONFIG, heldout, recipe, task_checks
from workbench.transcoder import is_cross_layer, load_set

FILE = "compare.json"
# the command line's flags for the training settings they set (train/__main__.py), in the order a command names them
FLAGS = {"k": "--k", "width": "--width", "jacobian": "--jacobian", "tokens": "--steps", "seed": "--seed"}


def command(model_name: str, cross_layer: bool, trained_with: dict) -> str:
    """The command that trains a set with `trained_with` (its cfg.json's record), from the flags where it departs from
    what that command trains by default (the model's recipe; a cross-layer set: CONFIG); settings no flag sets, and a
    token count that is no whole number of batches, are named after it."""
    base = dataclasses.asdict(CONFIG if cross_layer else recipe(model_name))
    parts = [f"python -m workbench.train {'clt' if cross_layer else 'transcoders'} {model_name}"]
    other = []
    for name in base:
        value = trained_with.get(name, base[name])
        if value == base[name] or name == "threads":
            continue
        if name not in FLAGS or (name == "tokens" and value % CONFIG.batch):
            other.append(f"{name} {value}")
        else:
            parts.append(f"{FLAGS[name]} {value // CONFIG.batch if name == 'tokens' else value}")
    order = list(FLAGS.values())
    parts[1:] = sorted(parts[1:], key=lambda p: order.index(p.split()[0]))
    return " ".join(parts) + (f" (and {', '.join(other)})" if other else "")


def measure(model, folder: Path) -> dict:
    """One set's record: how it was trained, its held-out quality, its task checks (module doc)."""
    from workbench import attribution_graph as ag
    from workbench.train import clt, transcoders

    tcs = ag.transcoders_for(model, load_set(folder))  # refused here if it is no set of this model's shape
    cross = is_cross_layer(tcs)
    first = folder / f"layer{min(tcs)}" / "cfg.json"
    cfg = json.loads(first.read_text()).get("trained_with") if first.is_file() else None
    if cfg is None:
        raise InputError(
            f"{folder} does not say how it was trained (no trained_with in {first}): train it with this workbench to compare it"
        )
    q = (clt.quality if cross else transcoders.quality)(model, tcs, *heldout(model))
    layers = list(q["layers"].values())
    checks = task_checks(model, tcs)
    return {
        "folder": folder.name,
        "kind": "cross-layer" if cross else "per-layer",
        "width": tcs[min(tcs)].W_enc.shape[1],
        "trained_with": cfg,
        "command": command(model.info.name, cross, cfg),
        "variance_explained": [r["variance_explained"] for r in layers],
        "response_explained": [r["response_explained"] for r in layers] if all("response_explained" in r for r in layers) else None,
        "l0": [r["l0"] for r in layers],
        "loss_recovered": q["all_layers"]["loss_recovered"],
        "checks": {name: _summary(c) for name, c in checks["tasks"].items() if "error" not in c},
        "versions": dict(versions()),
    }


def _summary(c: dict) -> dict:
    """A task's check (task_checks' record) in a few numbers: pairs passed, the within-tolerance counts, beats random."""
    return {"passed": pairs_passed(c), "pairs": len(c["pairs"]), "within": c["within_tolerance"],
            "beats_random": sum(p["beats_random"] for p in c["pairs"])}  # fmt: skip


def compare(model_name: str, folders: list[Path], out: Path | None = None) -> dict:
    """Measures every set in `folders` into compare.json in the shipped transcoders' folder `out` (a set measured before
    under the same folder name is replaced, the others kept); rewrites that card's README with them."""
    from workbench.model import load_model
    from workbench.train.transcoders import FOLDER, write_card

    model = load_model(model_name)
    out = out or Path(model.info.source) / FOLDER
    path = out / FILE
    kept = json.loads(path.read_text())["sets"] if path.is_file() else []
    new = [measure(model, Path(f)) for f in folders]
    names = {s["folder"] for s in new}
    record = {"model": model_name, "sets": [s for s in kept if s["folder"] not in names] + new}
    path.write_text(json.dumps(record, indent=1) + "\n")
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

    def cells(checks: dict) -> str:  # {task: _summary's record}: passed (within the real tangent / the replacement's)
        counts = {n: (c["passed"], c["within"]["measured_tangent"], c["within"]["measured_replacement_tangent"]) for n, c in checks.items()}
        return " | ".join("{} ({} / {})".format(*counts[n]) if n in counts else "-" for n in names)

    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.3f}"

    q, cfg = card["quality"], card["config"]
    rows = [
        f"| shipped (per-layer, width {cfg['width']}, k {cfg['k']}) | `{command(card['model'], False, cfg)}` | "
        f"{mean([r['variance_explained'] for r in q['layers'].values()])} | {q['all_layers']['loss_recovered']:.3f} | "
        + cells({n: _summary(shipped[n]) for n in names})
        + " |"
    ]
    for s in sets:
        rows.append(
            f"| {s['folder']} ({s['kind']}, width {s['width']}, k {s['trained_with'].get('k', '?')}) | `{s['command']}` | "
            f"{mean(s['variance_explained'])} | {s['loss_recovered']:.3f} | " + cells(s["checks"]) + " |"
        )
    return (
        "\n### Other transcoder sets on the same checks\n\n"
        f"`python -m workbench.train transcoders {card['model']} --compare DIR` ({FILE}, `workbench/train/transcoder_compare.py`): "
        "each set measured as this one is, on the same held-out data and the same pairs, tolerance and clamp. Not shipped "
        "(the recipe is chosen on held-out quality alone); the command trains each again. Per task: pairs that pass the "
        "check, and in brackets how many pairs the two first-order references put within the tolerance of the measurement "
        "for that set's graphs: the real model's tangent / the replacement model's (that set's own response).\n\n"
        "| set | trained by | variance explained (mean over layers) | loss recovered, all layers | " + " | ".join(names) + " |\n"
        "|" + "---|" * (4 + len(names)) + "\n" + "\n".join(rows) + "\n"
    )
