"""One word for one idea: every page's words (not only its widget labels) read against docs/glossary.md.

Each page runs in AppTest on the default model and on the English and circuits models (their pages differ: SAEs, a
held-out text, a generator of copying pairs); every text it shows is read: the View's title and caption, markdown,
captions, info/warning/error/success texts, headers, widget labels, help texts, placeholders and options, expander
and tab labels, metric labels, and figure titles and axis titles. The words the glossary's "not" column chose
against are refused wherever they would stand for the chosen word; the few other meanings they keep are listed
below, each with the idea it stands for. The issue's double meanings (#25: mean ablation, node/edge/faithfulness,
preview, path, original/changed) are checked one by one, in the pages, in the results' fields and in the class names.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "docs" / "glossary.md"
PAGES = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))]
MODELS = ("stories", "english", "circuits")  # the default model, and the two whose pages differ
FIELDS = ("label", "body", "help", "placeholder")  # the proto fields that hold words shown to a user


# ---- the glossary's avoided words --------------------------------------------------------------------------


def avoided_words() -> dict[str, str]:
    """{avoided word (lower case): the chosen word} from every glossary table with a "not" column.

    A row whose meaning is "*not used*" (target) makes its own word avoided."""
    out: dict[str, str] = {}
    header: list[str] | None = None
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line) <= set("|- "):
            continue
        chosen = " / ".join(re.findall(r"\*\*([^*]+)\*\*", cells[0])) or cells[0]
        if len(cells) > 1 and cells[1].startswith("*not used*"):
            out[chosen.lower()] = "(not used)"
        if "not" in header and len(cells) > header.index("not"):
            for word in re.findall(r'"([^"]+)"', cells[header.index("not")]):
                out.setdefault(word.lower(), chosen)
    return out


# Words of the "not" column that stay common English in other senses: not matched mechanically (the reason given).
GENERIC = {
    "token": "the vocabulary item everywhere; the glossary refuses it only for a position",
    "layer": "a transformer block everywhere; the glossary refuses it only for a lens point",
    "text": "held-out text, a piece of text, continue the text: the glossary refuses it only for a prompt",
    "activation": "a feature's activation, max activation: the glossary refuses it only for a patching site",
    "b": "a single letter (Compare's prompts A and B); refused only for the corrupted prompt",
}

# Other meanings an avoided word keeps on the pages: regular expressions over the surrounding text.
ALLOWED = {
    "input": [
        r"input tokens",
        r"input × gradient",
        r"metric\(input\)",
        r"position \(input token\)",  # attribution's input tokens
        r"projection's input",
        r"heads' inputs",
        r"nodes' input",
    ],  # a unit's input
    "word": [
        r"replacing a word",
        r"word in the clean prompt",
        r"differing word",
        r"sequence of words",
        r"random words",
    ],  # a word: one or more tokens
    "score": [
        r"head'?s? scores?",
        r"induction score",
        r"score \(",
        r"\bscores? (of|at)\b",  # head scores
        r"replacement score",
        r"\bscore (cheap|the)\b",
        r"edge scores",
    ],  # the replacement score; scoring methods; MIB's
    "original": [
        r"\boriginal\b.{0,30}\bedited\b",
        r"\bedited\b.{0,30}\boriginal\b",
        r"\*\*original:?\*\*",
        r", original\b",
        r"original ‖",
        r"the original top token",
        r"with the original",
    ],  # the Intervene and Features pages' original run
    "source": [r"source run"],  # patching methods' source run
    "component": [
        r"(random|named|other|model) components",
        r"components \(direct logit",
    ],  # what writes into the residual stream (heads, MLPs)
    "link": [r"in the link", r"a link", r"the link'?s?"],  # a page's URL
    "knock out": [r"knock out"],
    "hook": [r"model's own hooks"],  # a hook of the model (transformer-lens's), not a site
    "cell": [r"preview ranks cells"],  # the Methods page naming the Patching page's cells  # "fine in prose" (the glossary)
    "sequence": [r"repeated sequence", r"sequences? of (\d+ )?random", r"random sequences", r"\d+ sequences"],  # not a prompt
    "preview": [r"the patching page's preview"],  # where the Methods page says its ranking is not the preview
    "path": [r"path patching", r"chosen paths", r"these paths"],  # path patching's own ("these paths": its MIB download)
    "changed": [r"what changed"],  # prose (the Training page), not the name of the edited run
    "clean": [r"\bclean: '", r"\bclean run's"],  # a task pair picked on the Intervene page; the Graph's patterns held at the clean run's
    "corrupted": [r"\bcorrupted: '"],
}
# Words avoided on some pages only: the glossary's "not" for a word that is another page's own (page stems).
ONLY_ON = {
    "clean": ("8_Features", "9_Intervene", "7_Graph"),  # patching's words: the original and edited runs are one prompt
    "corrupted": ("8_Features", "9_Intervene", "7_Graph"),
    "preview": tuple(Path(p).stem for p in PAGES if not p.endswith("4_Patching.py")),  # the Patching page's cell estimate only
    "patch": ("9_Intervene", "8_Features"),  # an edit is not a patch
    "cell": ("10_Methods", "7_Graph"),  # nodes there, not a site's cells
}


# ---- every text a page shows --------------------------------------------------------------------------------


def _walk(node, out: list[tuple[str, str]]) -> None:
    proto = getattr(node, "proto", None)
    if proto is not None and hasattr(proto, "ListFields"):
        kind = type(node).__name__
        for f, v in proto.ListFields():
            if f.name in FIELDS and isinstance(v, str) and v:
                out.append((f"{kind}.{f.name}", v))
            elif f.name == "options" and len(v) and all(isinstance(o, str) for o in v):
                out += [(f"{kind}.option", o) for o in v]
            elif f.name in ("expandable", "tab") and getattr(v, "label", ""):
                out.append((f.name, v.label))
            elif f.name == "spec" and isinstance(v, str):
                layout = json.loads(v).get("layout", {})
                titled = {k: a for k, a in layout.items() if k.startswith(("xaxis", "yaxis")) and isinstance(a, dict)} | {"figure": layout}
                for k, a in titled.items():
                    title = a.get("title")
                    text = title.get("text") if isinstance(title, dict) else title
                    if text:
                        out.append((f"{k}.title", text))
    children = getattr(node, "children", None)
    for child in children.values() if isinstance(children, dict) else ():
        _walk(child, out)


@cache
def page_words(page: str, model: str) -> tuple[tuple[str, str], ...]:
    """(where, text) for every text `page` shows on `model`, without its HTML token chips (they show the prompt's tokens)."""
    at = AppTest.from_file(str(ROOT / page), default_timeout=300)
    at.session_state["wb.model"] = model
    at.run()
    assert not at.exception, (page, model, at.exception)
    if page.endswith("8_Features.py") and at.get("form_submit_button"):
        next(b for b in at.get("form_submit_button") if b.proto.label == "Regenerate").click().run()  # the original and edited runs
        assert not at.exception, (page, model, at.exception)
    # what a click adds, where it takes a second on the small model: the exact sweep beside the preview, the head sweep
    clicks = {"4_Patching": "w.run_exact", "9_Intervene": "w.run_head_sweep"}
    if model == "circuits" and Path(page).stem in clicks:
        at.button(key=clicks[Path(page).stem]).click().run()
        assert not at.exception and not at.error, (page, model, at.exception, at.error)
    out: list[tuple[str, str]] = []
    _walk(at._tree, out)
    return tuple((where, text) for where, text in out if not text.lstrip().startswith("<div"))


def offences(words, avoided: dict[str, str], page: str = "") -> list[str]:
    """Each use of an avoided word that none of ALLOWED's other meanings covers, as 'where: word (say chosen) in «text»'."""
    found = []
    for where, text in words:
        low = text.lower()
        for word, chosen in avoided.items():
            if word in GENERIC or (word in ONLY_ON and Path(page).stem not in ONLY_ON[word]):
                continue
            covered = [m.span() for pattern in ALLOWED.get(word, ()) for m in re.finditer(pattern, low)]
            for m in re.finditer(rf"(?<![\w-]){re.escape(word)}s?(?![\w-])", low):  # and its plural
                if not any(a <= m.start() and m.end() <= b for a, b in covered):
                    found.append(f"{where}: {word!r} (say {chosen}) in «{text[max(0, m.start() - 40) : m.end() + 40]}»")
    return found


# ---- the tests ------------------------------------------------------------------------------------------------


def test_the_glossary_names_the_words_it_chose_against():
    avoided = avoided_words()
    # one from each table with a "not" column, and the word not used at all
    for word, chosen in [("input", "prompt"), ("target token", "tracked token"), ("restoration", "normalised effect"),
                         ("performance", "faithfulness"), ("vertex", "node"), ("relevance", "importance"),
                         ("changed", "original run / edited run"), ("path", "path patching"),
                         ("target", "(not used)")]:  # fmt: skip
        assert avoided.get(word) == chosen, (word, avoided.get(word))
    assert set(GENERIC) <= set(avoided), "a GENERIC word the glossary no longer avoids: remove it"
    assert set(ALLOWED) <= set(avoided), "an ALLOWED word the glossary no longer avoids: remove it"


def test_offences_are_found_and_other_meanings_pass():
    avoided = {"target": "(not used)", "original": "clean", "score": "metric"}
    words = [("Markdown.body", "the target token"), ("Caption.body", "the original run and the edited run"),
             ("Caption.body", "the original prompt"), ("Selectbox.label", "every head's score at each checkpoint")]  # fmt: skip
    found = offences(words, avoided)
    assert len(found) == 2 and "'target'" in found[0] and "original prompt" in found[1]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: Path(p).stem)
