"""Features: the shipped SAEs against their card, dashboards against a brute-force pass, clamps as edits, search, the page."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import AutoModelForCausalLM

from workbench import dashboards, engine, features, sae, sae_quality
from workbench.errors import InputError
from workbench.generate import Sampling, generate
from workbench.model import MODELS_DIR
from workbench.runs import encode, run_edited, run_tokens

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "8_Features.py")
PROMPT = "The whale swam to the ship, and the captain called to the men. The whale"
SAE_DIR = MODELS_DIR / "english" / sae.SAE_FOLDER


@pytest.fixture(scope="module")
def saes(english):
    found = sae.saes_of(english)
    assert found, "the English model ships SAEs (python -m workbench.train sae english)"
    return found


@pytest.fixture(scope="module")
def heldout(english):
    return sae_quality.heldout_text(english)


def _all_activations(english, s, text):
    """(flat indices (tokens,), activations (tokens, d_sae)) of every text token, by brute force: every window, encoded."""
    rows, valid = sae_quality.windows(english, text)
    _, cache = run_tokens(english, rows, names=[s.hook_name])
    flat = (torch.arange(len(rows))[:, None] * rows.shape[1] + torch.arange(rows.shape[1]))[valid]
    return flat, s.encode(cache[s.hook_name].float()[valid])


def test_an_sae_ships_at_every_layer(english, saes):
    layers = {s.layer for s in saes.values()}
    assert layers == set(range(english.info.n_layers))
    assert any(h.endswith("hook_resid_post") and s.layer == english.info.n_layers - 1 for h, s in saes.items())
    for hook, s in saes.items():
        assert s.hook_name == hook and s.d_in == english.info.d_model and s.activation == "topk"
        assert torch.allclose(s.W_dec.norm(dim=1), torch.ones(s.d_sae), atol=1e-4)  # unit-norm decoder rows


def _site_hook(hf, hook: str, fn):
    """A hook on plain transformers' GPT-2 that applies fn (batch, pos, d_model) -> same to the residual stream at a
    transformer-lens hook name: blocks.L.hook_resid_pre is block L's input, blocks.L.hook_resid_post its output."""
    layer, where = int(hook.split(".")[1]), hook.split(".")[2]
    block = hf.transformer.h[layer]
    if where == "hook_resid_pre":

        def pre(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        return block.register_forward_pre_hook(pre, with_kwargs=True)
    assert where == "hook_resid_post", hook

    def post(module, args, out):
        return (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)

    return block.register_forward_hook(post)


def _hand_topk(s, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations (..., d_sae), reconstruction (..., d_in)) of a TopK SAE from its weight tensors, written out."""
    h = (x - s.b_dec) @ s.W_enc + s.b_enc if s.apply_b_dec_to_input else x @ s.W_enc + s.b_enc  # (..., d_sae)
    top = h.topk(s.k, dim=-1)
    a = torch.zeros_like(h).scatter(-1, top.indices, top.values.clamp_min(0))
    return a, a @ s.W_dec + s.b_dec


def _centred(x: torch.Tensor) -> torch.Tensor:
    """transformer-lens's residual stream from plain transformers' (compatibility mode centres every write; what the
    model reads goes through a layer norm, which ignores the mean, so splicing the centred reconstruction is the same
    edit in both: test_conventions checks the centring)."""
    return x - x.mean(-1, keepdim=True)


@torch.no_grad()
def _quality_by_hand(hf, s, rows, valid) -> dict:
    """Variance explained, the three losses, loss recovered, L0, dead features and tokens, from plain transformers with
    hooks at the SAE's site (splice: the reconstruction of the centred stream, zero: 0; BOS kept, as the card's
    definition) and the SAE by hand."""
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    xs, acts, scored = [], [], 0
    for start in range(0, len(rows), 16):
        chunk, keep = rows[start : start + 16], valid[start : start + 16]
        seen = {}

        def capture(x, seen=seen):
            seen["x"] = _centred(x).detach()
            return x

        def splice(x):
            out = x.clone()
            out[:, 1:] = _hand_topk(s, _centred(x[:, 1:]))[1]
            return out

        def zero(x):
            out = x.clone()
            out[:, 1:] = 0.0
            return out

        targets, tgt = keep[:, 1:], chunk[:, 1:][keep[:, 1:]]
        for name, fn in (("clean", capture), ("spliced", splice), ("zero", zero)):
            handle = _site_hook(hf, s.hook_name, fn)
            try:
                logits = hf(chunk).logits.float()
            finally:
                handle.remove()
            sums[name] += float(torch.nn.functional.cross_entropy(logits[:, :-1][targets], tgt, reduction="sum"))
        scored += len(tgt)
        x = seen["x"][keep].double()  # (tokens, d_model)
        xs.append(x)
        acts.append(_hand_topk(s, x.float())[0])
    x, a = torch.cat(xs), torch.cat(acts)
    recon = _hand_topk(s, x.float())[1].double()
    clean, spliced, zeroed = (sums[k] / scored for k in ("clean", "spliced", "zero"))
    return {
        "variance_explained": float(1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero": zeroed,
        "loss_recovered": (zeroed - spliced) / (zeroed - clean),
        "l0": float((a > 0).sum(-1).float().mean()),
        "dead": int(((a > 0).sum(0) == 0).sum()),
        "tokens": len(x),
    }


def test_the_shipped_saes_card_and_quality_equal_plain_transformers_by_hand(english, saes, heldout):
    """The card's numbers and sae_quality.quality's, each against the same numbers computed from plain transformers with
    hooks at the site and the SAE written out from its weights (not sae_quality.quality, which wrote the card)."""
    card = json.loads((SAE_DIR / "card.json").read_text())
    _, text = heldout
    assert card["heldout_text"] == heldout[0] == "models/english/heldout_sample.txt + models/english/heldout_author.txt"
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "english").eval()
    rows, valid = sae_quality.windows(english, text)
    for hook, s in saes.items():
        assert s.activation == "topk" and s.normalize == "none" and not s.rescale_by_decoder_norm  # what _hand_topk writes out
        ref = _quality_by_hand(hf, s, rows, valid)
        stated = card["hooks"][hook]["quality"]
        q = sae_quality.quality(english, s, text).row()
        for key in ("variance_explained", "loss_clean", "loss_spliced", "loss_zero", "loss_recovered", "l0"):
            assert stated[key] == pytest.approx(ref[key], abs=2e-4), (hook, key)  # the card, rounded
            assert q[key] == pytest.approx(ref[key], abs=1e-4), (hook, key)
        assert stated["dead"] == ref["dead"] == q["dead"] and stated["tokens"] == ref["tokens"] == q["tokens"]
        assert ref["loss_clean"] < ref["loss_spliced"] < ref["loss_zero"]
        assert s.meta["training"]["quality"]["loss_recovered"] == pytest.approx(ref["loss_recovered"], abs=2e-4)  # cfg.json


def test_quality_by_hand(english, saes, heldout):
    """Variance explained and the three losses computed here from plain transformers and the engine, not run_edited."""
    s = saes["blocks.1.hook_resid_pre"]
    text = heldout[1][:6000]
    q = sae_quality.quality(english, s, text)
    rows, valid = sae_quality.windows(english, text)
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "english").eval()
    w = engine.weights_of(english)
    targets = valid[:, 1:]
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(hf(rows).logits[:, :-1][targets], rows[:, 1:][targets])
        spliced = engine.forward(w, rows, edits=[engine.Edit("map", s.site, s.layer, fn=sae_quality.Splice(s))]).logits
        x = engine.forward(w, rows, capture=[s.hook_name]).captured[s.hook_name][valid]  # (tokens, d_model)
    assert q.loss_clean == pytest.approx(float(clean), abs=1e-4)
    assert q.loss_spliced == pytest.approx(
        float(torch.nn.functional.cross_entropy(spliced[:, :-1][targets], rows[:, 1:][targets])), abs=1e-4
    )
    fve = 1 - ((s(x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert q.variance_explained == pytest.approx(float(fve), abs=1e-4)
    assert q.l0 == pytest.approx(float((s.encode(x) > 0).sum(-1).float().mean()), abs=1e-6)
    assert q.loss_clean < q.loss_spliced < q.loss_zero


def test_dashboard_examples_are_the_top_activations_over_the_stated_text(english, saes, heldout):
    s = saes["blocks.1.hook_resid_pre"]
    stats = dashboards.stats_for(english, s, SAE_DIR / s.hook_name)
    assert stats.text == heldout[0]
    flat, acts = _all_activations(english, s, heldout[1])  # (tokens,), (tokens, d_sae)
    assert stats.tokens == len(flat)
    assert torch.equal(stats.fires, (acts > 0).sum(0))
    assert torch.equal(stats.hist.sum(1), stats.fires)
    truth = acts.topk(dashboards.N_TOP, dim=0)  # (N_TOP, d_sae)
    assert torch.allclose(stats.top_value, truth.values.T.clamp(min=0), atol=2e-3, rtol=2e-3)  # stored in float16
    position = {int(i): n for n, i in enumerate(flat)}
    for f in range(s.d_sae):
        for i, v in zip(stats.top_index[f], stats.top_value[f], strict=True):
            if i >= 0:
                assert float(acts[position[int(i)], f]) == pytest.approx(float(v), rel=2e-3, abs=2e-3)
        for j, lo in enumerate(dashboards.BANDS):  # band samples lie in their band
            hi = dashboards.BANDS[j + 1] if j + 1 < len(dashboards.BANDS) else 1.0
            for i in stats.sample_index[f, j]:
                if i >= 0:
                    a = float(acts[position[int(i)], f]) / float(stats.max[f])
                    assert lo - 1e-3 <= a <= hi + 1e-3
    live = int((stats.fires > 0).nonzero()[0])
    d = dashboards.dashboard(english, s, stats, live)
    assert [e.index for e in d.top] == [int(i) for i in stats.top_index[live] if i >= 0]
    for e in d.top:  # the shaded context's own token carries the example's activation
        assert e.acts[e.focus] == pytest.approx(e.activation, rel=1e-4, abs=1e-5)
        assert e.activation == pytest.approx(float(acts[position[e.index], live]), rel=1e-4, abs=1e-5)


def test_logit_effect_and_nearest_by_hand(english, saes):
    s = saes["blocks.0.hook_resid_pre"]
    promoted, suppressed = dashboards.logit_effect(english, s, 5, n=5)
    effect = s.W_dec[5] @ english.bridge.W_U.detach().float()
    assert [v for _, v in promoted] == pytest.approx(effect.topk(5).values.tolist(), abs=1e-5)
    assert [v for _, v in suppressed] == pytest.approx((-(-effect).topk(5).values).tolist(), abs=1e-5)
    near = dashboards.nearest(s, 5, n=3)
    cos = torch.nn.functional.cosine_similarity(s.W_dec, s.W_dec[5][None], dim=1)
    cos[5] = -2
    assert [f for f, _ in near] == cos.topk(3).indices.tolist()


def test_clamping_a_shipped_feature_to_zero_changes_only_downstream(english, saes):
    s = saes["blocks.1.hook_resid_pre"]
    ids = encode(english, PROMPT)[0][None]  # (1, pos)
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    logits, before = run_tokens(english, ids, names=names)
    p = ids.shape[1] - 3
    x = before[s.hook_name][0, p]  # (d_model,)
    a = s.encode(x)
    f = int(a.argmax())
    assert a[f] > 0
    edited_logits, after = run_edited(english, ids, [s.clamp_edit(f, 0.0, position=p)], names=names)
    assert not english.attached_hooks()
    for name in names[:2]:  # before its layer: nothing changes
        assert torch.equal(after[name], before[name])
    resid = after[s.hook_name][0]
    assert torch.equal(resid[:p], before[s.hook_name][0, :p]) and torch.equal(resid[p + 1 :], before[s.hook_name][0, p + 1 :])
    assert torch.allclose(resid[p], x - a[f] * s.W_dec[f], atol=1e-5)  # exactly the feature's share removed
    assert torch.equal(after["blocks.1.hook_resid_post"][0, :p], before["blocks.1.hook_resid_post"][0, :p])  # causal
    assert torch.equal(edited_logits[0, :p], logits[0, :p])
    assert not torch.allclose(edited_logits[0, p], logits[0, p])  # downstream it changes


@torch.no_grad()
def _greedy_clamped_by_hand(hf, s, ids: torch.Tensor, f: int, value: float, positions, steps: int) -> list[int]:
    """Greedy continuation from plain transformers with a hook at the SAE's site that sets feature f to `value`
    (x + (value - a_f(x)) W_dec[f], a_f by hand from the centred stream: transformer-lens's) at `positions` (None: all),
    the whole sequence run at every step."""

    def clamp(x):  # (1, pos, d_model)
        out = x.clone()
        where = range(x.shape[1]) if positions is None else positions
        for p in where:
            a = _hand_topk(s, _centred(x[:, p]))[0][..., f]  # (1,)
            out[:, p] = x[:, p] + (value - a)[:, None] * s.W_dec[f]
        return out

    seq, out = ids.clone(), []
    for _ in range(steps):
        handle = _site_hook(hf, s.hook_name, clamp)
        try:
            nxt = int(hf(seq[None]).logits[0, -1].argmax())
        finally:
            handle.remove()
        out.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
    return out


def test_a_feature_intervention_is_an_edit_set_and_matches_plain_transformers(english, saes):
    """features.intervene is interventions.intervene with one Clamp: its continuations are the old clamp edits' (sae.clamp_edit
    through generate) and plain transformers' with the clamp written as a hook; `differs` marks exactly the changed steps."""
    from workbench import interventions

    s = saes["blocks.1.hook_resid_pre"]
    pf = features.prompt_features(english, {s.hook_name: s}, PROMPT)
    f = int(pf.acts[s.hook_name][-1].argmax())
    ids = encode(english, PROMPT)[0]
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "english").eval()
    greedy = Sampling(max_new_tokens=8)
    for value, positions in ((30.0, None), (0.0, (len(ids) - 1, len(ids) - 3))):
        iv = features.intervene(english, s.hook_name, PROMPT, f, value, positions, greedy)
        assert isinstance(iv, interventions.Intervention) and iv.edits.edits[0] == interventions.Clamp(
            "feature", None, f, value, None if positions is None else tuple(sorted(positions)), s.hook_name
        )
        assert iv.original.text == generate(english, PROMPT, greedy).text
        old = [s.clamp_edit(f, value, None)] if positions is None else [s.clamp_edit(f, value, p) for p in positions]
        assert [st.chosen_id for st in iv.edited.steps] == [st.chosen_id for st in generate(english, PROMPT, greedy, edits=old).steps]
        assert [st.chosen_id for st in iv.edited.steps] == _greedy_clamped_by_hand(hf, s, ids, f, value, positions, 8)
        for i, differs in enumerate(iv.differs):
            assert differs == (iv.original.steps[i].chosen_id != iv.edited.steps[i].chosen_id)
        if positions is None:  # the feature at 30 everywhere turns the continuation
            assert any(iv.differs)
    assert not english.attached_hooks()
    with pytest.raises(InputError, match="outside the prompt"):
        features.intervene(english, s.hook_name, PROMPT, f, 0.0, [999])
    with pytest.raises(InputError, match="no SAE called"):
        features.intervene(english, "blocks.9.hook_resid_pre", PROMPT, f)


