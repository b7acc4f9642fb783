"""Other transcoder sets on the shipped set's checks (workbench/train/transcoder_compare.py): a set is measured as the
shipped one is, the command it names trains it again, and the card's section shows the file's numbers."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from workbench.train import transcoder_compare as tcmp
from workbench.train.transcoders import CONFIG, FOLDER, recipe, write_card


def _parse(cmd: str) -> tuple[str, dict]:
    """(what, {field: value}) from a command `command` wrote, by the flags' meaning in train/__main__.py."""
    words = cmd.split()
    what, fields = words[3], {}
    field_of = {flag: name for name, flag in tcmp.FLAGS.items()}
    for flag, value in zip(words[5::2], words[6::2], strict=False):
        name = field_of[flag]
        fields[name] = int(value) * CONFIG.batch if name == "tokens" else type(getattr(CONFIG, name))(value)
    return what, fields


def test_the_command_trains_the_set_again():
    """The flags the command names, applied as the command line applies them (the model's recipe, then the flags),
    give back the set's training record; a cross-layer set's command starts from CONFIG; a record of the recipe itself
    names no flag."""
    wide = dataclasses.asdict(dataclasses.replace(recipe("stories"), k=64, width=2048, jacobian=1.0, threads=2))
    cmd = tcmp.command("stories", False, wide)
    what, fields = _parse(cmd)
    assert what == "transcoders" and fields == {"k": 64, "width": 2048, "jacobian": 1.0}, cmd
    assert dataclasses.asdict(dataclasses.replace(recipe("stories"), threads=2, **fields)) == wide
    clt = dataclasses.asdict(dataclasses.replace(CONFIG, tokens=1171 * CONFIG.batch))
    what, fields = _parse(tcmp.command("stories", True, clt))
    assert what == "clt" and dataclasses.asdict(dataclasses.replace(CONFIG, **fields)) == clt
    assert tcmp.command("stories", False, dataclasses.asdict(recipe("stories"))) == "python -m workbench.train transcoders stories"


def test_a_set_is_measured_as_the_shipped_one_and_the_card_shows_it(tmp_path, circuits):
    """The circuits model's own shipped transcoders measured as another set: the checks equal those its card holds
    (written by `python -m workbench.train transcoders circuits --checks`, the same code path) and the quality the
    card's; the card's section is rendered from compare.json, every count from it."""
    shipped = Path(circuits.info.source) / FOLDER
    card = json.loads((shipped / "card.json").read_text())
    got = tcmp.measure(circuits, shipped)
    assert got["kind"] == "per-layer" and got["command"] == "python -m workbench.train transcoders circuits"
    for name, c in got["checks"].items():
        held = card["task_circuits"]["tasks"][name]
        assert c["within"] == held["within_tolerance"] and c["passed"] == round(held["passed"] * len(held["pairs"])), name
    assert got["variance_explained"] == pytest.approx([r["variance_explained"] for r in card["quality"]["layers"].values()], abs=1e-6)
    out = tmp_path / "transcoders"
    shutil.copytree(shipped, out)
    assert tcmp.section(out, card) == ""  # no compare.json: no section
    got["folder"] = "another-set"
    got["checks"]["induction"]["passed"] = 3  # a number no shipped card holds, to find in the README
    (out / tcmp.FILE).write_text(json.dumps({"model": "circuits", "sets": [got]}))
    write_card(out, card)
    text = (out / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| another-set"))
    assert f"| 3 ({got['checks']['induction']['within']['measured_tangent']}) |" in row, row
    assert "python -m workbench.train transcoders circuits" in row