def test_every_page_uses_the_glossarys_words(page):
    avoided = avoided_words()
    found = [f"[{model}] {o}" for model in MODELS for o in offences(page_words(page, model), avoided, page)]
    assert not found, "\n".join(found)


def _texts(page: str, *models: str) -> str:
    return "\n".join(text for model in models or MODELS for _, text in page_words(page, model))


def test_each_mean_ablation_names_its_reference_on_the_page():
    """The graph's mean is over random-token runs, the Intervene page's over held-out text: each page says which."""
    from workbench import edit_values, graph_faithfulness
    from workbench.model import load_model

    graph_text = _texts("pages/7_Graph.py")
    assert graph_faithfulness.ablation_reference("mean") in graph_text and "random-token runs" in graph_text
    english, circuits = load_model("english"), load_model("circuits")
    intervene = _texts("pages/9_Intervene.py", "english")
    assert edit_values.mean_reference(english) in intervene and "held-out text" in edit_values.mean_reference(english)
    assert edit_values.mean_reference(circuits) in _texts("pages/9_Intervene.py", "circuits")  # a model without held-out text says so
    # no option or edit reads a bare "mean" without its reference nearby on either page
    for page in ("pages/7_Graph.py", "pages/9_Intervene.py"):
        bare = [(m, w, t) for m in MODELS for w, t in page_words(page, m) if w.endswith(".option") and t.strip() == "mean"]
        assert not bare, bare