def test_prompt_features_encode_the_run(english, saes):
    pf = features.prompt_features(english, saes, PROMPT)
    ids = encode(english, PROMPT)[0][None]
    _, cache = run_tokens(english, ids, names=list(saes))
    for hook, s in saes.items():
        assert torch.allclose(pf.acts[hook], s.encode(cache[hook][0]), atol=1e-6)
        chosen, values = pf.strongest(hook, 2)
        assert torch.equal(values, pf.acts[hook][:, chosen])
        for p in range(1, len(pf.labels)):  # each position's 2 strongest features are among the columns
            assert set(pf.acts[hook][p].topk(2).indices.tolist()) - {f for f in range(s.d_sae) if pf.acts[hook][p, f] <= 0} <= set(chosen)


def test_search_by_token_and_by_text(english, saes):
    s = saes["blocks.1.hook_resid_pre"]
    stats = dashboards.stats_for(english, s, SAE_DIR / s.hook_name)
    rows, _ = sae_quality.windows(english, sae_quality.heldout_text(english)[1])
    token = " the"
    tid = english.tokenizer(token, add_special_tokens=False)["input_ids"][0]
    found = features.search(english, s, stats, token)
    assert found
    for r in found:
        idx = stats.top_index[r["feature"]]
        assert r["top examples on the token"] == int((rows.flatten()[idx[idx >= 0]] == tid).sum()) > 0
    by_text = features.search(english, s, stats, "the captain of the ship")
    pf = features.prompt_features(english, {s.hook_name: s}, "the captain of the ship")
    assert by_text[0]["feature"] == int(pf.acts[s.hook_name][1:].max(0).values.argmax())
    with pytest.raises(InputError):
        features.search(english, s, stats, "  ")


