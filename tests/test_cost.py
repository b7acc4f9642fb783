"""The cost model against torch's own FLOP counter, the per-model disk cache, and every page's unrequested work.

No test here times anything: work is counted (FLOPs, by torch.utils.flop_counter) and turned into
seconds at the reference machine's speed (cost.reference_calibration, pinned by conftest).
"""

import json
import os
import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_pages
from benchmarks.shapes import build
from workbench import attention, cost, scoreboard, ui
from workbench.cost import calibrate as measured_calibration  # the real one: conftest pins cost.calibrate
from workbench.errors import InputError
from workbench.model import MODELS_DIR, load_model
from workbench.ui import jobs


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


@pytest.mark.parametrize("n", [5, 40])
def test_forward_flops_match_torch_counter(english, n):
    """Counted at 8 and 16 tokens, predicted at others: exact, since attention is quadratic and the rest linear."""
    ids = torch.randint(0, english.info.d_vocab, (1, n), generator=torch.Generator().manual_seed(0))
    assert cost.forward_flops(english, n) == pytest.approx(counted(lambda: english.bridge(ids)), rel=1e-6)
    assert cost.forward_flops(english, n, batch=3) == pytest.approx(3 * cost.forward_flops(english, n))


def test_flops_per_token_are_the_weights_and_the_attention(english):
    """Per token: 2 FLOPs per weight of the unembedding and every block's matrices (however the bridge splits them)."""
    a, b = cost.flops_per_token(english)
    i = english.info
    assert b == pytest.approx(2 * i.n_layers * i.n_heads * i.d_head * 2)  # q·k and weights·v over every key, per key
    unembed = 2 * i.d_model * i.d_vocab
    assert unembed < a < unembed + 2 * i.n_layers * (4 * i.d_model**2 + 2 * i.d_model * i.d_mlp) * 1.01


def test_calibration_measures_this_model(circuits):
    circuits.state.calibration = None
    cal = measured_calibration(circuits)
    assert cal.per_flop > 0 and cal.per_call >= 0 and cal.forward_s > 0
    assert measured_calibration(circuits) is cal  # once per loaded model
    circuits.state.calibration = None


def test_estimate_scales_with_passes_tokens_and_backward(english):
    one = cost.estimate(english, "x", 16)
    assert cost.estimate(english, "x", 16, passes=4, calls=1).seconds == pytest.approx(
        one.seconds + 3 * cost.forward_flops(english, 16) * cost.calibrate(english).per_flop
    )
    both = cost.estimate(english, "x", 16, passes=1, backward=1, calls=1)
    assert both.seconds == pytest.approx(one.seconds + 2 * cost.forward_flops(english, 16) * cost.calibrate(english).per_flop)
    assert "estimated" in both.line() and both.backward_tokens == 16


def test_head_types_on_repeats_come_back_from_disk_unchanged(tmp_path):
    """A local folder keeps them next to itself; a shipped model in the cache folder (its own folder is the package's)."""
    shutil.copytree(MODELS_DIR / "circuits", tmp_path / "circuits", ignore=shutil.ignore_patterns("checkpoints", "sae"))
    model = load_model(str(tmp_path / "circuits"))
    assert attention.stored_head_types_on_repeats(model) is None
    fresh = attention.head_types_on_repeats(model)
    stored = attention.stored_head_types_on_repeats(model)
    assert stored is not None and list(stored.scores) == list(fresh.scores)
    for k in fresh.scores:
        assert torch.equal(stored.scores[k], fresh.scores[k])
    assert stored.source == fresh.source and stored.provenance == fresh.provenance
    files = list(cost.cache_dir(model).glob("*"))
    assert [f.parent.parent for f in files] == [tmp_path / "circuits"] and files[0].suffix == ".safetensors"  # no pickle
    shipped = load_model("circuits")
    assert cost.cache_dir(shipped).is_relative_to(os.environ["WORKBENCH_CACHE"])
    by_path = load_model(str(MODELS_DIR / "circuits"))  # the package's folder, however it is named
    assert cost.cache_dir(by_path).is_relative_to(os.environ["WORKBENCH_CACHE"])


def test_scoreboard_estimate_counts_the_exact_edges(circuits):
    pairs = scoreboard.task_pairs(circuits, "induction pairs", 2)
    one, two = scoreboard.estimate(circuits, pairs[:1], 5), scoreboard.estimate(circuits, pairs, 5)
    assert two.forward_tokens == 2 * one.forward_tokens and two.seconds > one.seconds


@pytest.fixture(scope="module")
def gpt2_small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-small")
    return str(build("gpt2-small", folder))


@pytest.mark.slow
def test_no_page_starts_more_than_the_budget_on_gpt2_small(gpt2_small):
    """Every page opened alone on a GPT-2-small shape: its unrequested work, counted, stays within ~2 s at the reference speed."""
    _, ref_flops, visits, _ = bench_pages.measure(gpt2_small)
    model = ui.cached_model(gpt2_small, trust_remote_code=False, dtype="float32")  # the one the pages ran on
    per_flop = cost.reference_calibration(model).per_flop
    report = json.dumps({v.page: round(v.flops / ref_flops, 1) for v in visits})
    for v in visits:
        assert not v.problems, (v.page, v.problems)
        assert v.flops * per_flop <= 1.25 * cost.BUDGET_S, f"{v.page} starts {v.flops * per_flop:.1f} s of work: {report}"


