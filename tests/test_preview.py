"""AtP* as the patching preview, checked against the model's own hooks (the bridge) and the exact sweep."""

import dataclasses
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from workbench import engine, families, methods, patching, preview, tasks
from workbench.errors import InputError
from workbench.metrics import Metric
from workbench.model import MODELS_DIR, load_model
from workbench.patch_sites import SITES
from workbench.runs import encode, run_prompt, run_tokens

CLEAN = "apple river stone cloud tiger piano candle garden apple river stone"
CORRUPTED = "apple river stone lemon tiger piano candle garden apple river stone"


def _pair(model) -> tasks.Pair:
    tok = model.tokenizer
    return tasks.Pair(CLEAN, CORRUPTED, tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0])


@pytest.fixture(scope="module")
def one_head(tmp_path_factory):
    """One layer, one head (word tokenizer: the pair keeps its token count). Large weights: a saturated softmax."""
    folder = families.build(
        "gpt2", tmp_path_factory.mktemp("one_head"), layers=1, heads=1, kv_heads=1, width=32, init=1.0, tokenizer=MODELS_DIR / "circuits"
    )
    return load_model(str(folder))


@pytest.fixture(scope="module")
def soft_head(tmp_path_factory):
    """One layer, one head, the default small weights: a softmax far from saturated, so that every key counts."""
    folder = families.build("gpt2", tmp_path_factory.mktemp("soft_head"), layers=1, heads=1, kv_heads=1, tokenizer=MODELS_DIR / "circuits")
    return load_model(str(folder))


def _metric_gradient(model, pair, name):
    """∂metric/∂activation at hook `name` of the corrupted run, read through the bridge's hooks as the gradient of an added zero."""
    act = run_prompt(model, pair.corrupted, [name]).cache[name][None]
    zero = torch.zeros_like(act, requires_grad=True)
    ids = encode(model, pair.corrupted)[0][None]
    logits, _ = run_tokens(model, ids, hooks=[(name, lambda a, hook: a + zero)], last_only=True, grad=True)
    (g,) = torch.autograd.grad(Metric("logit difference", pair.answer, pair.wrong).value(logits[:, -1].float()).sum(), zero)
    return g[0]