def test_a_users_saelens_folder_gets_dashboards_cached_beside_it(english, saes, tmp_path):
    folder = tmp_path / "my-sae"
    shutil.copytree(SAE_DIR / "blocks.0.hook_resid_pre", folder, ignore=shutil.ignore_patterns("dashboards.*"))
    found = sae.sae_set(english, (str(folder),))
    name = sae.USER + str(folder)
    assert torch.equal(found[name].W_enc, saes["blocks.0.hook_resid_pre"].W_enc)
    stats = features.stats_of(english, name, (str(folder),))
    assert (folder / dashboards.DASHBOARDS).is_file()
    again = dashboards.DashboardStats.load(folder)
    assert torch.equal(again.top_index, stats.top_index) and again.text_hash == stats.text_hash
    narrow = sae.SAE("blocks.0.hook_resid_pre", torch.zeros(64, 8), torch.zeros(8), torch.zeros(8, 64), torch.zeros(64), k=2)
    narrow.save(tmp_path / "narrow")
    with pytest.raises(InputError, match="width 64"):
        sae.sae_set(english, (str(tmp_path / "narrow"),))


def _page(model="english") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["wb.model"] = model
    at.session_state["wb.prompt"] = PROMPT
    return at.run()


def test_features_page_draws_and_regenerates():
    at = _page()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert charts[0]["data"][0]["type"] == "heatmap" and len(charts) >= 6
    at.text_input(key="w.query").set_value(" the").run()
    assert not at.exception and at.dataframe
    next(b for b in at.button if b.label == "Regenerate").click().run()
    assert not at.exception and not at.error
    assert any("Original" in m.value for m in at.markdown)


