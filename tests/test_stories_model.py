"""The shipped stories model: its card's numbers re-measured with plain transformers and our own hooks, its Tasks
page and probe, and the page defaults it makes real."""

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import AutoTokenizer, GPT2LMHeadModel

from workbench import interventions, tasks, ui
from workbench.model import MODELS_DIR
from workbench.train import stories_card

ROOT = Path(__file__).resolve().parents[1]
FOLDER = MODELS_DIR / "stories"
pytestmark = pytest.mark.skipif(not (FOLDER / "card.json").exists(), reason="the stories model is not shipped in this checkout")


@pytest.fixture(scope="module")
def hf():
    return GPT2LMHeadModel.from_pretrained(FOLDER, use_safetensors=True).eval(), AutoTokenizer.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def card():
    return json.loads((FOLDER / "card.json").read_text())["measured"]


def _last_logits(model, tok, prompts):
    ids = torch.tensor([[tok.bos_token_id, *tok(p)["input_ids"]] for p in prompts])
    with torch.no_grad():
        return model(ids).logits[:, -1]


def test_card_task_scores_are_what_plain_transformers_measures(hf, card):
    model, tok = hf
    assert set(card["tasks"]) == set(tasks.TASKS)
    for name, row in card["tasks"].items():
        task = tasks.load(FOLDER, name)
        diffs = []
        for p in task.pairs[:40]:  # one prompt at a time: no batching shared with tasks.score
            logits = _last_logits(model, tok, [p.clean])[0]
            diffs.append((logits[tok(p.answer)["input_ids"][0]] - logits[tok(p.wrong)["input_ids"][0]]).item())
        again = tasks.score(model, tok, tasks.Task(task.name, task.description, task.pairs[:40], task.split))
        assert again.logit_diff == pytest.approx(sum(diffs) / len(diffs), abs=1e-3)
        assert _accuracy_by_hand(model, tok, task) == pytest.approx(row["held_out"]["accuracy"], abs=1.5e-4), name


def _accuracy_by_hand(model, tok, task) -> float:
    """The card's accuracy of a task, one prompt at a time on plain transformers, each task's definition written out:
    greater-than, the probability on year endings above the start year; capitals, the top capital is the answer;
    induction, the top token is the answer; otherwise the answer's logit beats the wrong one's."""
    from workbench.train import stories

    years = [tok(f"{i:02d}")["input_ids"][0] for i in range(100)]
    capitals = [tok(" " + c)["input_ids"][0] for _, c in stories.world().countries]
    hits = []
    for p in task.pairs:
        logits = _last_logits(model, tok, [p.clean])[0]
        answer, wrong = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        if task.name == "greater_than":
            probs = logits[years].softmax(-1)  # (100,)
            hits.append(float(probs[int(p.answer) :].sum()))  # endings above the start year (answer = start + 1)
        elif task.name == "capital":
            hits.append(float(capitals[int(logits[capitals].argmax())] == answer))
        elif task.name == "induction":
            hits.append(float(int(logits.argmax()) == answer))
        else:
            hits.append(float(logits[answer] > logits[wrong]))
    return sum(hits) / len(hits)


