"""SAEs written by SAELens itself (tests/fixtures/saelens, made by its make.py): ours encode and decode as SAELens does."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench import edit_values, engine, sae
from workbench import interventions as iv
from workbench.errors import InputError
from workbench.runs import encode, run_edited

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
INDEX = json.loads((FIXTURES / "index.json").read_text())
PROMPT = "apple river stone cloud tiger piano apple river stone"


@pytest.mark.parametrize("name", sorted(INDEX["saes"]))
def test_every_saelens_kind_encodes_and_decodes_as_saelens_does(name):
    s = sae.load(FIXTURES / name)
    ref = load_file(str(FIXTURES / name / "reference.safetensors"))
    x = ref["x"]  # (6, 5, d_in) or, for hook_z, (6, 5, head, d_head)
    acts = s.encode(x)
    assert acts.shape == ref["feature_acts"].shape
    assert torch.allclose(acts, ref["feature_acts"], atol=1e-5, rtol=1e-5)
    assert torch.equal(acts > 0, ref["feature_acts"] > 0)  # the same features fire
    out = s.decode(ref["feature_acts"], like=x)
    assert out.shape == ref["sae_out"].shape == x.shape
    assert torch.allclose(out, ref["sae_out"], atol=1e-5, rtol=1e-5)
    assert torch.allclose(s(x), ref["sae_out"], atol=1e-4, rtol=1e-4)


def test_the_kinds_are_what_saelens_wrote():
    kinds = {name: sae.load(FIXTURES / name) for name in INDEX["saes"]}
    assert kinds["gated"].activation == "gated" and kinds["jumprelu"].activation == "jumprelu"
    assert kinds["topk_rescaled"].rescale_by_decoder_norm and kinds["topk"].k == 6
    assert kinds["standard_layer_norm"].normalize == "layer_norm"
    assert kinds["standard_constant_norm_rescale"].normalize == "constant_norm_rescale"
    assert kinds["hook_z"].site == "z" and kinds["hook_z"].layer == 1
    assert not kinds["no_b_dec_in"].apply_b_dec_to_input


def test_expected_average_only_in_folds_the_release_factor_as_from_pretrained_does():
    folder = FIXTURES / "standard_expected_average_only_in"
    ref = load_file(str(folder / "reference.safetensors"))
    plain = sae.load(folder)  # as SAELens's load_from_disk: no scaling
    assert torch.allclose(plain.encode(ref["x"]), ref["feature_acts"], atol=1e-5)
    assert "unscaled" in plain.meta["input_scaling"]
    folded = sae.load(folder, norm_scaling_factor=INDEX["norm_scaling_factor"])
    assert torch.allclose(folded.encode(ref["x"]), ref["folded_feature_acts"], atol=1e-5)
    assert torch.allclose(folded.decode(ref["folded_feature_acts"]), ref["folded_sae_out"], atol=1e-5)
    assert not torch.allclose(ref["feature_acts"], ref["folded_feature_acts"])  # the factor matters


def test_a_layer_norm_sae_needs_the_input_to_decode():
    s = sae.load(FIXTURES / "standard_layer_norm")
    with pytest.raises(ValueError, match="like=x"):
        s.decode(torch.zeros(s.d_sae))


def _copy(name, tmp_path, **cfg_changes):
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    cfg = json.loads((folder / "cfg.json").read_text()) | cfg_changes
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("arch", sorted(sae.UNSUPPORTED))
def test_every_architecture_that_cannot_be_read_is_named(arch, tmp_path):
    with pytest.raises(InputError, match=f"'{arch}'.*not one this workbench reads"):
        sae.load(_copy("standard", tmp_path, architecture=arch))


def test_a_gated_sae_without_its_gate_says_what_is_missing(tmp_path):
    folder = _copy("gated", tmp_path)
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    del tensors["b_gate"]
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    with pytest.raises(InputError, match="lacks b_gate, which a gated SAE needs"):
        sae.load(folder)
    with pytest.raises(InputError, match="covariance_whitening"):
        sae.load(_copy("standard", tmp_path / "w", normalize_activations="covariance_whitening"))


def test_a_saved_gated_sae_reads_back_the_same(tmp_path):
    s = sae.load(FIXTURES / "gated")
    again = sae.load(s.save(tmp_path / "again"))
    x = load_file(str(FIXTURES / "gated" / "reference.safetensors"))["x"]
    assert torch.equal(again.encode(x), s.encode(x))


def test_hook_z_feature_edits_go_through_the_z_site_head_by_head(circuits):
    """The hook_z SAE reads layer 1's four heads' z (4 × 32 = the circuits model's 128); a clamp changes each head by its
    slice of the decoder row, at the engine's z site; the same change typed by hand as a replace edit gives the same logits."""
    folder = FIXTURES / "hook_z"
    s = edit_values.load_sae(circuits, str(folder))
    hook = "blocks.1.attn.hook_z"
    ids, _ = encode(circuits, PROMPT)
    _, plain = run_edited(circuits, ids[None], names=[hook])
    z = plain[hook][0]  # (pos, head, d_head)
    (edit,) = iv.compile_edits(circuits, iv.EditSet.parse(f"clamp feature 7 4 sae={folder}"))
    assert edit.site == "z" and edit.layer == 1
    logits, got = run_edited(circuits, ids[None], [edit], names=[hook])
    a = s.encode(z)[:, 7]  # (pos,)
    expected = z + (4.0 - a)[:, None, None] * s.W_dec[7].reshape(4, 32)  # each head its own slice of the row
    assert torch.allclose(got[hook][0], expected, atol=1e-5)
    by_hand, _ = run_edited(circuits, ids[None], [engine.Edit("replace", "z", 1, value=expected[None])])
    assert torch.allclose(logits, by_hand, atol=1e-5)
    # steering along the feature adds its row to the heads, (head, d_head)
    _, got = run_edited(
        circuits, ids[None], iv.compile_edits(circuits, iv.EditSet.parse(f"steer - 2 feature feature=7 sae={folder}")), names=[hook]
    )
    assert torch.allclose(got[hook][0] - z, 2 * s.W_dec[7].reshape(4, 32).expand_as(z), atol=1e-5)


def test_a_hook_z_sae_of_the_wrong_width_is_refused():
    s = sae.load(FIXTURES / "hook_z")
    sae.check_fits(s, 64, 2, z_width=128)  # its width is the heads', not the residual stream's
    with pytest.raises(InputError, match="heads write 96"):
        sae.check_fits(s, 128, 2, z_width=96)


@pytest.mark.parametrize("name", ["hook_z", "gated", "standard_layer_norm"])
def test_a_users_saelens_folder_opens_in_the_features_views(circuits, name):
    """The Features page's readings of a user's folder (named by the folder, read at its hook): per-prompt features and
    the quality numbers, whose spliced run goes through the SAE's own site (z, per head, for hook_z)."""
    from workbench import features, sae_quality

    folder = str(FIXTURES / name)
    s = sae.load(folder)
    found = features.prompt_features_of(circuits, PROMPT, (folder,))
    (acts,) = found.acts.values()
    _, run = run_edited(circuits, encode(circuits, PROMPT)[0][None], names=[s.hook_name])
    assert torch.allclose(acts, s.encode(run[s.hook_name][0]), atol=1e-6)
    q = sae_quality.quality(circuits, s, (PROMPT + " ") * 4)
    assert q.tokens > 0 and q.loss_zero != q.loss_clean and q.variance_explained == q.variance_explained
