"""Every probe end to end on the shipped models, with small settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probes.__main__ import main as probes_main
from workbench import attention, export, lens, patching, tasks
from workbench.runs import hook_names, run_prompt

ROOT = Path(__file__).resolve().parents[1]
HAVE_BROWSER = export.browser() is not None


def _run(tmp_path, *argv):
    out = tmp_path / argv[0]
    assert probes_main([*argv, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["versions"]["torch"]
    for name in manifest["files"]:
        path = out / name
        assert path.exists() and path.stat().st_size > 0
        if name.endswith(".json"):
            json.loads(path.read_text())
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if name.endswith(".svg"):
            assert "<svg" in path.read_text()[:500]
    return out, manifest


def test_listing_and_unknown_probe(capsys):
    assert probes_main([]) == 0
    assert "induction-study" in capsys.readouterr().out
    assert probes_main(["nope"]) == 2


def test_heads_probe_matches_the_app(tmp_path, english):
    prompt = "The whale, the whale!"
    out, manifest = _run(tmp_path, "heads", "--model", "english", "--prompt", prompt, "--repeat-n", "20")
    if HAVE_BROWSER:
        assert "head-types-prompt0.png" in manifest["files"] and "head-types-prompt0.svg" in manifest["files"]
    saved = json.loads((out / "head-types-prompt0.json").read_text())
    app = attention.head_types(english, run_prompt(english, prompt, hook_names(english, "attn.hook_pattern")))
    assert torch.allclose(
        torch.tensor(saved["scores"]["induction"], dtype=torch.float32).nan_to_num(), app.scores["induction"].nan_to_num(), atol=1e-6
    )


def test_lens_probe_writes_both_lenses(tmp_path, english):
    prompt = "My dear sister,"
    out, manifest = _run(tmp_path, "lens", "--model", "english", "--prompt", prompt, "--target", " I", "--formats", "html")
    saved = json.loads((out / "logit-lens-prompt0.json").read_text())
    assert torch.allclose(torch.tensor(saved["entropy"]), lens.lens(english, prompt).entropy, atol=1e-5)
    assert "tuned-lens-prompt0.json" in manifest["files"]


def test_patching_probe_one_pair_and_a_dataset(tmp_path, circuits):
    out, manifest = _run(tmp_path, "patching", "--model", "circuits", "--site", "z", "--formats", "html")
    saved = json.loads((out / "patching-z.json").read_text())
    app = patching.sweep(circuits, tasks.Pair(
        "apple river stone cloud tiger piano candle garden apple river stone",
        "apple river stone lemon tiger piano candle garden apple river stone",
        circuits.tokenizer(" cloud")["input_ids"][0], circuits.tokenizer(" lemon")["input_ids"][0]), "z")  # fmt: skip
    assert torch.allclose(torch.tensor(saved["values"]), app.values, atol=1e-6)
    assert manifest["correlation_estimate_exact"]["z"] > 0.8
    spec = tmp_path / "pairs.yaml"
    spec.write_text(
        "model: circuits\nsites: [resid_pre]\npairs:\n"
        "  - {clean: ' apple river stone apple river', corrupted: ' apple lemon stone apple river', answer: ' stone', wrong: ' tiger'}\n"
        "  - {clean: ' piano candle garden piano candle', corrupted: ' piano lemon garden piano candle', answer: ' garden', wrong: ' tiger'}\n"
    )
    out, _ = _run(tmp_path, "patching", "--spec", str(spec), "--formats", "html")
    saved = json.loads((out / "patching-resid_pre-dataset.json").read_text())
    assert saved["n_pairs"] == 2 and len(saved["std"]) == 2


def test_attribution_and_attention_probes(tmp_path):
    _run(
        tmp_path,
        "attribution",
        "--model",
        "circuits",
        "--prompt",
        "apple river stone apple river",
        "--method",
        "integrated gradients",
        "--steps",
        "8",
        "--formats",
        "html",
    )
    _run(
        tmp_path,
        "attention",
        "--model",
        "circuits",
        "--prompt",
        "apple river stone apple river",
        "--layer",
        "1",
        "--head",
        "0",
        "--formats",
        "html",
    )


def test_induction_study_writes_a_report(tmp_path):
    out, manifest = _run(tmp_path, "induction-study", "--model", "answer-key", "--pairs", "4")
    report = (out / "report.md").read_text()
    assert "## 1. Head scan" in report and "## Conclusion" in report
    assert manifest["findings"]["agree"], manifest["findings"]


def test_bad_input_exits_non_zero_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "probes", "patching", "--model", "circuits", "--corrupted", "apple", "--out", str(tmp_path / "x")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "same number of tokens" in errors[0]


@pytest.mark.parametrize("argv", [["lens", "--model", "/no/such/model"], ["heads", "--spec", "/no/such/spec.json"]])
def test_bad_model_or_spec_is_one_message(argv, capsys, tmp_path):
    assert probes_main([*argv, "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.count("error:") == 1


def test_ctrl_c_keeps_the_finished_part(tmp_path):
    import signal
    import time

    out = tmp_path / "study"
    proc = subprocess.Popen(
        # 4,096 pairs: the patching stage runs for minutes, so the signal always lands inside it
        [sys.executable, "-m", "probes", "induction-study", "--pairs", "4096", "--out", str(out), "--formats", "html"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "1-head-types.json").exists():
        time.sleep(0.2)
    assert (out / "1-head-types.json").exists(), "the probe wrote nothing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    manifest = json.loads((out / "manifest.json").read_text())
    assert proc.returncode == 130 and "interrupted" in err
    assert manifest["status"] == "interrupted" and "1-head-types.json" in manifest["files"]
    json.loads((out / "1-head-types.json").read_text())


def test_a_probe_without_a_prompt_takes_the_models_example_and_notes_unknown_words(tmp_path, capsys):
    from workbench import examples

    _, manifest = _run(tmp_path, "lens", "--model", "stories", "--formats", "html")
    assert manifest["settings"]["prompts"] == [examples.prompt("stories", "lens")] == ["The capital of Sourk is"]
    assert "does not know" not in capsys.readouterr().err
    _run(tmp_path / "typed", "lens", "--model", "stories", "--prompt", "The whale of Sourk is", "--formats", "html")
    assert "stories does not know 'whale'" in capsys.readouterr().err
