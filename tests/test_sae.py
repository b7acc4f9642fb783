"""SAEs: the SAELens-format loader against a hand computation, and feature clamps as engine edits."""

import json

import pytest
import torch
from safetensors.torch import save_file

from workbench import engine, sae
from workbench.errors import InputError
from workbench.runs import encode, run_edited, run_tokens

PROMPT = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old"


def _random_sae(d_in: int, d_sae: int = 64, layer: int = 1, activation="topk", k=8, seed=0) -> sae.SAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    return sae.SAE(
        hook_name=f"blocks.{layer}.hook_resid_pre",
        W_enc=W_dec.T.clone() * 0.5,
        b_enc=torch.randn(d_sae, generator=g) * 0.1,
        W_dec=W_dec,
        b_dec=torch.randn(d_in, generator=g) * 0.1,
        activation=activation,
        k=k if activation == "topk" else None,
        threshold=torch.full((d_sae,), 0.2) if activation == "jumprelu" else None,
    )


def test_a_saelens_folder_written_by_hand_encodes_as_computed_by_hand(tmp_path):
    g = torch.Generator().manual_seed(1)
    W_enc, b_enc = torch.randn(16, 40, generator=g), torch.randn(40, generator=g)
    W_dec, b_dec = torch.randn(40, 16, generator=g), torch.randn(16, generator=g)
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"d_in": 16, "d_sae": 40, "hook_name": "blocks.0.hook_resid_post", "architecture": "standard", "activation_fn_str": "relu",
           "apply_b_dec_to_input": True, "normalize_activations": "none"}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = sae.load(tmp_path)
    x = torch.randn(5, 16, generator=g)
    hand = torch.clamp((x - b_dec) @ W_enc + b_enc, min=0)  # SAELens's standard encoder, written out
    assert torch.allclose(loaded.encode(x), hand, atol=1e-5)
    assert torch.allclose(loaded(x), hand @ W_dec + b_dec, atol=1e-4)
    assert (loaded.site, loaded.layer) == ("resid_post", 0)


def test_topk_keeps_k_features_and_save_load_round_trips(tmp_path):
    s = _random_sae(32, k=6)
    x = torch.randn(7, 32)
    a = s.encode(x)
    assert ((a > 0).sum(-1) <= 6).all() and (a >= 0).all()
    h = s.pre(x)
    for row in range(7):  # the kept ones are the largest pre-activations
        kept = a[row] > 0
        if kept.any():
            assert h[row][kept].min() >= h[row][~kept].max() - 1e-6
    back = sae.load(s.save(tmp_path / "sae", trained_on="test"))
    assert back.activation == "topk" and back.k == 6 and back.meta["trained_on"] == "test"
    assert torch.allclose(back.encode(x), a, atol=1e-6)


def test_jumprelu_zeroes_below_the_threshold():
    s = _random_sae(32, activation="jumprelu")
    x = torch.randn(4, 32)
    h = s.pre(x)
    assert torch.equal(s.encode(x), torch.where(h > 0.2, h, torch.zeros_like(h)))


def test_clamping_a_feature_sets_it_and_changes_nothing_before_its_layer(english):
    ids = encode(english, PROMPT)[0][None]  # (1, pos)
    s = _random_sae(english.info.d_model, layer=1, k=8)
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    plain, before = run_tokens(english, ids, names=names)
    feature = int(s.encode(before["blocks.1.hook_resid_pre"][0, -1]).argmax())
    for value in (0.0, 3.0):
        logits, after = run_edited(english, ids, [s.clamp_edit(feature, value, position=ids.shape[1] - 1)], names=names)
        assert torch.equal(after["blocks.0.hook_resid_post"], before["blocks.0.hook_resid_post"])  # upstream untouched
        resid = after["blocks.1.hook_resid_pre"][0]  # (pos, d_model) as edited
        assert torch.equal(resid[:-1], before["blocks.1.hook_resid_pre"][0, :-1])  # other positions untouched
        x = before["blocks.1.hook_resid_pre"][0, -1]  # (d_model,)
        a = s.encode(x)
        a_clamped = a.clone()
        a_clamped[feature] = value
        # the SAE's decomposition with the feature's coefficient replaced, its error term kept
        assert torch.allclose(resid[-1], s.decode(a_clamped) + (x - s.decode(a)), atol=1e-4)
        assert torch.equal(logits[0, :-1], plain[0, :-1])
        assert not torch.allclose(logits[0, -1], plain[0, -1], atol=1e-4)
    with torch.no_grad():  # the engine applies the same edit to the same numbers
        ours = engine.forward(engine.weights_of(english), ids, edits=[s.clamp_edit(feature, 3.0)]).logits
    theirs, _ = run_edited(english, ids, [s.clamp_edit(feature, 3.0)])
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_bad_sae_input_gets_one_clear_line(tmp_path):
    s = _random_sae(16)
    with pytest.raises(InputError, match="out of range"):
        s.clamp_edit(64)
    with pytest.raises(InputError, match="whole number"):
        s.clamp_edit("three")
    with pytest.raises(InputError, match="finite"):
        s.clamp_edit(1, float("nan"))
    with pytest.raises(InputError, match="missing"):
        sae.load(tmp_path)
    with pytest.raises(InputError, match="width 16"):
        sae.check_fits(s, 128, 2)
    with pytest.raises(InputError, match="block's hook"):
        sae.SAE("ln_final.hook_normalized", s.W_enc, s.b_enc, s.W_dec, s.b_dec, k=4)


def test_older_and_newer_saelens_configs_name_the_hook_their_own_way(tmp_path):
    s = _random_sae(16, d_sae=8, layer=0, k=2)
    tensors = {"W_enc": s.W_enc.contiguous(), "b_enc": s.b_enc, "W_dec": s.W_dec, "b_dec": s.b_dec}
    for name, cfg in (
        ("old", {"hook_point": "blocks.0.hook_resid_pre", "d_in": 16, "d_sae": 8}),  # SAELens < 4 (GPT-2 small's published SAEs)
        ("new", {"metadata": {"hook_name": "blocks.0.hook_resid_pre"}, "d_in": 16, "d_sae": 8}),  # SAELens 6
    ):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "sae_weights.safetensors"))
        (tmp_path / name / "cfg.json").write_text(json.dumps(cfg))
        loaded = sae.load(tmp_path / name)
        assert loaded.hook_name == "blocks.0.hook_resid_pre" and loaded.activation == "relu"


def test_saes_of_finds_the_shipped_folders_in_layer_order(english, tmp_path):
    found = sae.saes_of(english)
    assert list(found) == list(sae.sae_folders(english.info.source))
    order = [(s.layer, list(engine.SITE_HOOKS).index(s.site)) for s in found.values()]
    assert order == sorted(order) and len(found) >= english.info.n_layers
    assert sae.sae_folders(tmp_path) == {}
