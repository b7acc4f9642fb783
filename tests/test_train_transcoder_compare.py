"""Other transcoder sets on the shipped set's checks (workbench/train/transcoder_compare.py): a set is measured as the
shipped one is, the command it names trains it again (parsed by the command line's own parser), and the card's section
shows the file's numbers under the right task."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from workbench.train import transcoder_compare as tcmp
from workbench.train.__main__ import main, parser, transcoder_config
from workbench.train.transcoders import CONFIG, FOLDER, recipe, write_card


def _trained_by(cmd: str) -> dict:
    """The settings a command trains with: its words parsed by the command line's parser and made a config as `main` and
    `build` make it (the model's recipe under the flags; a cross-layer set: CONFIG under them)."""
    args = parser().parse_args(cmd.split()[3:])
    cfg = transcoder_config(args)
    if args.what == "transcoders":
        cfg = recipe(args.model, cfg)
    return dataclasses.asdict(cfg)


def test_the_command_trains_the_set_again():
    """Per-layer and cross-layer records, departing from the default by flags, by settings no flag sets, and by a token
    count that is no whole number of batches: the flags the command names give back every setting they can, and the
    rest is named after the command; the recipe itself names nothing."""
    wide = dataclasses.asdict(dataclasses.replace(recipe("stories"), k=64, width=2048, jacobian=1.0, seed=3, threads=2))
    cmd = tcmp.command("stories", False, wide)
    assert cmd == "python -m workbench.train transcoders stories --k 64 --width 2048 --jacobian 1.0 --seed 3", cmd
    assert _trained_by(cmd) == {**wide, "threads": CONFIG.threads}
    clt = dataclasses.asdict(dataclasses.replace(CONFIG, tokens=1171 * CONFIG.batch, seed=0))
    cmd = tcmp.command("stories", True, clt)
    assert cmd.startswith("python -m workbench.train clt stories --steps 1171") and _trained_by(cmd) == clt, cmd
    odd = dataclasses.asdict(dataclasses.replace(recipe("stories"), aux_k=128, tokens=1000))
    cmd = tcmp.command("stories", False, odd)
    assert cmd == "python -m workbench.train transcoders stories (and tokens 1000, aux_k 128)", cmd
    assert tcmp.command("stories", False, dataclasses.asdict(recipe("stories"))) == "python -m workbench.train transcoders stories"


def test_a_cross_layer_set_is_compared_not_trained_by_the_clt_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["clt", "stories", "--compare", "somewhere"])
    assert stop.value.code == 2 and "--compare" in capsys.readouterr().err


def test_a_set_is_measured_as_the_shipped_one(circuits, tmp_path):
    """The circuits model's own shipped transcoders measured as another set: the checks equal those its card holds
    (written by `python -m workbench.train transcoders circuits --checks`) and the quality the card's; a folder that holds
    no transcoder set is refused with a message."""
    from workbench.errors import InputError

    shipped = Path(circuits.info.source) / FOLDER
    card = json.loads((shipped / "card.json").read_text())
    got = tcmp.measure(circuits, shipped)
    assert got["kind"] == "per-layer" and got["command"] == "python -m workbench.train transcoders circuits"
    for name, c in got["checks"].items():
        held = card["task_circuits"]["tasks"][name]
        assert c["within"] == held["within_tolerance"] and c["passed"] == round(held["passed"] * len(held["pairs"])), name
    assert got["variance_explained"] == pytest.approx([r["variance_explained"] for r in card["quality"]["layers"].values()], abs=1e-6)
    with pytest.raises(InputError, match="transcoder"):
        tcmp.measure(circuits, tmp_path)


def test_the_cards_section_puts_each_number_under_its_task(tmp_path):
    """The stories card (five tasks) with a compare.json whose set lists its tasks in another order and lacks one: each
    cell sits under its task's column, the missing one is '-', and no section is written without the file."""
    from workbench.model import load_model

    shipped = Path(load_model("stories").info.source) / FOLDER
    card = json.loads((shipped / "card.json").read_text())
    out = tmp_path / "transcoders"
    shutil.copytree(shipped, out)
    (out / tcmp.FILE).unlink(missing_ok=True)
    assert tcmp.section(out, card) == ""
    names = [n for n, c in card["task_circuits"]["tasks"].items() if "error" not in c]
    checks = {n: {"passed": i, "pairs": 8, "within": {"measured_tangent": 10 + i, "measured_replacement_tangent": 20 + i}, "beats_random": 0}
              for i, n in enumerate(names)}  # fmt: skip
    del checks[names[1]]
    fake = {"folder": "another-set", "kind": "per-layer", "width": 7, "trained_with": {"k": 3}, "command": "python -m x",
            "variance_explained": [0.5, 0.7], "loss_recovered": 0.25, "checks": dict(reversed(list(checks.items())))}  # fmt: skip
    (out / tcmp.FILE).write_text(json.dumps({"model": "stories", "sets": [fake]}))
    write_card(out, card)
    lines = (out / "README.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| set | trained by"))
    row = next(line for line in lines if line.startswith("| another-set"))
    cells = dict(zip([c.strip() for c in head.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]], strict=True))
    assert cells["variance explained (mean over layers)"] == "0.600" and cells["loss recovered, all layers"] == "0.250"
    for i, n in enumerate(names):
        assert cells[n] == ("-" if i == 1 else f"{i} ({10 + i} / {20 + i})"), (n, cells)