def test_qk_fix_of_one_key_cell_is_the_exactly_patched_pattern(one_head):
    """In a one-layer model a pair that differs in one token changes one key: one column of the head's scores. The
    QK-fixed pattern equals the pattern of the run whose keys are patched through the bridge's hook, and the
    estimate is Σ ∂metric/∂pattern · Δpattern."""
    pair = _pair(one_head)
    k, pattern = "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"
    clean = run_prompt(one_head, CLEAN, ["blocks.0.attn.hook_q", k, pattern]).cache
    corrupted = run_prompt(one_head, CORRUPTED, ["blocks.0.attn.hook_q", k, pattern]).cache
    assert int(((clean[k] - corrupted[k]).abs().amax((1, 2)) > 0).sum()) == 1  # one key changed
    fixed = preview.fixed_patterns(methods.prepare(one_head, pair), "k", corrupted, clean)[0]  # (head, query, key)
    ids = encode(one_head, CORRUPTED)[0][None]
    _, patched = run_tokens(one_head, ids, [pattern], hooks=[(k, lambda act, hook: clean[k][None].to(act.dtype))])
    torch.testing.assert_close(fixed, patched[pattern][0], atol=1e-6, rtol=1e-5)
    assert (fixed - corrupted[pattern]).abs().max() > 0.05  # the key moves the pattern: the check can fail

    star = preview.preview_sweep(one_head, pair, "k")
    g = _metric_gradient(one_head, pair, pattern)  # (head, query, key)
    expected = float(((patched[pattern][0] - corrupted[pattern]) * g).sum())
    assert float(star.raw[0, 0] - star.corrupted_value) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # a saturated softmax: plain AtP, linear in the key, misses some of it
    plain = preview.preview_sweep(one_head, pair, "k", method="AtP")
    assert float(plain.raw[0, 0] - plain.corrupted_value) != pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize(
    "kind, corrupted",
    [
        ("q", CORRUPTED.replace("river stone", "river piano")),  # the last word differs: its query reads into the metric
        ("k", CORRUPTED.replace("apple river", "apple candle", 1)),  # two earlier words differ: two keys the last query reads
    ],
)
def test_qk_fix_of_one_query_or_key_at_one_position_is_exact_up_to_the_pattern(soft_head, kind, corrupted):
    """Per position: a query changes one row of the pattern, a key one column of the scores. For every position, the
    estimate is Σ ∂metric/∂pattern · (pattern of the run patched there through the bridge's hook − the base pattern)."""
    tok = soft_head.tokenizer
    pair = tasks.Pair(CLEAN, corrupted, tok(" cloud")["input_ids"][0], tok(" lemon")["input_ids"][0])
    hook, pattern = f"blocks.0.attn.hook_{kind}", "blocks.0.attn.hook_pattern"
    clean = run_prompt(soft_head, CLEAN, [hook]).cache[hook]  # (pos, head, d_head)
    base = run_prompt(soft_head, corrupted, [pattern]).cache[pattern]  # (head, query, key)
    g = _metric_gradient(soft_head, pair, pattern)
    ids = encode(soft_head, corrupted)[0][None]
    star = preview.preview_sweep(soft_head, pair, f"{kind}_pos")
    changed = 0
    for p in range(ids.shape[1]):

        def patch(act, hook, p=p):
            act = act.clone()
            act[:, p] = clean[p].to(act.dtype)
            return act

        _, cache = run_tokens(soft_head, ids, [pattern], hooks=[(hook, patch)])
        expected = float(((cache[pattern][0] - base) * g).sum())
        assert float(star.raw[0, 0, p] - star.corrupted_value) == pytest.approx(expected, rel=1e-4, abs=1e-6), p
        changed += abs(expected) > 1e-4
    # the metric reads the last position: in one layer only its query matters; keys at every differing position do
    assert changed == 1 if kind == "q" else changed >= 2


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_qk_fix_of_one_key_under_rotary_and_grouped_heads(tmp_path, family):
    """Rotary positions, two query heads per key/value head: one key cell's estimate is Σ over the heads that share it of
    ∂metric/∂pattern · Δpattern, the pattern from the bridge with that key patched through its hook."""
    folder = families.build(family, tmp_path / family, layers=1, heads=4, kv_heads=2, tokenizer=MODELS_DIR / "circuits")
    model = load_model(str(folder))
    pair = _pair(model)
    hook, pattern = "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"
    clean = run_prompt(model, CLEAN, [hook]).cache[hook]  # (pos, kv_head, d_head)
    base = run_prompt(model, CORRUPTED, [pattern]).cache[pattern]  # (head, query, key)
    assert clean.shape[1] == 2 and base.shape[0] == 4
    g = _metric_gradient(model, pair, pattern)
    ids = encode(model, CORRUPTED)[0][None]
    star = preview.preview_sweep(model, pair, "k_pos")
    p = int((encode(model, CLEAN)[0] != ids[0]).nonzero()[0])  # the one differing position: its key changes
    for kv_head in range(2):

        def patch(act, hook, h=kv_head):
            act = act.clone()
            act[:, p, h] = clean[p, h].to(act.dtype)
            return act

        _, cache = run_tokens(model, ids, [pattern], hooks=[(hook, patch)])
        expected = float(((cache[pattern][0] - base) * g).sum())
        assert abs(expected) > 1e-4
        assert float(star.raw[0, kv_head, p] - star.corrupted_value) == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("site", [s for s in SITES if SITES[s].engine_site not in ("q", "k")])
