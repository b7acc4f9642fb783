"""Both zero ablations of a head, checked against plain `transformers` (the reference every HF user and nnsight share)."""

import pytest
import torch

from workbench import conventions, edit_values, families
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.model import load_model
from workbench.runs import encode, run_edited

PROMPT = "apple river stone cloud tiger piano apple river stone"


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, attn_implementation="eager").eval()


def _hf_logits(hf, ids, layer, head, d_head, value=None):
    """Plain transformers' logits (pos, d_vocab) with head `head`'s slice of the output projection's input set to `value` (None: 0)."""
    blk = hf.transformer.h[layer] if hasattr(hf, "transformer") else hf.gpt_neox.layers[layer]
    proj = blk.attn.c_proj if hasattr(blk, "attn") else blk.attention.dense

    def pre(module, args):
        (x,) = args
        x = x.clone()
        x[..., head * d_head : (head + 1) * d_head] = 0.0 if value is None else value
        return (x,)

    handle = proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return hf(ids[None]).logits[0]
    finally:
        handle.remove()


def _ours(model, ids, line):
    logits, _ = run_edited(model, ids[None], iv.compile_edits(model, iv.EditSet.parse(line)))
    return logits[0].float()


def test_zero_whole_is_plain_transformers_zero_and_zero_keeps_the_constant_output(circuits):
    """The circuits model (a 2-layer GPT-2, as NOTES' 16.62 vs 16.44): "zero-whole" is HF's zeroed head; "zero" is HF with the
    head's slice set to b_V + β·W_V, computed here from the HF weights by hand."""
    hf = _hf(circuits.info.source)
    ids, _ = encode(circuits, PROMPT)
    d, E = circuits.info.d_model, circuits.info.d_head
    blk = hf.transformer.h[1]
    W_V = blk.attn.c_attn.weight[:, 2 * d : 3 * d]  # Conv1D: (d_model, 3 d_model), values last
    b_V = blk.attn.c_attn.bias[2 * d : 3 * d]
    constant = (blk.ln_1.bias @ W_V + b_V)[1 * E : 2 * E].detach()  # (d_head,) head 1
    whole = _hf_logits(hf, ids, 1, 1, E)
    kept = _hf_logits(hf, ids, 1, 1, E, constant)
    assert torch.allclose(_ours(circuits, ids, "ablate head 1.1 zero-whole"), whole, atol=1e-4)
    assert torch.allclose(_ours(circuits, ids, "ablate head 1.1 zero"), kept, atol=1e-4)
    assert (whole - kept).abs().max() > 1e-2  # the two conventions really differ on this model
    assert torch.allclose(conventions.head_constants(circuits)[1, 1], constant, atol=1e-5)
    # an MLP's zero is the same in both, and equal to HF's zeroed MLP output
    mlp = hf.transformer.h[0].mlp
    handle = mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    with torch.no_grad():
        hf_mlp = hf(ids[None]).logits[0]
    handle.remove()
    for how in ("zero", "zero-whole"):
        assert torch.allclose(_ours(circuits, ids, f"ablate mlp 0 {how}"), hf_mlp, atol=1e-4)


def test_on_raw_weights_both_zeros_agree_and_mean_ablation_is_the_same_in_both_modes(circuits):
    raw = load_model("circuits", compatibility_mode=False)
    ids, _ = encode(raw, PROMPT)
    assert float(conventions.head_constants(raw).abs().max()) == 0.0
    assert torch.allclose(_ours(raw, ids, "ablate head 1.1 zero"), _ours(raw, ids, "ablate head 1.1 zero-whole"))
    # zero-whole in folded coordinates equals zero in raw ones: the convention, not the mode, decides
    assert torch.allclose(_ours(circuits, ids, "ablate head 1.1 zero-whole"), _ours(raw, ids, "ablate head 1.1 zero"), atol=1e-4)
    mean = "ablate head 1.1 mean; reference apple river stone|cloud tiger piano"
    assert torch.allclose(_ours(circuits, ids, mean), _ours(raw, ids, mean), atol=1e-4)