def test_features_page_keeps_going_on_a_bad_folder_and_on_a_model_without_saes():
    at = _page()
    at.text_input(key="w.sae_folder").set_value("/no/such/sae").run()
    assert not at.exception
    assert any("not an SAE folder" in e.value for e in at.error)
    assert at.get("plotly_chart")  # the shipped SAEs still show
    at = _page("circuits")
    assert not at.exception and any("ships no SAEs" in i.value for i in at.info)


def test_features_probe_writes_figures_data_html_and_a_manifest(tmp_path, english, saes):
    from probes.__main__ import main as probes_main

    out = tmp_path / "features"
    argv = ["features", "--prompt", PROMPT, "--sae", "blocks.1.hook_resid_pre", "--features", "3", "--clamp", "0", "--new-tokens", "4"]
    assert probes_main([*argv, "--formats", "html", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and "features.html" in manifest["files"]
    assert all((out / f).stat().st_size > 0 for f in manifest["files"])
    d = json.loads((out / "feature-blocks.1.hook_resid_pre-3.json").read_text())
    s = saes["blocks.1.hook_resid_pre"]
    expected = dashboards.dashboard(english, s, dashboards.stats_for(english, s, SAE_DIR / s.hook_name), 3)
    assert [e["index"] for e in d["top"]] == [e.index for e in expected.top]
    assert manifest["summary"]["blocks.1.hook_resid_pre"]["intervention"]["feature"] == 3
    assert probes_main(["features", "--sae", "blocks.9.hook_resid_pre", "--out", str(tmp_path / "bad")]) == 2


def test_the_default_stories_model_ships_saes_measured_on_held_out_stories():
    """Variance explained by hand: plain `transformers`' hidden states (centred over d_model, as compatibility mode's
    centred writing weights make the stream), through the SAE's TopK written out here."""
    from workbench.model import load_model

    stories = load_model("stories")
    found = sae.saes_of(stories)
    n = stories.info.n_layers
    assert set(found) == {*(f"blocks.{i}.hook_resid_pre" for i in range(n)), f"blocks.{n - 1}.hook_resid_post"}
    name, text = sae_quality.heldout_text(stories)
    assert "unseen stories" in name and stories.tokenizer.unk_token_id not in stories.tokenizer(text)["input_ids"]
    rows, valid = sae_quality.windows(stories, text[:8000])
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "stories").eval()
    with torch.no_grad():
        hidden = hf(rows, output_hidden_states=True).hidden_states  # (n+1) × (rows, pos, d); the last after ln_f
    for i in range(1, n):
        s = found[f"blocks.{i}.hook_resid_pre"]
        x = hidden[i][valid]
        x = x - x.mean(-1, keepdim=True)  # (tokens, d_model)
        pre = (x - s.b_dec) @ s.W_enc + s.b_enc  # (tokens, d_sae)
        top = pre.topk(s.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        fve = 1 - ((acts @ s.W_dec + s.b_dec - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        q = sae_quality.quality(stories, s, text[:8000])
        assert q.variance_explained == pytest.approx(float(fve), abs=2e-3), i
        assert q.variance_explained > 0.8 and q.loss_clean < q.loss_spliced < q.loss_zero


def test_the_features_page_opens_on_the_default_model():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["wb.model"] == "stories" and not at.info  # an SAE is shown, not "ships no SAEs"
