"""The one backend choice (engine.backend) and the typed per-model state (model.ModelState).

`engine.backend(model)` decides once per set of weights whether analyses run on the forward engine or
through the model's own hooks, with one tolerance, and every analysis that can run either way records
the choice on its result (`result.backend`). References: plain `transformers` with hooks written here
on its own modules (patching a head's output by hand; an unablated metric), the other backend on the
same question, and the mathematics of the final norm (the contrast direction times the normalised
residual is the logit difference).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench import attribution, engine, families, generate, graph, graph_faithfulness, patching, tasks
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.model import MODELS_DIR, LoadedModel, ModelState, load_model
from workbench.runs import run_prompt

ROOT = Path(__file__).resolve().parents[1]
CLEAN = "apple river stone cloud tiger piano candle garden apple river stone"
CORRUPTED = "apple river stone lemon tiger piano candle garden apple river stone"


def _setup(model) -> tasks.Pair:
    tok = model.tokenizer
    return tasks.Pair(CLEAN, CORRUPTED, tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0])


def _bridge_only(model: LoadedModel) -> tuple:
    """Switches the engine off for `model` (what a family the engine does not know looks like); returns what to restore."""
    saved = (model.state.weights, model.state.checked)
    model.state.weights, model.state.checked = engine.Unsupported("the engine is switched off for this test"), None
    return saved


def _restore(model: LoadedModel, saved: tuple) -> None:
    model.state.weights, model.state.checked = saved


def test_the_choice_is_made_once_per_set_of_weights_and_every_analysis_records_it(circuits, monkeypatch):
    checks = []
    real = engine._check
    monkeypatch.setattr(engine, "_check", lambda model, w: checks.append(w) or real(model, w))
    circuits.state.checked = None
    chosen = engine.backend(circuits)
    assert chosen.name == "engine" and chosen.weights is circuits.state.weights and "within" in chosen.reason
    assert chosen.note() == ""
    tok = circuits.tokenizer
    answer = tok(" cloud")["input_ids"][0]
    results = [
        patching.sweep(circuits, _setup(circuits), "z"),
        patching.sweep_dataset(circuits, [_setup(circuits)], "z"),
        ivs.ablation_sweep(circuits, CLEAN, iv.Metric("probability", answer), "zero"),
        graph_faithfulness.faithfulness_of(circuits, CLEAN, k=2),
        generate.generate(circuits, CLEAN, generate.Sampling(max_new_tokens=2)),
    ]
    assert [r.backend for r in results] == ["engine"] * len(results)
    assert engine.backend(circuits) == chosen and len(checks) == 1  # one check for every analysis
    assert results[0].provenance["settings"]["backend"] == "engine" and results[2].provenance["settings"]["backend"] == "engine"
    # what runs only one way says so: an intervention and a short prompt's attribution run through the model's hooks
    only_hooks = [
        iv.intervene(circuits, CLEAN, iv.EditSet.parse("ablate head 1.0 zero"), sampling=generate.Sampling(max_new_tokens=1)),
        attribution.input_attribution(circuits, CLEAN, attribution.Answer((answer,)), method="saliency"),
    ]
    assert [r.backend for r in only_hooks] == ["bridge hooks", "bridge hooks"]
    # a new set of weights is checked again (and a wrong one refused, with the gap as the reason)
    circuits.state.weights = dataclasses.replace(chosen.weights, embed_scale=2.0)
    try:
        wrong = engine.backend(circuits)
        assert wrong.name == "bridge hooks" and "differ from the model's" in wrong.reason and len(checks) == 2
        assert "own hooks" in wrong.note() and wrong.reason in wrong.note()
    finally:
        circuits.state.weights, circuits.state.checked = chosen.weights, None


def test_there_is_one_tolerance():
    """The engine-vs-model check's tolerance is defined once, and no module keeps a copy of it under its own name."""
    one = re.compile(r"^\w* = .*engine\.CHECK_TOLERANCE|^CHECK_TOLERANCE = ", re.M)
    assert [p.name for p in sorted((ROOT / "workbench").rglob("*.py")) if one.search(p.read_text())] == ["engine.py"]


def _hand_z_patching(plain, clean: torch.Tensor, corrupted: torch.Tensor, answer: int, wrong: int, n_heads: int) -> torch.Tensor:
    """(layer, head) answer − wrong logit of the corrupted run with one head's clean output patched in, on the plain
    transformers GPT-2: the head's slice of the input of its attention's c_proj (the heads' z, concatenated)."""
    blocks = plain.transformer.h
    d_head = plain.config.n_embd // n_heads
    cache = {}
    handles = [
        b.attn.c_proj.register_forward_pre_hook(lambda m, args, layer=layer: cache.__setitem__(layer, args[0].clone()))
        for layer, b in enumerate(blocks)
    ]
    with torch.no_grad():
        plain(clean[None])
    for h in handles:
        h.remove()
    raw = torch.zeros(len(blocks), n_heads)
    for layer, b in enumerate(blocks):
        for head in range(n_heads):
            part = slice(head * d_head, (head + 1) * d_head)

            def patch(m, args, layer=layer, part=part):
                x = args[0].clone()
                x[..., part] = cache[layer][..., part]
                return (x,)

            handle = b.attn.c_proj.register_forward_pre_hook(patch)
            with torch.no_grad():
                logits = plain(corrupted[None]).logits[0, -1]
            handle.remove()
            raw[layer, head] = logits[answer] - logits[wrong]
    return raw