def _cut_with_our_hooks(model, tok, task, components) -> float:
    """Resample ablation written apart from the card's: a head's change enters as (z_corrupted - z) @ W_O added to
    c_proj's output (z: the head's output in this run); an MLP's output is swapped in a hook on its own c_proj."""
    d_head = model.config.n_embd // model.config.n_head
    clean_sum = ablated_sum = 0.0
    for p in task.pairs:
        ids = {k: torch.tensor([[tok.bos_token_id, *tok(t)["input_ids"]]]) for k, t in (("clean", p.clean), ("corrupted", p.corrupted))}
        z, mlp = {}, {}
        for which in ("corrupted", "clean"):
            handles = []
            for i, block in enumerate(model.transformer.h):
                handles.append(
                    block.attn.c_proj.register_forward_hook(lambda m, a, o, i=i, w=which, z=z: z.__setitem__((w, i), a[0].detach()))
                )
                handles.append(
                    block.mlp.c_proj.register_forward_hook(lambda m, a, o, i=i, w=which, mlp=mlp: mlp.__setitem__((w, i), o.detach()))
                )
            with torch.no_grad():
                model(ids[which])
            for h in handles:
                h.remove()
        handles = []
        for i, block in enumerate(model.transformer.h):
            heads = [h for kind, layer, h in components if kind == "head" and layer == i]
            if heads:
                w_o = block.attn.c_proj.weight  # (n_head * d_head, d_model), Conv1D: x @ W

                def add_change(m, a, o, i=i, heads=heads, w_o=w_o, z=z):
                    # this run's own head outputs a[0] (earlier ablations included) swapped for the corrupted ones
                    change = z[("corrupted", i)] - a[0]  # (batch, pos, n_head * d_head)
                    return o + sum(change[..., h * d_head : (h + 1) * d_head] @ w_o[h * d_head : (h + 1) * d_head] for h in heads)

                handles.append(block.attn.c_proj.register_forward_hook(add_change))
            if ("mlp", i, -1) in components:
                handles.append(block.mlp.c_proj.register_forward_hook(lambda m, a, o, i=i, mlp=mlp: mlp[("corrupted", i)]))
        with torch.no_grad():
            ablated = model(ids["clean"]).logits[0, -1]
        for h in handles:
            h.remove()
        with torch.no_grad():
            clean = model(ids["clean"]).logits[0, -1]
        a, w = tok(p.answer)["input_ids"][0], tok(p.wrong)["input_ids"][0]
        clean_sum += (clean[a] - clean[w]).item()
        ablated_sum += (ablated[a] - ablated[w]).item()
    return 1 - ablated_sum / clean_sum


def test_named_circuits_cut_the_logit_difference_as_the_card_says(hf, card):
    model, tok = hf
    checked = 0
    for name, row in card["tasks"].items():
        if not row.get("components"):
            continue
        comps = [(c["kind"], c["layer"], c["head"]) for c in row["components"]]
        task = tasks.load(FOLDER, name)
        cut = _cut_with_our_hooks(model, tok, task, comps)
        assert cut == pytest.approx(row["ablation_cut"], rel=1e-3, abs=2e-3), name
        if row["verdict"] == "found":
            assert cut >= 0.5 and row["random_cut"] < 0.2
        checked += 1
    if not checked:
        pytest.skip("the card names no circuit: every task is reported absent (see models/stories/README.md)")


def test_a_mechanism_the_model_lacks_is_reported_absent_not_drawn(card):
    for name, row in card["tasks"].items():
        if row["verdict"].startswith("absent"):
            assert not row.get("components")
        h, target = row["held_out"], stories_card.TARGETS[name][0]
        solved = (h["accuracy"] > 0.5 and h["logit_diff"] > 0.5) or (target is not None and h["accuracy"] >= target)
        assert row["verdict"].startswith("absent") != solved, name


def test_card_quotes_greedy_continuations_of_five_story_openings(hf, card):
    model, tok = hf
    assert list(card["samples"]) == list(stories_card.OPENINGS)
    for prompt, text in card["samples"].items():
        assert text == stories_card.greedy(model, tok, prompt)
    readme = (FOLDER / "README.md").read_text()
    assert all(f"`{p}`" in readme for p in stories_card.OPENINGS)


def test_the_card_reports_the_stories_and_english_run_from_its_own_measurements(card):
    """The run that mixed English in is not shipped: its section and row are what the code wrote from its measurements."""
    from workbench.train import stories_english

    if "mixed" not in card:
        pytest.skip("the stories card was written without the stories-and-English run")
    mixed = card["mixed"]
    readme = (FOLDER / "README.md").read_text()
    assert stories_english.card_text(mixed, card) in readme
    assert set(mixed["tasks"]) == set(card["tasks"])
    english = json.loads((MODELS_DIR / "english" / "card.json").read_text())["measured"]["heldout_sample"]
    assert mixed["english_model_bpc"] == english["bits_per_char"]
    row = next(r for r in card["attempts"] if r["run"] == stories_card.MIXED)
    assert "english_bpc" in row and row["step"] == mixed["steps"]