def test_mean_ablation_results_record_their_reference(english):
    from workbench import edit_values, graph_faithfulness
    from workbench import intervention_sweeps as ivs
    from workbench import interventions as iv

    prompt = "The cat sat on the mat. The cat"
    mean = iv.intervene(english, prompt, iv.EditSet.parse("ablate head 1.1 mean"))
    assert mean.reference == edit_values.mean_reference(english) and "held-out text" in mean.reference
    given = iv.intervene(english, prompt, iv.EditSet.parse("ablate head 1.1 mean; reference a%20b|c%20d"))
    assert given.reference == "mean over 2 given reference prompt(s)"
    assert iv.intervene(english, prompt, iv.EditSet.parse("ablate head 1.1 zero")).reference == ""
    sweep = ivs.ablation_sweep(english, prompt, iv.Metric("probability", english.tokenizer(" cat")["input_ids"][0]), "mean")
    assert sweep.reference == mean.reference
    f = graph_faithfulness.faithfulness_of(english, prompt, ablation="mean")
    assert f.reference == graph_faithfulness.ablation_reference("mean") and "random-token" in f.reference and f.reference != mean.reference
    assert f.reference in f.verdict
    assert graph_faithfulness.faithfulness_of(english, prompt, ablation="zero").reference == "zero"