def test_one_layer_atp_star_is_plain_atp_where_no_fix_applies(one_head, site):
    pair = _pair(one_head)
    star, plain = preview.preview_sweep(one_head, pair, site), preview.preview_sweep(one_head, pair, site, method="AtP")
    torch.testing.assert_close(star.raw, plain.raw)
    torch.testing.assert_close(star.magnitude, plain.magnitude)  # one layer: GradDrop has no other path to drop
    assert (star.method, plain.method) == ("AtP*", "AtP")


@pytest.mark.parametrize("site", list(SITES))
def test_plain_atp_is_attribution_patching_and_atp_star_computes_the_same_linear_term(circuits, site):
    """AtP has one implementation (patching.attribution_sweep): the preview's plain AtP is its numbers. AtP*'s own passes
    compute the same linear term where no QK fix applies (their first gradient is the plain one), so the two agree."""
    pair = _pair(circuits)
    for direction in patching.DIRECTIONS:
        ours = preview.preview_sweep(circuits, pair, site, method="AtP", direction=direction)
        reference = patching.attribution_sweep(circuits, pair, site, direction)
        assert torch.equal(ours.raw, reference.raw) and ours.method == "AtP" and (ours.forward, ours.backward) == (2, 1)
        assert ours.provenance["settings"]["method"] == "AtP" and ours.magnitude is not None
        if SITES[site].engine_site not in ("q", "k"):
            star = preview.preview_sweep(circuits, pair, site, method="AtP*", direction=direction)
            torch.testing.assert_close(star.raw, reference.raw, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", list(SITES))
def test_graddrop_adds_nothing_for_last_layer_cells_and_only_ranks(circuits, site):
    """A last-layer cell keeps its whole gradient in every GradDrop pass but its own layer's, which gives it none (its output
    is dropped): Σ_ℓ |AtP_ℓ| / (L − 1) = |AtP|. The residual stream before the last block keeps its direct path there,
    so GradDrop may add to it. The signed estimate is AtP with the QK fix; GradDrop only changes the magnitude."""
    pair = _pair(circuits)
    star = preview.preview_sweep(circuits, pair, site)
    assert bool((star.magnitude >= star.values.abs() - 1e-6).all())
    if site != "resid_pre":
        torch.testing.assert_close(star.magnitude[-1], star.values[-1].abs())
    if SITES[site].engine_site not in ("q", "k"):
        torch.testing.assert_close(star.raw, preview.preview_sweep(circuits, pair, site, method="AtP").raw)


def test_graddrop_finds_what_cancels(circuits):
    """Somewhere on the circuits model an earlier cell's paths cancel: GradDrop raises its magnitude above |AtP|."""
    pair = _pair(circuits)
    grew = [
        site for site in SITES if (lambda r: bool((r.magnitude > r.values.abs() + 1e-4).any()))(preview.preview_sweep(circuits, pair, site))
    ]
    assert grew


@pytest.mark.parametrize("site", ["resid_pre", "z_pos"])
def test_atp_star_costs_layers_plus_two_passes_whatever_the_cells(circuits, site, monkeypatch):
    """Counted where they happen: engine forward passes with gradients on, and autograd backward passes."""
    counts = {"forward": 0, "grad forward": 0, "backward": 0}
    forward, grad = engine.forward, torch.autograd.grad

    def counting_forward(*args, **kwargs):
        counts["forward"] += 1
        counts["grad forward"] += torch.is_grad_enabled()
        return forward(*args, **kwargs)

    def counting_grad(*args, **kwargs):
        counts["backward"] += 1
        return grad(*args, **kwargs)

    engine.checked_weights(circuits)  # the engine's check against the model's logits: once per loaded model, not per preview
    monkeypatch.setattr(engine, "forward", counting_forward)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    star = preview.preview_sweep(circuits, _pair(circuits), site)
    layers = circuits.info.n_layers
    assert (star.forward, star.backward) == (2, layers + 1)
    # the source run's and the base run's (with gradients): nothing else on the engine
    assert counts == {"forward": 2, "grad forward": 1, "backward": layers + 1}
    assert star.values.numel() in (2 * 12, 2 * 4 * 12)  # many cells, the same passes
    assert star.provenance["settings"]["graddrop"] is True


@pytest.mark.parametrize("name", ["circuits", "answer_key"])
@pytest.mark.parametrize("direction", patching.DIRECTIONS)
def test_atp_star_recalls_the_exact_top_cells_at_least_as_well_as_atp(request, name, direction):
    model = request.getfixturevalue(name)
    pair = _pair(model)
    for site in SITES:
        exact = patching.sweep(model, pair, site, direction)
        star, plain = (preview.preview_sweep(model, pair, site, method=m, direction=direction) for m in ("AtP*", "AtP"))
        assert preview.recall(star, exact) >= preview.recall(plain, exact), site


def test_recall_by_hand(circuits):
    pair = _pair(circuits)
    exact = patching.sweep(circuits, pair, "z")
    top = exact.values.abs().flatten().argsort(descending=True)  # (cells,) denoising: the change is the value
    guess = torch.zeros(exact.values.numel())
    guess[top[:3]] = torch.tensor([3.0, 2.0, 1.0])  # the exact top 3 first,
    guess[top[3:]] = torch.linspace(0.1, 0.5, len(top) - 3)  # then the rest in reverse: its 4th and 5th are the exact's last
    est = patching.PatchResult(**{**exact.__dict__, "magnitude": guess.reshape(exact.values.shape)})
    assert preview.recall(est, exact, k=3) == 1.0
    assert preview.recall(est, exact, k=5) == pytest.approx(3 / 5)
    assert est.ranked(3) == [dict(r, magnitude=m) for r, m in zip(exact.ranked(3), (3.0, 2.0, 1.0), strict=True)]


def test_recall_counts_only_the_cells_the_exact_sweep_patched(circuits):
    """A window of positions leaves the exact sweep's other cells NaN: the preview's top cells outside it do not count."""
    pair = _pair(circuits)
    star, exact = preview.preview_sweep(circuits, pair, "z_pos"), patching.sweep(circuits, pair, "z_pos")
    inside = torch.zeros(exact.values.shape, dtype=torch.bool)
    inside[..., 5:] = True  # a window after the corrupted word: the preview's strongest cells (at it) fall outside
    nan = torch.tensor(float("nan"))
    windowed = dataclasses.replace(exact, values=exact.values.where(inside, nan), raw=exact.raw.where(inside, nan))
    mine = dataclasses.replace(star, magnitude=star.magnitude.where(inside, torch.tensor(0.0)))  # the preview within the window
    assert preview.recall(star, windowed) == preview.recall(mine, windowed)
    assert preview.recall(star, windowed) >= 0.8


def test_exact_check_follows_atp_star_ranking(circuits):
    pair = _pair(circuits)
    star = preview.preview_sweep(circuits, pair, "z_pos")
    rows = patching.exact_cells(circuits, star, 3)
    order = star.magnitude.flatten().argsort(descending=True)[:3]
    exact = patching.sweep(circuits, pair, "z_pos")
    for row, i in zip(rows, order.tolist(), strict=True):
        index = torch.unravel_index(torch.tensor(i), star.values.shape)
        assert (row["layer"], row["head"], row["position"]) == tuple(int(v) for v in index)
        assert row["exact_normalised"] == pytest.approx(float(exact.values[index]))


def test_bad_input_is_one_message(circuits):
    pair = _pair(circuits)
    with pytest.raises(InputError, match="unknown preview"):
        preview.preview_sweep(circuits, pair, method="AtP**")
    with pytest.raises(InputError, match="unknown site"):
        preview.preview_sweep(circuits, pair, "nowhere")
    with pytest.raises(InputError, match="same number of tokens"):
        preview.preview_sweep(circuits, tasks.Pair(CLEAN, CORRUPTED + " tiger", 5, 6))
    with pytest.raises(InputError, match="same site"):
        preview.recall(preview.preview_sweep(circuits, pair, "z"), patching.sweep(circuits, pair, "resid_pre"))


def test_a_model_the_engine_cannot_run_gets_plain_atp_and_says_so(circuits):
    """A wrong engine (embeddings scaled by 2) is caught; the preview is plain attribution patching through the bridge's
    hooks, equal to the engine's on every site (heads' q, k, v and z included: their gradient is read through the hook)."""
    pair = _pair(circuits)
    right = {site: patching.attribution_sweep(circuits, pair, site) for site in SITES}
    saved = engine.weights_of(circuits)
    circuits.state.weights = dataclasses.replace(saved, embed_scale=2.0)
    try:
        found = {site: preview.preview_sweep(circuits, pair, site) for site in SITES}
    finally:
        circuits.state.weights = saved
    for site, r in found.items():
        assert r.method == "AtP" and "plain attribution patching" in r.note and r.backend == "bridge hooks"
        torch.testing.assert_close(r.raw, right[site].raw, atol=1e-4, rtol=1e-4)


PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "4_Patching.py")


