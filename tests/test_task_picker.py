"""The task picker: a pair of a task dataset shipped beside the model opens in Patching, the Graph, Intervene and Methods."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import scoreboard, tasks, ui
from workbench.model import MODELS_DIR, load_model

ROOT = Path(__file__).resolve().parents[1]
FOLDER = MODELS_DIR / "stories"
pytestmark = pytest.mark.skipif(not (FOLDER / "tasks").is_dir(), reason="the stories model is not shipped in this checkout")


def _pick(page: str, task: str, index: int) -> tuple[AppTest, tasks.Pair]:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=300)
    at.session_state[ui.MODEL] = "stories"
    at.run()
    assert not at.exception
    at.selectbox(key="w.task").select(task).run()
    at.number_input(key="w.task_pair").set_value(index).run()
    at.button(key="w.task_use").click().run()
    assert not at.exception, at.exception
    return at, tasks.load(FOLDER, task).pairs[index]


def test_patching_opens_the_picked_pair_with_its_answer_and_wrong_token():
    at, pair = _pick("4_Patching.py", "pronoun", 3)
    assert (at.session_state[ui.CLEAN], at.session_state[ui.CORRUPTED]) == (pair.clean, pair.corrupted)
    assert at.text_area(key="w.clean").value == pair.clean and at.text_area(key="w.corrupted").value == pair.corrupted
    assert (at.text_input(key="w.answer_typed").value, at.text_input(key="w.wrong_typed").value) == (pair.answer, pair.wrong)


def test_graph_opens_the_picked_prompt_at_its_last_position():
    at, pair = _pick("7_Graph.py", "capital", 5)
    assert at.session_state[ui.PROMPT] == pair.clean and at.text_area(key="w.prompt").value == pair.clean
    position = at.selectbox(key="w.position")
    assert position.value == len(position.options) - 1  # the prediction the pair is about: after its last token
    assert position.options[-1].endswith(pair.clean.split()[-1])
    assert any(i.value == pair.answer for i in at.text_input)


def test_intervene_opens_the_picked_prompt_with_the_logit_difference():
    at, pair = _pick("9_Intervene.py", "ioi", 7)
    assert at.session_state[ui.PROMPT] == pair.clean
    assert "logit difference" in [s.value for s in at.selectbox]
    assert {pair.answer, pair.wrong} <= {i.value for i in at.text_input}


def test_pages_of_a_model_without_task_datasets_show_no_picker():
    at = AppTest.from_file(str(ROOT / "pages" / "4_Patching.py"), default_timeout=300)
    at.session_state[ui.MODEL] = "circuits"
    at.run()
    assert not at.exception
    assert not [s for s in at.selectbox if s.key == "w.task"]


def test_the_scoreboard_scores_a_task_dataset_by_its_first_pairs_of_one_length():
    model = load_model("stories")
    assert set(tasks.TASKS) <= set(scoreboard.tasks_of(model))
    pairs = scoreboard.task_pairs(model, "ioi", 6)
    data = tasks.load(FOLDER, "ioi").pairs
    tok = model.tokenizer
    n = len(tok(data[0].clean)["input_ids"])
    expected = [p for p in data if len(tok(p.clean)["input_ids"]) == n][:6]
    assert len(pairs) == 6 and [s.clean for s in pairs] == [p.clean for p in expected]
    # the answer and wrong ids the pairs resolve to are the tokenizer's own single tokens for the dataset's strings
    assert [s.ids(tok) for s in pairs] == [tuple(tok(x)["input_ids"][0] for x in (p.answer, p.wrong)) for p in expected]
    assert scoreboard.tasks_of(load_model("circuits")) == scoreboard.TASKS


def test_the_scoreboard_probe_takes_a_task_dataset(tmp_path):
    import json

    from probes.__main__ import main

    assert main(["scoreboard", "--model", "stories", "--task", "pronoun", "--pairs", "2", "--out", str(tmp_path), "--formats", "html"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["settings"]["task"] == "pronoun"
    rows = manifest["scoreboard"]
    assert {r["method"] for r in rows} >= {"exact", "AtP*", "EAP-IG"}
    # a model without the dataset gets one readable line, exit 2
    assert main(["scoreboard", "--model", "circuits", "--task", "pronoun", "--out", str(tmp_path / "x")]) == 2