def test_links_open_the_pair_in_other_pages_with_its_settings():
    task = tasks.load(FOLDER, "ioi")
    pair = task.pairs[0]
    links = tasks.links("stories", pair, [("head", 1, 2), ("mlp", 0, -1)])
    q = {page: {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} for page, url in links.items()}
    assert q["Patching"]["clean"] == pair.clean and q["Patching"]["corrupted"] == pair.corrupted and q["Patching"]["model"] == "stories"
    assert q["Graph"]["prompt"] == pair.clean and q["Graph"]["answer"] == pair.answer
    edits = interventions.EditSet.parse(q["Intervene"]["edits"])
    assert len(edits.edits) == 2 and edits.resample == pair.corrupted


def test_tasks_page_lists_every_task_and_offers_the_links():
    at = AppTest.from_file(str(ROOT / "pages" / "11_Tasks.py"), default_timeout=120)
    at.session_state[ui.MODEL] = "stories"
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["task"]) == list(tasks.TASKS)
    text = " ".join(m.value for m in at.markdown)
    assert "Patching?model=stories" in text and "Intervene?model=stories" in text


def test_tasks_page_on_a_model_without_tasks_says_so():
    at = AppTest.from_file(str(ROOT / "pages" / "11_Tasks.py"), default_timeout=120)
    at.session_state[ui.MODEL] = "circuits"
    at.run()
    assert not at.exception
    assert any("ships no task datasets" in i.value for i in at.info)


def test_tasks_probe_measures_what_the_score_function_does(tmp_path, hf):
    from probes.__main__ import main

    assert main(["tasks", "--model", "stories", "--task", "ioi", "--pairs", "20", "--out", str(tmp_path), "--formats", "html"]) == 0
    rows = json.loads((tmp_path / "tasks.json").read_text())["tasks"]
    model, tok = hf
    task = tasks.load(FOLDER, "ioi")
    plain = tasks.score(model, tok, tasks.Task("ioi", "", task.pairs[:20], "held_out"))
    assert rows[0]["accuracy"] == pytest.approx(plain.accuracy) and rows[0]["logit_diff"] == pytest.approx(plain.logit_diff, abs=1e-3)
    assert main(["tasks", "--model", "circuits", "--out", str(tmp_path / "x")]) == 2


def test_the_stories_defaults_are_task_prompts_of_the_world(hf, card):
    """Patching opens on an IOI pair, the Lens on a capital, Attribution on a pronoun; where the card finds the
    mechanism, the default shows it (answer above wrong)."""
    model, tok = hf
    w = __import__("workbench.train.stories", fromlist=["world"]).world()
    clean, corrupted = ui.EXAMPLE_PAIRS["stories"]
    a, b = tok(clean)["input_ids"], tok(corrupted)["input_ids"]
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1 and tok.unk_token_id not in a + b
    first, second = clean.split()[1], clean.split()[3]  # "When A and B ...": B repeated, A is the indirect object
    io = " " + (first if clean.count(second) == 2 else second)
    lens_prompt = ui.example_prompt("stories", "lens")
    country = lens_prompt.split()[-2]
    capital = " " + w.capital(country)
    pron = ui.example_prompt("stories", "attribution")
    subject = pron.split(". ")[1].split()[0]
    she_he = " " + {"f": "she", "m": "he"}[w.gender(subject)]
    logits = [_last_logits(model, tok, [p])[0] for p in (clean, lens_prompt, pron)]  # lengths differ: one at a time
    checks = {
        "ioi": (logits[0], io, " " + (second if io.strip() == first else first)),
        "capital": (logits[1], capital, None),
        "pronoun": (logits[2], she_he, " " + ({"she": "he", "he": "she"}[she_he.strip()])),
    }
    for name, (row, answer, wrong) in checks.items():
        if card["tasks"][name]["verdict"] == "found":
            target = tok(answer)["input_ids"][0]
            assert wrong is None or row[target] > row[tok(wrong)["input_ids"][0]], name
            if wrong is None:
                caps = [tok(" " + c)["input_ids"][0] for _, c in w.countries]
                assert max(caps, key=lambda i: row[i].item()) == target