def test_patching_page_previews_with_atp_star_and_shows_its_recall():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["wb.model"] = "circuits"
    at.run()
    assert not at.exception and not at.error
    assert at.radio(key="w.preview").value == "AtP*"  # the default
    assert any(m.value.startswith("**Preview: AtP***") for m in at.markdown)
    next(b for b in at.button if b.label == "Run the exact sweep").click()
    at.run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 2
    assert any("Correlation" in c.value and "recall@5" in c.value for c in at.caption)


def test_patching_page_takes_plain_atp_from_a_link_and_exact_checks_its_top_cells():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.query_params["model"] = "circuits"
    at.query_params["preview"] = "AtP"
    at.run()
    assert not at.exception and not at.error
    assert at.radio(key="w.preview").value == "AtP"
    assert any(m.value.startswith("**Preview: AtP** (2 forward and 1 backward") for m in at.markdown)
    next(b for b in at.button if b.label.startswith("Exact-check the AtP preview")).click()
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert table.shape[0] == 5 and "exact_normalised" in table.columns


@pytest.mark.parametrize("method", preview.PREVIEW_METHODS)
def test_patching_probe_writes_the_chosen_preview_and_its_recall(tmp_path, circuits, method):
    import json

    from probes.__main__ import main as probes_main

    out = tmp_path / "out"
    argv = ["patching", "--model", "circuits", "--site", "k", "--formats", "html", "--out", str(out)]
    assert probes_main(argv + ["--preview", method] * (method != "AtP*")) == 0  # AtP* without the flag: the default
    manifest = json.loads((out / "manifest.json").read_text())
    pair = _pair(circuits)
    ours, exact = preview.preview_sweep(circuits, pair, "k", method=method), patching.sweep(circuits, pair, "k")
    saved = json.loads((out / "patching-k-estimate.json").read_text())
    torch.testing.assert_close(torch.tensor(saved["values"]), ours.values, atol=1e-6, rtol=1e-6)
    layers = circuits.info.n_layers
    assert manifest["estimate"]["k"] == dict(method=method, forward=2, backward=layers + 1 if method == "AtP*" else 1)
    assert manifest["recall@5_estimate_exact"]["k"] == pytest.approx(preview.recall(ours, exact))


def test_patching_probe_refuses_an_unknown_preview_in_one_line(tmp_path, capsys):
    """A spec file passes no argparse choice check: the analysis's own message, one line, exit 2."""
    from probes.__main__ import main as probes_main

    spec = tmp_path / "spec.yaml"
    spec.write_text("model: circuits\nsites: [z]\npreview: AtP**\n")
    assert probes_main(["patching", "--spec", str(spec), "--out", str(tmp_path / "x")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown preview 'AtP**'" in errors[0]


def test_the_methods_annotation_names_the_preview_methods():
    import typing

    assert typing.get_args(typing.get_type_hints(preview.preview_sweep)["method"]) == preview.PREVIEW_METHODS