def test_both_backends_agree_within_the_tolerance_and_with_plain_transformers(circuits):
    setup = _setup(circuits)
    metric = iv.Metric("probability", setup.answer)
    on_engine = patching.sweep(circuits, setup, "z"), ivs.ablation_sweep(circuits, CLEAN, metric, "zero")
    saved = _bridge_only(circuits)
    try:
        assert engine.backend(circuits).name == "bridge hooks"
        on_hooks = patching.sweep(circuits, setup, "z"), ivs.ablation_sweep(circuits, CLEAN, metric, "zero")
    finally:
        _restore(circuits, saved)
    assert [r.backend for r in on_engine] == ["engine", "engine"] and [r.backend for r in on_hooks] == ["bridge hooks"] * 2
    assert all("switched off" in r.note for r in on_hooks)
    clean = run_prompt(circuits, CLEAN)
    scale = max(1.0, float(clean.logits.abs().max()))
    # a logit difference is two logits, each within the tolerance of the model's (relative to the logits' scale)
    bound = 2 * engine.CHECK_TOLERANCE * scale
    assert (on_engine[0].raw - on_hooks[0].raw).abs().max() <= bound
    assert (on_engine[1].values - on_hooks[1].values).abs().max() <= engine.CHECK_TOLERANCE  # probabilities
    plain = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "circuits").eval()
    corrupted = run_prompt(circuits, CORRUPTED)
    ref = _hand_z_patching(plain, clean.tokens, corrupted.tokens, setup.answer, setup.wrong, circuits.info.n_heads)
    assert ref.std() > 0.1  # the heads matter: the comparison is not of constants
    for r in (*on_engine[:1], *on_hooks[:1]):
        assert (r.raw - ref).abs().max() <= bound, r.backend


def test_a_family_the_engine_cannot_run_falls_back_to_the_bridge_and_says_why(tmp_path):
    folder = families.build_bloom(tmp_path / "bloom")
    model = load_model(str(folder))
    chosen = engine.backend(model)
    assert chosen.name == "bridge hooks" and chosen.weights is None and "'bloom' architecture" in chosen.reason
    with pytest.raises(engine.Unsupported, match="bloom"):
        engine.checked_weights(model)  # what runs only on the engine refuses it
    answer = model.tokenizer(" mat")["input_ids"][0]
    prompt = "The cat sat on the mat. The cat sat on the"
    sweep = ivs.ablation_sweep(model, prompt, iv.Metric("probability", answer), "zero")
    assert sweep.backend == "bridge hooks" and chosen.reason in sweep.note
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        want = plain(run_prompt(model, prompt).tokens[None]).logits[0, -1].softmax(-1)[answer]
    assert sweep.before == pytest.approx(float(want), abs=1e-5)  # the unablated run equals plain transformers'


def test_the_contrast_direction_reads_the_readout_without_running_it(circuits, monkeypatch):
    """contrast_direction takes the final norm and unembedding from the state (engine.readout_of), not from a readout
    of zeros; the direction times the normalised final residual is the logit difference (LayerNorm's mathematics)."""
    from workbench import lens

    monkeypatch.setattr(lens, "readout", lambda *a: pytest.fail("contrast_direction ran the readout"))
    circuits.state.readout = None
    tok = circuits.tokenizer
    answer, wrong = tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0]
    d = graph.contrast_direction(circuits, answer, wrong)  # (d_model,)
    r = circuits.state.readout
    assert isinstance(r, engine.Readout) and r is engine.readout_of(circuits)
    last = f"blocks.{circuits.info.n_layers - 1}.hook_resid_post"
    run = run_prompt(circuits, CLEAN, [last])
    x = run[last][-1].float()  # (d_model,)
    normed = torch.nn.functional.layer_norm(x, (x.shape[0],), eps=r.norm.eps)  # the gain is in d, any bias below
    bias = 0.0 if r.b_U is None else float(r.b_U[answer] - r.b_U[wrong])
    if r.norm.bias is not None:
        bias += float(r.norm.bias @ (r.W_U[:, answer] - r.W_U[:, wrong]))
    assert r.norm.kind == "layer"
    assert float(normed @ d) + bias == pytest.approx(float(run.logits[-1, answer] - run.logits[-1, wrong]), abs=1e-4)


def test_the_per_model_state_is_typed_documented_and_replaces_the_derived_dict():
    fields = {f.name for f in dataclasses.fields(LoadedModel)}
    assert "state" in fields and "derived" not in fields
    source = inspect.getsource(ModelState).splitlines()
    for f in dataclasses.fields(ModelState):
        at = next(i for i, line in enumerate(source) if line.startswith(f"    {f.name}: "))
        # each field says what it holds and who fills it, in the comment above it (shared by a pair of lines at most)
        assert source[at - 1].lstrip().startswith("#") or source[at - 2].lstrip().startswith("#"), f.name
        assert f.type and f.type != "dict", f.name  # typed, not a bare dict
    pattern = re.compile(r"\.deriv" r"ed\b")  # split, so that this line does not match itself
    used = []
    for folder in ("workbench", "pages", "probes", "benchmarks", "tests"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            used += [f"{p.relative_to(ROOT)}:{n + 1}" for n, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert not used, used