def test_the_cards_ablation_equals_ablation_written_apart(hf):
    """Whatever the card names, its resample ablation is checked against the test's own hooks on fixed components."""
    model, tok = hf
    task = tasks.load(FOLDER, "ioi")
    task = tasks.Task(task.name, task.description, task.pairs[:60], task.split)
    comps = [("head", 1, 0), ("head", 0, 3), ("mlp", 0, -1)]
    assert stories_card.ablation_cut(model, tok, task, comps) == pytest.approx(
        _cut_with_our_hooks(model, tok, task, comps), rel=1e-3, abs=2e-3
    )
    assert stories_card.ablation_cut(model, tok, task, []) == pytest.approx(0.0, abs=1e-5)  # nothing ablated, nothing cut


def test_patching_probe_sweeps_a_tasks_pairs(tmp_path):
    from probes.__main__ import main

    argv = ["patching", "--model", "stories", "--task", "ioi", "--task-pairs", "2", "--site", "z", "--formats", "html"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "patching-z-dataset.json").read_text())
    assert "ioi" in json.dumps(json.loads((tmp_path / "manifest.json").read_text())["settings"])
    assert result
    assert main(["patching", "--model", "circuits", "--task", "ioi", "--out", str(tmp_path / "x"), "--formats", "html"]) == 2


def test_the_random_control_ablates_all_the_others_where_the_model_has_fewer(hf):
    """Named components covering almost the whole model leave fewer others than 'as many': the control then ablates
    exactly those others (one possible draw), which ablating them directly must equal."""
    model, tok = hf
    cfg = model.config
    heads = [("head", layer, h) for layer in range(cfg.n_layer) for h in range(cfg.n_head)]
    named = heads[:-2] + [("mlp", layer, -1) for layer in range(cfg.n_layer)]
    assert stories_card.random_size(model, named) == 2
    task = tasks.load(FOLDER, "ioi")
    task = tasks.Task(task.name, task.description, task.pairs[:12], task.split)
    expected = stories_card.ablation_cut(model, tok, task, heads[-2:])
    assert stories_card.random_cut(model, tok, task, named, draws=2) == pytest.approx(expected, abs=1e-6)


def test_the_intervene_page_opens_on_a_story_with_the_cards_pronoun_head_knocked_out(hf):
    """The default model's Intervene page: the story opening, continued, with the head the card finds first for
    pronouns (past layer 0) mean-ablated; the original continuation is plain `transformers`' greedy one."""
    from workbench import examples

    at = AppTest.from_file(str(ROOT / "pages" / "9_Intervene.py"), default_timeout=180)
    at.run()
    assert not at.exception and not at.error
    prompt = examples.prompt("stories", "generate")
    assert at.session_state[ui.MODEL] == "stories" and at.text_area(key="w.prompt").value == prompt
    card = json.loads((FOLDER / "card.json").read_text())["measured"]["tasks"]["pronoun"]["components"]
    heads = [c for c in card if c["kind"] == "head" and c["layer"] > 0]
    assert at.session_state["wb.edits"] == f"ablate head {heads[0]['layer']}.{heads[0]['head']} mean"
    assert any(f"ablate L{heads[0]['layer']}H{heads[0]['head']} (mean)" in m.value for m in at.markdown)
    model, tok = hf
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1) if ids[0, 0] != tok.bos_token_id else ids
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.bos_token_id)[0, ids.shape[1] :]
    words = tok.decode(greedy).split()
    shown = " ".join(m.value for m in at.markdown) + " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))
    assert words and all(w.strip(".,") in shown for w in words[:3])