def test_zero_whole_on_a_parallel_block_family(tmp_path):
    """GPT-NeoX (LayerNorm with bias, QKV bias, parallel blocks): zero-whole is HF's zeroed head there too."""
    folder = families.build("gpt_neox", tmp_path / "neox")
    model = load_model(str(folder))
    hf = _hf(folder)
    ids, _ = encode(model, "the river and the stone")
    E = model.info.d_head
    assert torch.allclose(_ours(model, ids, "ablate head 1.2 zero-whole"), _hf_logits(hf, ids, 1, 2, E), atol=1e-4)
    assert (_ours(model, ids, "ablate head 1.2 zero") - _hf_logits(hf, ids, 1, 2, E)).abs().max() > 1e-3


def test_the_sweep_and_the_labels_name_the_convention(circuits):
    metric = iv.Metric("log-probability", circuits.tokenizer(" stone")["input_ids"][0])
    sweep = ivs.ablation_sweep(circuits, PROMPT, metric, "zero-whole")
    ids, _ = encode(circuits, PROMPT)
    one = _ours(circuits, ids, "ablate head 1.1 zero-whole")[-1:]
    assert abs(float(sweep.values[1, 1]) - float(metric.value(one))) < 1e-4
    assert "whole output" in sweep.provenance["settings"]["convention"]
    edits = iv.EditSet.parse("ablate head 1.1 zero; ablate head 1.2 zero-whole; ablate mlp 0 zero")
    assert edits.labels() == [
        "ablate L1H1 (zero, input-dependent output)",
        "ablate L1H2 (zero, whole output)",
        "ablate MLP 0 (zero)",
    ]
    assert str(iv.EditSet.parse(str(edits))) == str(edits)
    assert "transformer-lens" in edits.edits[0].convention and "plain transformers" in edits.edits[1].convention


@pytest.mark.parametrize("how", ["zero", "zero-whole"])
def test_the_probe_manifest_names_the_convention(how, tmp_path):
    import json

    from probes.__main__ import main

    out = tmp_path / "out"
    code = main(["intervene", "--model", "circuits", "--prompt", PROMPT, "--edits", f"ablate head 1.1 {how}", "--tokens", "2",
                 "--out", str(out), "--formats", "html"])  # fmt: skip
    assert code in (0, None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["conventions"].values()) == [conventions.ZERO_CONVENTIONS[how]]


def test_residual_vectors_are_centred_hf_hidden_states_and_steer_as_in_hf(circuits):
    """The audit's residual-stream numbers: a difference-of-means vector here is plain transformers' difference of hidden
    states minus its mean over d_model (conventions.RESIDUAL), and steering with it gives the logits that adding the HF
    vector in plain transformers gives (every layer norm removes the mean)."""
    hf = _hf(circuits.info.source)
    plus, minus = ("apple river stone", "cloud apple river"), ("tiger piano cloud", "piano tiger stone")
    ours = edit_values.difference_vector(circuits, plus, minus, 1)  # (d_model,) at blocks.1.hook_resid_pre

    def hf_mean(prompts):
        rows = []
        for p in prompts:
            ids, _ = encode(circuits, p, truncate=True)
            with torch.no_grad():
                rows.append(hf(ids[None], output_hidden_states=True).hidden_states[1][0, 1:])  # BOS left out, as ours
        return torch.cat(rows).mean(0)

    theirs = hf_mean(plus) - hf_mean(minus)
    assert torch.allclose(ours, theirs - theirs.mean(), atol=1e-4)
    ids, _ = encode(circuits, PROMPT)
    steered = _ours(
        circuits,
        ids,
        "steer 1 3 prompts plus="
        + "|".join(p.replace(" ", "%20") for p in plus)
        + " minus="
        + "|".join(p.replace(" ", "%20") for p in minus),
    )

    def add(module, args, kwargs):  # the block's input (positional or keyword) gains 3 × the HF vector at every position
        if args:
            return (args[0] + 3 * theirs, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + 3 * theirs}

    handle = hf.transformer.h[1].register_forward_pre_hook(add, with_kwargs=True)
    try:
        with torch.no_grad():
            hf_steered = hf(ids[None]).logits[0]
    finally:
        handle.remove()
    assert torch.allclose(steered, hf_steered, atol=1e-3)