def test_each_page_says_which_nodes_edges_and_faithfulness_it_shows():
    flow = _texts("pages/7_Graph.py")
    assert "Nodes here are the residual stream at one point and position" in flow and "0 is everything ablated" in flow
    methods = _texts("pages/10_Methods.py", "english")  # the scoreboard runs at once on the English model
    assert "Nodes here are a head's queries, keys or values and an MLP's output" in methods
    assert "0 the base run, 1 the source run" in methods
    glossary = GLOSSARY.read_text(encoding="utf-8")
    for word in ("node", "edge", "faithfulness"):  # one definition each, however many tables use the word
        assert len(re.findall(rf"^\| \*\*{word}\*\* \|", glossary, re.M)) == 1, word


def test_preview_is_the_patching_pages_cell_estimate_only():
    """Elsewhere the word is refused (ONLY_ON); the Methods page's AtP* ranks nodes and says so."""
    patching = _texts("pages/4_Patching.py")
    assert "Preview: AtP*" in patching and "whatever the number of cells" in patching
    methods = _texts("pages/10_Methods.py", "english")
    assert "**AtP\\* on nodes**: its ranking of the nodes" in methods
    assert offences([("Markdown.body", "AtP* as the preview")], {"preview": "attribution patching"}, "pages/10_Methods.py")


def test_the_run_without_and_with_edits_is_original_and_edited_everywhere():
    for page in ("pages/8_Features.py", "pages/9_Intervene.py"):
        text = _texts(page, "english")
        assert re.search(r"\bOriginal\b", text) and re.search(r"\bEdited\b", text), page
        assert not re.search(r"\*\*changed\*\*|\bchanged run\b|^changed$", text, re.I | re.M), page


def test_steering_files_are_written_file_and_path_still_reads():
    from workbench import interventions as iv

    edits = iv.EditSet.parse("steer 1 2 file file=v.npy")
    assert str(edits) == "steer 1 2 file file=v.npy" and edits.edits[0].file == "v.npy"
    assert iv.EditSet.parse("steer 1 2 file path=v.npy") == edits  # older links
    spec = json.dumps(edits.to_dict())
    assert '"file": "v.npy"' in spec and '"path"' not in spec
    assert iv.EditSet.from_dict(json.loads(spec.replace('"file": "v.npy"', '"path": "v.npy"'))) == edits  # older spec files


# names that stay in two modules, each for one idea (the listed double meanings are renamed: graph_parts.Update, graph.Rescale,
# graph_faithfulness.faithfulness_of); a new class name defined twice fails here until it is renamed or listed with its reason
SHARED_CLASS_NAMES = {
    "Edge": "one idea, two kinds of node (docs/glossary.md: edge): graph.Edge between residual-stream nodes, edges.Edge sender → receiver",
    "Intervention": "one idea, a run without and with edits (original and edited): interventions (the Features view's too), attribution_graph",
    "Recipe": "each model's training recipe (train/)",
    "Trainer": "each dictionary's trainer (train/)",
}


def test_a_class_name_means_one_thing():
    defined: dict[str, list[str]] = {}
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                defined.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    twice = {name: where for name, where in defined.items() if len(where) > 1}
    assert set(twice) <= set(SHARED_CLASS_NAMES), {n: w for n, w in twice.items() if n not in SHARED_CLASS_NAMES}
    from workbench import graph, graph_faithfulness, interventions

    # "check" is an edit set's check; the graph's is faithfulness_of
    assert not hasattr(graph, "check") and not hasattr(graph_faithfulness, "check") and callable(interventions.check)


def test_result_fields_use_the_settled_words():
    """No class field is named after a word the glossary settled elsewhere: a compute route is a `backend`, a steering vector's
    file a `file` ("path" is path patching's), a continuation's differing tokens `differs` (not "changed", a run's name)."""
    fields = {}
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        fields.setdefault(item.target.id, []).append(f"{path.relative_to(ROOT)}:{node.name}")
    assert not [where for word in ("path", "changed", "changed_labels") for where in fields.get(word, [])]
    assert {"workbench/patching.py:PatchResult", "workbench/intervention_sweeps.py:AblationSweep"} <= set(fields["backend"])
    assert "workbench/interventions.py:Intervention" in fields["differs"]