def test_a_cancelled_scoreboard_stops_with_one_line(circuits):
    """Cancel: the progress callback returns False after the first engine pass, and the scoreboard stops there."""
    pairs = scoreboard.task_pairs(circuits, "induction pairs", 1)
    calls = []

    def cancel(done, total):
        calls.append((done, total))
        return False

    with pytest.raises(InputError, match="the methods scoreboard was cancelled"):
        scoreboard.run(circuits, pairs, progress=cancel)
    assert len(calls) == 1 and calls[0][1] > 10  # stopped at the first report, of many


# ---- progress and Cancel for the gated jobs -------------------------------------------------------------------------


def _stop_after(n: int):
    """A progress callback that records what it is told and answers False (the page's Cancel) at its n-th report."""
    seen = []

    def progress(done, total):
        seen.append((done, total))
        return len(seen) < n

    return progress, seen


def _gated_jobs(english):
    from workbench import attribution, graph_faithfulness

    prompt = "It was the best of times, it was the worst of"
    answer = attribution.Answer((english.tokenizer(" times")["input_ids"][0],))
    return {
        "integrated gradients": (
            lambda p: attribution.input_attribution(english, prompt, answer, steps=8, internal_batch_size=2, progress=p),
            lambda r: r.scores,
            "the input attribution",
        ),
        "head scores on repeats": (
            lambda p: attention.head_types_on_repeats(english, n=10, seqs=4, progress=p),
            lambda r: torch.stack(list(r.scores.values())),
            "head scores on repeated random tokens",
        ),
        "faithfulness": (
            lambda p: graph_faithfulness.faithfulness_of(english, prompt, progress=p),
            lambda r: torch.tensor([r.full, r.empty, r.kept, r.top_k, *r.random_k]),
            "the faithfulness check",
        ),
    }


@pytest.mark.parametrize("job", ["integrated gradients", "head scores on repeats", "faithfulness"])
def test_gated_jobs_report_progress_and_stop_at_a_cancel_with_one_line(english, job, tmp_path, monkeypatch):
    """Progress comes between chunks, up to done == total; a False stops the job there with one line; watching changes nothing."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # nothing on disk: the head scores are computed here
    run, numbers, what = _gated_jobs(english)[job]
    plain = run(None)
    cost.clear_disk_cache(english)
    watched, seen = _stop_after(10**6)
    result = run(watched)
    assert len(seen) > 2 and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    torch.testing.assert_close(numbers(result), numbers(plain), atol=1e-5, rtol=1e-5)
    cost.clear_disk_cache(english)
    cancel, seen = _stop_after(2)
    with pytest.raises(InputError, match=f"^{what}.* was cancelled after 2 of ") as err:
        run(cancel)
    assert len(seen) == 2 and str(err.value).endswith(f"after 2 of {seen[-1][1]} steps") and "\n" not in str(err.value)
    if job == "head scores on repeats":
        assert attention.stored_head_types_on_repeats(english, n=10, seqs=4) is None  # a cancelled job keeps nothing


PAGES = bench_pages.ROOT / "pages"


@pytest.mark.parametrize(
    "page, button, result",
    [
        ("3_Attribution.py", "Attribute with", "**Completeness**"),
        ("1_Attention.py", "Score heads on repeated random tokens", None),
        ("7_Graph.py", "Check the graph by ablation", "Ablating the graph's top"),
    ],
)
def test_a_gated_job_cancelled_on_its_page_keeps_the_inputs_and_says_so(page, button, result, tmp_path, monkeypatch):
    """Every gate above the budget (BUDGET_S = 0): the button runs the job under a progress bar; a Cancel arriving while
    it runs (its on_click, then Streamlit's stop from the next progress update) leaves no result, no error, the inputs as
    they were, and one line saying what was cancelled on the next run."""
    from contextlib import contextmanager

    from streamlit.runtime.scriptrunner_utils.exceptions import StopException
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(cost, "BUDGET_S", 0.0)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    for cache in ui.server_caches().values():  # nothing remembered from another test
        with cache._lock:
            cache._items.clear()
    real, reports = ui.progress, []

    @contextmanager
    def cancelled_progress(label):
        with real(label) as report:

            def update(done, total):
                reports.append(done)
                if len(reports) == 2:
                    jobs._cancel(label)  # the Cancel button's on_click
                    raise StopException()  # what Streamlit raises from the next drawing call

            report.update = update
            yield report

    monkeypatch.setattr(ui, "progress", cancelled_progress)  # as pages call it
    monkeypatch.setattr(jobs, "progress", cancelled_progress)  # as ui.gated calls it
    at = AppTest.from_file(str(PAGES / page), default_timeout=180)
    at.session_state["wb.model"] = "english"
    at.run()
    before = {w.key: w.value for w in (*at.text_input, *at.number_input, *at.selectbox) if w.key}
    gate = [b for b in at.button if b.label.startswith(button)]
    assert len(gate) == 1 and "(~" in gate[0].label
    gate[0].click().run()
    assert not at.exception and not at.error and len(reports) == 2
    if result:
        assert not [m for m in at.markdown if result in m.value]
    at.run()
    assert any("cancelled" in i.value for i in at.info), [i.value for i in at.info]
    assert {w.key: w.value for w in (*at.text_input, *at.number_input, *at.selectbox) if w.key} == before
    assert [b for b in at.button if b.label.startswith(button)]  # asked again: nothing was kept
