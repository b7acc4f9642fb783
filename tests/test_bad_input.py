"""Every bad input gets one clear message, through the Python API, the probes and the pages.

The table: (what, a call that must raise InputError, words the message must contain). Then the
same inputs through a probe (exit 2, one line) and through the pages (an error shown, no
exception, the input kept), and hypothesis fuzzing of the prompt and prompt-pair entries.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from probes.__main__ import main as probes_main
from workbench import attention, attribution, generate, heads, lens, patching, runs, tasks
from workbench.errors import InputError
from workbench.model import MODELS_DIR, load_model, resolve
from workbench.tokens import single_token_id

ROOT = Path(__file__).resolve().parents[1]
LONG = " ".join(["word"] * 3000)
CLEAN = "apple river stone cloud apple river"


def _folder(tmp_path, *, weights: str) -> str:
    """A copy of the circuits model folder with its weights replaced by something bad."""
    for f in (MODELS_DIR / "circuits").iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    if weights == "pickle":
        torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    elif weights == "corrupt":
        (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file" * 50)
    elif weights == "unreadable":
        (tmp_path / "model.safetensors").mkdir()  # as root, chmod cannot make a file unreadable; a folder can't be read as one
    elif weights == "wrong":
        save_file({"unrelated": torch.zeros(3)}, tmp_path / "model.safetensors")
    return str(tmp_path)


CASES = [
    ("empty prompt", lambda m, t: runs.run_prompt(m["english"], ""), "empty"),
    ("whitespace prompt", lambda m, t: runs.run_prompt(m["english"], " \n\t  "), "empty"),
    ("prompt far beyond the context", lambda m, t: runs.run_prompt(m["english"], LONG), "context is 256"),
    ("control characters", lambda m, t: runs.run_prompt(m["english"], "bell \x07 here"), "control character"),
    ("lone surrogate", lambda m, t: runs.run_prompt(m["english"], "a \udc80 b"), "not valid Unicode"),
    ("invalid UTF-8 bytes", lambda m, t: runs.run_prompt(m["english"], b"\xc3\x28 bytes"), "not valid UTF-8"),
    ("not text at all", lambda m, t: runs.run_prompt(m["english"], ["a list"]), "must be text"),
    (
        "pair of different token lengths",
        lambda m, t: patching.sweep(m["circuits"], tasks.Pair(CLEAN, CLEAN + " tiger", 5, 6)),
        "same number of tokens",
    ),
    ("answer of several tokens", lambda m, t: single_token_id(m["english"].tokenizer, " unquestionably"), "not one"),
    ("empty answer token", lambda m, t: single_token_id(m["english"].tokenizer, ""), "type the answer token"),
    ("layer out of range", lambda m, t: attention.head_anatomy(m["circuits"], CLEAN, 7, 0, 1), "layer 7 does not exist"),
    ("head out of range", lambda m, t: attention.head_anatomy(m["circuits"], CLEAN, 0, 9, 1), "head 9 does not exist"),
    ("position out of range", lambda m, t: attention.token_focus(attention.patterns(m["circuits"], CLEAN), 40), "outside the prompt"),
    (
        "negative position out of range",
        lambda m, t: runs.next_token_topk(m["circuits"], runs.run_prompt(m["circuits"], CLEAN), position=-40),
        "outside the prompt",
    ),
    (
        "NaN temperature",
        lambda m, t: generate.generate(m["english"], "Hi", generate.Sampling(greedy=False, temperature=math.nan)),
        "temperature",
    ),
    (
        "negative temperature",
        lambda m, t: generate.generate(m["english"], "Hi", generate.Sampling(greedy=False, temperature=-1.0)),
        "temperature",
    ),
    ("negative top-k", lambda m, t: generate.generate(m["english"], "Hi", generate.Sampling(top_k=-3)), "top-k"),
    ("NaN top-p", lambda m, t: generate.generate(m["english"], "Hi", generate.Sampling(top_p=math.nan)), "top-p"),
    ("zero new tokens", lambda m, t: generate.generate(m["english"], "Hi", generate.Sampling(max_new_tokens=0)), "max_new_tokens"),
    ("negative IG steps", lambda m, t: attribution.input_attribution(m["english"], "Hi", attribution.Answer((5,)), steps=-4), "steps"),
    (
        "unknown attribution method",
        lambda m, t: attribution.input_attribution(m["english"], "Hi", attribution.Answer((5,)), method="vibes"),
        "unknown method",
    ),
    (
        "unknown patching site",
        lambda m, t: patching.sweep(m["circuits"], tasks.Pair(CLEAN, CLEAN, 5, 6), "neurons"),
        "unknown site",
    ),
    (
        "unknown patching metric",
        lambda m, t: patching.sweep(m["circuits"], tasks.Pair(CLEAN, CLEAN, 5, 6), metric="accuracy"),
        "unknown metric",
    ),
    ("lens k of zero", lambda m, t: lens.lens(m["english"], "Hi", k=0), "k must be"),
    ("lens target outside the vocabulary", lambda m, t: lens.lens(m["english"], "Hi", tracked=[-1]), "outside the vocabulary"),
    ("repeat probe too long for the context", lambda m, t: heads.repeat_scores(m["circuits"], n=500), "n must be between"),
    ("missing model folder", lambda m, t: load_model(str(t / "nowhere")), "no model folder"),
    ("a file, not a folder", lambda m, t: load_model(str(MODELS_DIR / "circuits" / "config.json")), "is a file"),
    ("folder with a pickle checkpoint", lambda m, t: load_model(_folder(t, weights="pickle")), "pickle"),
    ("corrupt safetensors", lambda m, t: load_model(_folder(t, weights="corrupt")), "could not load"),
    ("unreadable weights", lambda m, t: load_model(_folder(t, weights="unreadable")), "could not load"),
    ("hub model not in the cache", lambda m, t: load_model("someone/nothing-here"), "not in the local Hugging Face cache"),
    ("unknown device", lambda m, t: load_model("circuits", device="tpu"), "unknown device"),
    ("unknown dtype", lambda m, t: load_model("circuits", dtype="int3"), "unknown dtype"),
    ("NUL in a model name", lambda m, t: load_model("a\x00b"), "NUL"),
]


@pytest.mark.parametrize("what, call, words", CASES, ids=[c[0] for c in CASES])
def test_api_gives_one_clear_message(what, call, words, english, circuits, tmp_path):
    with pytest.raises(InputError) as err:
        call({"english": english, "circuits": circuits}, tmp_path)
    message = str(err.value)
    assert words in message and "\n" not in message and "Traceback" not in message


def test_emoji_and_cjk_are_fine(english):
    run = runs.run_prompt(english, "雪が降る 🙂 snow")
    assert run.n_tokens > 6 and any(label.startswith("⟨") for label in run.labels)


def test_model_root_keeps_paths_inside(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    root = (tmp_path / "models").resolve()
    with pytest.raises(InputError, match="outside"):
        resolve("../..", root)
    with pytest.raises(InputError, match="outside"):
        resolve(str(MODELS_DIR / "circuits"), root)
    assert resolve("circuits", root)[2] == "shipped"
    with pytest.raises(InputError, match="under"):
        resolve("gpt2", root)
    monkeypatch.setenv("WORKBENCH_MODEL_ROOT", str(root))
    with pytest.raises(InputError, match="outside"):
        load_model("/etc")


def test_memory_budget_refuses_and_says_what_fits(english, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_MB", "1")
    with pytest.raises(InputError, match=r"up to about \d+ tokens fits"):
        runs.run_prompt(english, "It was a dark and stormy night, " * 20, runs.all_hook_names(english))
    monkeypatch.delenv("WORKBENCH_MEMORY_MB")
    full = " ".join(["word"] * 300)
    run = runs.run_prompt(english, full, runs.all_hook_names(english), truncate=True)  # the whole context fits by default
    assert run.n_tokens == english.info.n_ctx


@pytest.mark.parametrize(
    "argv, words",
    [
        (["lens", "--model", "/no/such/folder"], "no model folder"),
        (["lens", "--prompt", "   "], "empty"),
        (["lens", "--model", "english", "--target", " unquestionably"], "not one"),
        (["lens", "--target", " unquestionably"], "not in the model's vocabulary"),  # the default, word-level stories model
        (["attention", "--model", "circuits", "--prompt", "apple river", "--layer", "9"], "layer 9"),
        (["patching", "--corrupted", "apple"], "same number of tokens"),
        (["attribution", "--steps", "-2"], "steps"),
    ],
)
def test_probes_exit_2_with_one_line(argv, words, capsys, tmp_path):
    assert probes_main([*argv, "--out", str(tmp_path / "out"), "--formats", "html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0]


def test_probe_spec_that_is_not_a_mapping(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(["a", "list"]))
    assert probes_main(["heads", "--spec", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "must be a mapping" in capsys.readouterr().err


@pytest.mark.parametrize(
    "page, widget, value, words, button",
    [
        ("app.py", "w.prompt", "  ", "empty", "Run"),
        ("pages/1_Attention.py", "w.prompt", "nul \x00 here", "control character", "Run"),
        ("pages/2_Logit_lens.py", "w.prompt", LONG, "context is 256", "Run"),
        ("pages/3_Attribution.py", "w.prompt", "\n\n\n", "empty", "Run"),
        ("pages/5_Compare.py", "w.prompt_b", "", "empty", "Compare"),
    ],
)
def test_pages_show_the_message_and_keep_the_input(page, widget, value, words, button):
    at = AppTest.from_file(str(ROOT / page), default_timeout=180)
    at.session_state["wb.model"] = "english"
    at.run()
    at.text_area(key=widget).set_value(value)
    next(b for b in at.button if b.label == button).click()
    at.run()
    assert not at.exception, at.exception
    assert any(words in e.value for e in at.error)
    assert at.text_area(key=widget).value == value


def test_patching_page_with_prompts_of_different_lengths():
    at = AppTest.from_file(str(ROOT / "pages/4_Patching.py"), default_timeout=180)
    at.session_state["wb.model"] = "circuits"
    at.session_state["wb.clean"], at.session_state["wb.corrupted"] = CLEAN, CLEAN + " tiger"
    at.run()
    assert not at.exception
    assert any("same number of tokens" in e.value for e in at.error)
    assert at.text_area(key="w.corrupted").value == CLEAN + " tiger"


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.text(max_size=80))
def test_fuzzed_prompts_run_or_get_a_message(circuits, prompt):
    try:
        run = runs.run_prompt(circuits, prompt)
    except InputError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert run.n_tokens >= 2 and torch.isfinite(run.logits).all()


@FUZZ
@given(st.text(max_size=40), st.text(max_size=40))
def test_fuzzed_prompt_pairs_check_or_get_a_message(circuits, clean, corrupted):
    try:
        a, b, _ = tasks.check_pair(circuits, tasks.Pair(clean, corrupted, 5, 6))
    except InputError as err:
        assert str(err)
    else:
        assert len(a) == len(b)
