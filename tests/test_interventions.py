"""Interventions: exactness (nothing edited is bit-for-bit the model; an edit at layer l leaves everything before l alone),
values that land where they are asked, the induction and steering experiments of the issue, the batched head sweep
against one edited run per head, bad edits in one line, concurrent sessions, the page and the probe."""

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from workbench import edit_values as values
from workbench import engine, families, sae
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.edit_specs import HOW
from workbench.errors import InputError
from workbench.model import load_model
from workbench.runs import all_hook_names, encode, run_edited, run_tokens
from workbench.tokens import ordinary_token_ids

PROMPT = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old"
PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "9_Intervene.py")
SEA = ("the sea", "the ship", "the whale", "the waves", "the boat", "the sailors", "the ocean", "the shore")
NO_EDITS = iv.EditSet()
LAND = ("the house", "the room", "the lady", "the garden", "the parlour", "the carriage", "the letter", "the family")


def _ids(model, prompt=PROMPT) -> torch.Tensor:
    return encode(model, prompt)[0][None]


def _run(model, line: str | iv.EditSet, names=(), prompt=PROMPT):
    edits = iv.EditSet.parse(line) if isinstance(line, str) else line
    return run_edited(model, _ids(model, prompt), iv.compile_edits(model, edits), names=names)


def _orthonormal_sae(d_in: int, d_sae: int = 32, layer: int = 1) -> sae.SAE:
    """A ReLU SAE whose decoder rows are orthonormal and whose encoder is their transpose: a_f(x) = relu(x · d_f), exactly."""
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(0)))  # (d_in, d_sae), orthonormal columns
    return sae.SAE(
        hook_name=f"blocks.{layer}.hook_resid_pre", W_enc=q.clone(), b_enc=torch.zeros(d_sae), W_dec=q.T.contiguous(),
        b_dec=torch.zeros(d_in), activation="relu", apply_b_dec_to_input=False,
    )  # fmt: skip


# ---- the edit set as data ------------------------------------------------------------------------------


def test_the_compact_line_and_the_mapping_round_trip():
    line = (
        "ablate head 1.2 mean; ablate mlp 0 zero positions=1,2; ablate neuron 0.37 resample; clamp neuron 1.5 -3.5; "
        "ablate feature 7 zero sae=blocks.1.hook_resid_pre; clamp feature 3 2.5 sae=/tmp/x; "
        "steer 1 4 prompts plus=the%20sea|a%3Bb%7Cc minus=the%20house; steer 0 -2 file path=/tmp/v.npy site=resid_post; "
        "steer - 3 feature feature=4 sae=blocks.1.hook_resid_pre; resample Once%20upon%3B%20a%20time; reference a%20b|c%3Dd"
    )
    edits = iv.EditSet.parse(line)
    assert len(edits.edits) == 9 and edits.resample == "Once upon; a time" and edits.reference == ("a b", "c=d")
    assert edits.edits[6].plus == ("the sea", "a;b|c") and edits.edits[1].positions == (1, 2)
    assert iv.EditSet.parse(str(edits)) == edits
    assert iv.EditSet.from_dict(json.loads(json.dumps(edits.to_dict()))) == edits
    assert iv.EditSet.from_dict({"edits": line}) == edits  # a file may hold the line itself
    assert iv.EditSet.from_dict({"edits": line, "resample": "x"}).resample == "x"


@pytest.mark.parametrize(
    "line, says",
    [
        ("ablate head one mean", "LAYER.INDEX"),
        ("snip head 1.2", "ablate, clamp or steer"),
        ("ablate spleen 1 zero", "unknown unit"),
        ("clamp head 1.2 3", "unknown unit"),
        ("steer 1", "steer LAYER COEFFICIENT"),
        ("steer 1 x", "must be a number"),
        ("ablate head 1.2 mean positions=a", "positions are whole numbers"),
    ],
)
def test_a_line_that_does_not_read_names_the_edit_in_one_line(line, says):
    with pytest.raises(InputError) as err:
        iv.EditSet.parse("ablate head 0.0 zero; " + line)
    assert says in str(err.value) and "edit 2" in str(err.value) and "\n" not in str(err.value)


# ---- exactness ------------------------------------------------------------------------------------------


def test_no_edit_and_a_zero_vector_leave_the_logits_bit_for_bit(english, tmp_path):
    plain, _ = run_tokens(english, _ids(english))
    assert iv.compile_edits(english, iv.EditSet()) == []
    np.save(tmp_path / "zero.npy", np.zeros(english.info.d_model, dtype=np.float32))
    for line in (
        "",
        f"steer 1 5 file path={tmp_path / 'zero.npy'}",
        f"steer 0 3 file path={tmp_path / 'zero.npy'} site=resid_post positions=2,5",
        "steer 1 0 prompts plus=the%20sea minus=the%20house",
        "steer 1 2 prompts plus=the%20sea minus=the%20sea",  # the same prompts on both sides: a zero vector
    ):
        logits, _ = _run(english, line)
        assert torch.equal(logits, plain), line
    r = iv.intervene(english, PROMPT, iv.EditSet(), sampling=iv.Sampling(max_new_tokens=4))
    assert torch.equal(r.kl, torch.zeros_like(r.kl)) and r.before == r.after and not any(r.differs)
    assert r.original.text == r.edited.text


def test_an_edit_at_layer_l_leaves_every_activation_before_it_unchanged(english, tmp_path):
    folder = _orthonormal_sae(english.info.d_model).save(tmp_path / "sae")
    layer0 = [n for n in all_hook_names(english) if not n.startswith("blocks.1.") and n != "ln_final.hook_scale"]
    before_site = {  # activations of layer 1 that come before each edit's site
        "ablate head 1.2 mean": ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.1.attn.hook_pattern"],
        "ablate mlp 1 zero": ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.1.mlp.hook_post"],
        "ablate neuron 1.5 mean": ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.mlp.hook_pre"],
        "clamp neuron 1.5 3": ["blocks.1.hook_resid_mid", "blocks.1.mlp.hook_pre"],
        "steer 1 4 prompts plus=the%20sea minus=the%20house": [],
        f"ablate feature 3 zero sae={folder}": [],
        f"steer - 2 feature feature=3 sae={folder}": [],
    }
    names = layer0 + sorted({n for v in before_site.values() for n in v})
    plain_logits, plain = run_edited(english, _ids(english), names=names)
    for line, later in before_site.items():
        logits, edited = _run(english, line, names)
        for n in layer0 + later:
            assert torch.equal(edited[n], plain[n]), (line, n)
        assert not torch.equal(logits, plain_logits), line  # the edit did something


# ---- values land where they are asked ------------------------------------------------------------------


def test_mean_resample_and_clamp_put_the_values_asked_for(english):
    reference = ("The sea was calm that night.", "She wrote a long letter to her sister.")
    z = "blocks.1.attn.hook_z"
    # mean: by hand, over the reference prompts' positions after BOS
    by_hand = torch.cat([run_tokens(english, _ids(english, p), [z])[1][z][0, 1:, 2] for p in reference]).mean(0)  # (d_head,)
    _, got = _run(english, iv.EditSet((iv.Ablate("head", 1, 2, "mean"),), reference=reference), [z])
    assert torch.allclose(got[z][0, :, 2], by_hand.expand(got[z].shape[1], -1), atol=1e-6)
    # resample: the other prompt's activation, position by position, up to its end
    other = "The whale swam on."
    theirs = run_tokens(english, _ids(english, other), [z])[1][z][0, :, 2]
    plain = run_tokens(english, _ids(english), [z])[1][z][0]
    _, got = _run(english, iv.EditSet((iv.Ablate("head", 1, 2, "resample"),), resample=other), [z])
    n = len(theirs)
    assert torch.equal(got[z][0, :n, 2], theirs) and torch.equal(got[z][0, n:, 2], plain[n:, 2])
    assert torch.equal(got[z][0, :, [0, 1, 3]], plain[:, [0, 1, 3]])  # the other heads untouched
    # clamp a neuron at chosen positions only
    post = "blocks.0.mlp.hook_post"
    plain = run_tokens(english, _ids(english), [post])[1][post][0]
    _, got = _run(english, "clamp neuron 0.37 4.5 positions=2,3,999", [post])
    assert (got[post][0, [2, 3], 37] == 4.5).all()
    keep = torch.ones_like(plain, dtype=torch.bool)
    keep[[2, 3], 37] = False
    assert torch.equal(got[post][0][keep], plain[keep])


def test_feature_edits_on_an_sae_with_known_decoder_rows(english, tmp_path):
    s = _orthonormal_sae(english.info.d_model)
    folder = s.save(tmp_path / "sae")
    hook = s.hook_name
    _, plain = run_edited(english, _ids(english), names=[hook])
    x = plain[hook][0]  # (pos, d_model)
    f = int(s.encode(x)[1:].sum(0).argmax())  # a feature that is active on this prompt
    _, got = _run(english, f"ablate feature {f} zero sae={folder}", [hook])
    assert torch.allclose(s.encode(got[hook][0])[:, f], torch.zeros(len(x)), atol=1e-5)
    _, got = _run(english, f"clamp feature {f} 5 sae={folder} positions=3", [hook])
    assert abs(float(s.encode(got[hook][0])[3, f]) - 5.0) < 1e-4
    assert torch.equal(got[hook][0][[0, 1, 2]], x[[0, 1, 2]])
    _, got = _run(english, f"steer - 2.5 feature feature={f} sae={folder}", [hook])
    assert torch.allclose(got[hook][0] - x, 2.5 * s.W_dec[f].expand_as(x), atol=1e-5)
    with pytest.raises(InputError, match="out of range"):
        iv.compile_edits(english, iv.EditSet.parse(f"ablate feature 32 zero sae={folder}"))


# ---- the experiments ---------------------------------------------------------------------------


def _copy_losses(model, edits: iv.EditSet, n: int = 20, seqs: int = 16) -> tuple[float, float]:
    """(loss on the first copy, loss on the second) of random word sequences repeated once, BOS first."""
    words = ordinary_token_ids(model.tokenizer, model.info.d_vocab)
    gen = torch.Generator().manual_seed(1)
    seq = torch.stack([words[torch.randperm(len(words), generator=gen)[:n]] for _ in range(seqs)])
    tokens = torch.cat([torch.full((seqs, 1), model.bos_id), seq, seq], 1)  # (seqs, 1 + 2n)
    logits, _ = run_edited(model, tokens, iv.compile_edits(model, edits))
    nll = -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # (seqs, 2n): predicting tokens 1..2n
    return float(nll[:, 1:n].mean()), float(nll[:, n + 1 :].mean())  # the first token of each copy is unpredictable


def _heads(*cells) -> iv.EditSet:
    return iv.EditSet(tuple(iv.Ablate("head", layer, head, "mean") for layer, head in cells))


def test_mean_ablating_the_induction_heads_raises_the_second_copy_loss_to_the_first(circuits, answer_key):
    # the trained model: induction is spread over all four layer-1 heads (each scores 0.27-0.36)
    first, second = _copy_losses(circuits, iv.EditSet())
    assert second < 0.2 * first  # it copies
    first_ablated, second_ablated = _copy_losses(circuits, _heads(*((1, h) for h in range(4))))
    assert second_ablated > 0.8 * first_ablated and second_ablated > 10 * second
    # Its four layer-0 heads are all previous-token heads, the other half of the same circuit, so the trained model
    # has no "other" heads to ablate as a control; the constructed model has: its mechanism is L0H0 -> L1H0 exactly.
    first, second = _copy_losses(answer_key, iv.EditSet())
    first_ablated, second_ablated = _copy_losses(answer_key, _heads((1, 0)))
    assert second < 0.05 * first and second_ablated > 0.8 * first_ablated
    others = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    for seed in range(3):
        picked = [others[i] for i in torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))[:1]]
        _, second_other = _copy_losses(answer_key, _heads(*picked))
        assert second_other < 0.05 * first, picked
    _, second_other = _copy_losses(answer_key, _heads(*others))  # all six at once
    assert second_other < 0.05 * first


def test_a_difference_vector_raises_the_answer_tokens_on_held_out_prompts(english):
    tok = english.tokenizer
    answers = [tok(t, add_special_tokens=False)["input_ids"][0] for t in (" sea", " ship", " whale", " boat")]
    held = values.reference_prompts(english)
    steer = iv.Steer(1, 1.0, "prompts", SEA, LAND)
    s = ivs.steering_sweep(english, steer, answers, held[:8], held[8:16], (0, 1, 2, 4))
    assert float(s.coefficients[0]) == 0 and float(s.kl_neutral[0]) == 0  # coefficient 0 is the model itself
    assert s.answer[1] > 1.5 * s.answer[0] and s.answer[2] > 2 * s.answer[0]  # the answer tokens' probability rises
    assert (s.kl_neutral[1:] > 0).all() and (s.kl_neutral.diff() > 0).all()  # and the damage on neutral text grows with it
    assert len(s.rows()) == 4 and {"coefficient", "answer_probability", "kl_neutral"} <= set(s.rows()[0])
    # the steering edit itself, on one held-out prompt: the same rise, by hand from the logits
    plain, _ = run_edited(english, encode(english, held[0])[0][None])
    steered, _ = run_edited(
        english, encode(english, held[0])[0][None], iv.compile_edits(english, iv.EditSet((dataclasses.replace(steer, coefficient=2.0),)))
    )
    assert steered.softmax(-1)[0, 1:, answers].sum(-1).mean() > 2 * plain.softmax(-1)[0, 1:, answers].sum(-1).mean()


# ---- bad edits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, says",
    [
        ("ablate head 1.7 mean", "head 1.7 does not exist"),
        ("ablate head 5.0 zero", "layer 5 does not exist"),
        ("ablate neuron 0.9999 zero", "neuron 0.9999 does not exist"),
        ("steer 1 nan prompts plus=a minus=b", "finite number"),
        ("clamp neuron 0.3 inf", "finite number"),
        ("steer 1 2 file path=WIDE", "width 128"),
        ("ablate feature 99 zero sae=SAE", "out of range"),
        ("ablate head 1.2 resample", "needs a prompt to resample from"),
        ("steer 1 2 prompts plus=a", "both sides"),
        ("ablate feature 1 zero", "name the SAE"),
        ("steer 1 2 file path=/no/such.npy", "no vector file"),
    ],
)
def test_bad_edits_get_one_clear_line_each(english, tmp_path, line, says):
    np.save(tmp_path / "wide.npy", np.ones(english.info.d_model + 1, dtype=np.float32))
    folder = _orthonormal_sae(english.info.d_model).save(tmp_path / "sae")
    line = line.replace("WIDE", str(tmp_path / "wide.npy")).replace("SAE", str(folder))
    with pytest.raises(InputError) as err:
        iv.compile_edits(english, iv.EditSet.parse(line))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_vector_file_of_every_format_is_read_and_checked(english, tmp_path):
    from safetensors.torch import save_file

    v = torch.randn(english.info.d_model)
    np.save(tmp_path / "v.npy", v.numpy())
    torch.save(v, tmp_path / "v.pt")
    save_file({"vector": v}, str(tmp_path / "v.safetensors"))
    for name in ("v.npy", "v.pt", "v.safetensors"):
        assert torch.equal(values.load_vector(tmp_path / name, english.info.d_model), v)
    save_file({"a": v, "b": v.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(InputError, match="name the steering vector 'vector'"):
        values.load_vector(tmp_path / "two.safetensors", english.info.d_model)


# ---- the head sweep -------------------------------------------------------------------------------------


def _per_head(model, prompt, metric, how, edits=NO_EDITS) -> torch.Tensor:
    """The reference: one edited run per head."""
    i = model.info
    out = torch.empty(i.n_layers, i.n_heads)
    for layer in range(i.n_layers):
        for head in range(i.n_heads):
            one = dataclasses.replace(edits, edits=(iv.Ablate("head", layer, head, how),))
            logits, _ = run_edited(model, _ids(model, prompt), iv.compile_edits(model, one), last_only=True)
            out[layer, head] = metric.value(logits[:, -1].float())[0]
    return out


@pytest.mark.parametrize("how", HOW)
def test_the_batched_head_sweep_equals_one_edited_run_per_head(english, how):
    metric = iv.Metric("logit difference", english.tokenizer(" whale")["input_ids"][0], english.tokenizer(" man")["input_ids"][0])
    edits = iv.EditSet(resample="Once upon a time a man walked to the old house by the river. Once upon a")  # shorter than PROMPT
    s = ivs.ablation_sweep(english, PROMPT, metric, how, edits)
    assert s.backend == "engine" and s.values.shape == (2, 4)
    assert torch.allclose(s.values, _per_head(english, PROMPT, metric, how, edits), atol=1e-4)
    plain, _ = run_edited(english, _ids(english), last_only=True)
    assert abs(s.before - float(metric.value(plain[:, -1]))) < 1e-4
    ranked = s.ranked()
    assert len(ranked) == 8 and abs(ranked[0]["effect"]) == float(s.effect.abs().max())


def _hf_ids(model, prompt: str) -> torch.Tensor:
    """(1, pos) BOS + the prompt's tokens, the model's context's last tokens if it is longer (the tokenizer alone)."""
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"][-(model.info.n_ctx - 1) :]
    return torch.tensor([[model.bos_id, *ids]])


@torch.no_grad()
def _hf_z(hf, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (pos, head, d_head): each head's output before c_proj in plain transformers (its value bias included)."""
    H = hf.config.n_head
    seen = {}
    hooks = [
        b.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0])) for i, b in enumerate(hf.transformer.h)
    ]
    try:
        hf(ids)
    finally:
        for h in hooks:
            h.remove()
    return [seen[i].reshape(ids.shape[1], H, -1) for i in range(len(hf.transformer.h))]


@pytest.mark.parametrize("how", HOW)
def test_the_head_sweep_equals_plain_transformers_with_each_head_set_by_hand(english, how):
    """Each head's slice of c_proj's input set in plain transformers to what the ablation means there: zero keeps the
    head's constant output b_V + β_ln1 · W_V (compatibility mode's z = 0), zero-whole is 0, mean is transformers' own
    mean over the reference prompts' non-BOS positions, resample is the resample prompt's run, position by position."""
    from tests.references import hf_model

    hf = hf_model(english)
    tok = english.tokenizer
    answer, wrong = tok(" whale")["input_ids"][0], tok(" man")["input_ids"][0]
    resample = "Once upon a time a man walked to the old house by the river. Once upon a"
    s = ivs.ablation_sweep(english, PROMPT, iv.Metric("logit difference", answer, wrong), how, iv.EditSet(resample=resample))
    ids = _hf_ids(english, PROMPT)
    d, H = english.info.d_model, english.info.n_heads
    E = d // H
    if how == "mean":
        zs = [_hf_z(hf, _hf_ids(english, p)) for p in values.reference_prompts(english)]
        means = [torch.cat([z[layer][1:] for z in zs]).mean(0) for layer in range(english.info.n_layers)]  # (head, d_head)
    if how == "resample":
        again = _hf_z(hf, _hf_ids(english, resample))
    want = torch.empty(english.info.n_layers, H)
    for layer, block in enumerate(hf.transformer.h):
        constant = (block.ln_1.bias @ block.attn.c_attn.weight[:, 2 * d :] + block.attn.c_attn.bias[2 * d :]).view(H, -1).detach()
        for head in range(H):

            def set_head(m, args, layer=layer, head=head, constant=constant):
                z = args[0].clone()  # (1, pos, d_model): heads side by side
                cols = slice(head * E, (head + 1) * E)
                if how == "zero":
                    z[..., cols] = constant[head]
                elif how == "zero-whole":
                    z[..., cols] = 0.0
                elif how == "mean":
                    z[..., cols] = means[layer][head]
                else:
                    n = min(z.shape[1], again[layer].shape[0])
                    z[0, :n, cols] = again[layer][:n, head]
                return (z,)

            handle = block.attn.c_proj.register_forward_pre_hook(set_head)
            try:
                with torch.no_grad():
                    logits = hf(ids).logits[0, -1]
            finally:
                handle.remove()
            want[layer, head] = logits[answer] - logits[wrong]
    with torch.no_grad():
        plain = hf(ids).logits[0, -1]
    assert s.before == pytest.approx(float(plain[answer] - plain[wrong]), abs=1e-4)
    assert torch.allclose(s.values, want, atol=1e-4), (s.values - want).abs().max()
    assert (want - s.before).abs().max() > 0.05  # some head matters, so the comparison can fail


def test_the_steering_sweep_equals_plain_transformers_with_the_vector_added_by_hand(english):
    """The difference vector from transformers' hidden states (mean over non-BOS positions, plus minus minus), added to
    block 1's input by a pre-hook; the answer tokens' probability and the KL on neutral prompts computed here."""
    from tests.references import hf_model

    hf = hf_model(english)
    tok = english.tokenizer
    answers = [tok(t, add_special_tokens=False)["input_ids"][0] for t in (" sea", " ship", " whale", " boat")]
    held = values.reference_prompts(english)
    coefficients = (0, 1, 2, 4)
    s = ivs.steering_sweep(english, iv.Steer(1, 1.0, "prompts", SEA, LAND), answers, held[:8], held[8:16], coefficients)

    def mean_resid(prompts):
        with torch.no_grad():
            return torch.cat([hf(_hf_ids(english, p), output_hidden_states=True).hidden_states[1][0, 1:] for p in prompts]).mean(0)

    vector = mean_resid(SEA) - mean_resid(LAND)  # (d_model,)

    def logits(prompt, c):
        handle = hf.transformer.h[1].register_forward_pre_hook(lambda m, args: (args[0] + c * vector, *args[1:]))
        try:
            with torch.no_grad():
                return hf(_hf_ids(english, prompt)).logits[0, 1:].float()  # (pos, d_vocab), BOS's prediction left out
        finally:
            handle.remove()

    answer = torch.tensor([[logits(p, c).softmax(-1)[:, answers].sum(-1).mean() for c in coefficients] for p in held[:8]]).mean(0)
    damage = []
    for p in held[8:16]:
        lp = logits(p, 0).log_softmax(-1)
        damage.append([float((lp.exp() * (lp - logits(p, c).log_softmax(-1))).sum(-1).mean()) for c in coefficients])
    assert torch.allclose(s.answer, answer, atol=1e-5, rtol=1e-4)
    assert torch.allclose(s.kl_neutral, torch.tensor(damage).mean(0), atol=1e-5, rtol=1e-3)
    assert answer[2] > 2 * answer[0]  # the steering does something, so the comparison can fail


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_the_head_sweep_on_other_families(tmp_path, family):
    model = load_model(str(families.build(family, tmp_path / family)))
    prompt = "apple river stone cloud tiger piano apple river"
    metric = iv.Metric("log-probability", 7)
    s = ivs.ablation_sweep(model, prompt, metric, "mean")
    assert s.backend == "engine"
    assert torch.allclose(s.values, _per_head(model, prompt, metric, "mean"), atol=1e-4)


def test_the_head_sweep_runs_through_the_hooks_when_the_engine_disagrees(circuits):
    prompt = "apple river stone cloud tiger piano apple river stone"
    metric = iv.Metric("probability", circuits.tokenizer(" cloud")["input_ids"][0])
    right = ivs.ablation_sweep(circuits, prompt, metric, "zero")
    saved = engine.weights_of(circuits)
    circuits.state.weights = dataclasses.replace(saved, embed_scale=2.0)
    try:
        s = ivs.ablation_sweep(circuits, prompt, metric, "zero")
    finally:
        circuits.state.weights = saved
    assert s.backend == "bridge hooks" and "differ from the model's" in s.note
    assert torch.allclose(s.values, right.values, atol=1e-5)


# ---- the experiment as a whole ---------------------------------------------------------------------------


def test_intervene_reports_both_runs(english):
    edits = iv.EditSet.parse("ablate head 1.0 mean; ablate head 1.2 mean; ablate head 1.3 mean")
    whale = english.tokenizer(" whale")["input_ids"][0]
    r = iv.intervene(english, PROMPT, edits, iv.Metric("probability", whale), iv.Sampling(max_new_tokens=5))
    plain, _ = run_edited(english, _ids(english))
    edited, _ = run_edited(english, _ids(english), iv.compile_edits(english, edits))
    assert r.before == pytest.approx(float(plain[0, -1].softmax(-1)[whale]), abs=1e-6)
    assert r.after == pytest.approx(float(edited[0, -1].softmax(-1)[whale]), abs=1e-6)
    assert r.after < 0.5 * r.before  # the induction heads carried " whale"
    p, q = plain[0].log_softmax(-1), edited[0].log_softmax(-1)
    assert torch.allclose(r.kl, (p.exp() * (p - q)).sum(-1), atol=1e-5)
    assert r.original.steps[0].chosen_label == "␣whale" and r.edited.steps[0].chosen_label != "␣whale"
    assert r.differs == [a.chosen_id != b.chosen_id for a, b in zip(r.original.steps, r.edited.steps, strict=True)]
    assert r.provenance["settings"]["edits"] == str(edits)
    assert len(r.rows()) >= 10 and r.continuation_rows()[0]["differs"]
    assert english.attached_hooks() == []


def test_concurrent_sessions_see_only_their_own_edits(english):
    lines = ["", "ablate head 1.0 mean", "ablate mlp 0 zero", "steer 1 4 prompts plus=the%20sea minus=the%20house",
             "clamp neuron 1.3 5", "ablate head 0.1 zero; ablate head 1.2 zero", "ablate neuron 0.7 mean", "steer 0 -3 prompts plus=a minus=b"]  # fmt: skip
    prompts = [f"{w} cat sat on the mat. The cat sat on the" for w in ("The", "A", "My", "His", "Her", "One", "That", "This")]

    def session(i):
        r = iv.intervene(english, prompts[i], iv.EditSet.parse(lines[i]), sampling=iv.Sampling(max_new_tokens=3))
        return [r.kl, r.edited_probs, torch.tensor([s.chosen_id for s in r.edited.steps]), torch.tensor([r.after])]

    alone = {i: session(i) for i in range(8)}
    got, errors = {}, []
    barrier = threading.Barrier(8)

    def run(i):
        try:
            barrier.wait()
            for k in range(2):
                got[i, k] = session(i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(got) == 16
    for (i, _), tensors in got.items():
        for a, b in zip(tensors, alone[i], strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), i
    assert english.attached_hooks() == []


# ---- the page and the probe -------------------------------------------------------------------------------


def test_the_page_shows_both_runs_keeps_a_bad_edit_out_and_puts_the_edits_in_the_link():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["wb.model"] = "english"
    at.run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 3  # next token, KL by position, continuations
    assert any("ablate L1H0 (mean)" in m.value for m in at.markdown)
    good = at.session_state["wb.edits"]
    at.text_area(key="w.edits_text").set_value("ablate head 1.9 mean")
    next(b for b in at.button if b.label == "Apply").click()
    at.run()
    assert not at.exception and any("head 1.9 does not exist" in e.value for e in at.error)
    assert at.session_state["wb.edits"] == good and at.text_area(key="w.edits_text").value == "ablate head 1.9 mean"
    at.selectbox(key="w.add_kind").set_value("ablate a neuron").run()
    at.number_input(key="w.add_neuron").set_value(37).run()
    at.button(key="w.add").click().run()
    assert not at.exception and at.session_state["wb.edits"].endswith("ablate neuron 1.37 zero")
    at.button(key="w.run_head_sweep").click().run()
    assert not at.exception and len(at.get("plotly_chart")) == 4
    assert at.query_params["edits"] == [at.session_state["wb.edits"]] or at.query_params["edits"] == at.session_state["wb.edits"]


def test_a_shared_link_reproduces_the_experiment():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.query_params["model"] = "circuits"
    at.query_params["prompt"] = "apple river stone cloud tiger apple river stone"
    at.query_params["edits"] = "ablate head 1.0 zero; steer 1 2 prompts plus=apple minus=river"
    at.query_params["tokens"] = "3"
    at.run()
    assert not at.exception and not at.error
    assert any("ablate L1H0 (zero, input-dependent output)" in m.value and "steer +2" in m.value for m in at.markdown)


def test_the_probe_runs_a_spec_file_and_refuses_a_bad_one_in_one_line(tmp_path, capsys):
    from probes.__main__ import main

    spec = tmp_path / "edits.yaml"
    spec.write_text(
        "model: circuits\nprompt: apple river stone cloud tiger apple river stone\n"
        "edits:\n  - {kind: ablate, unit: head, layer: 1, index: 0, how: mean}\n  - {kind: steer, layer: 1, coefficient: 2, plus: [apple], minus: [river]}\n"
        "tokens: 4\nhead_sweep: zero\nsteer_answers: [' cloud']\ncoefficients: [0, 1, 2]\n"
    )
    assert main(["intervene", "--spec", str(spec), "--out", str(tmp_path / "out"), "--formats", "html"]) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["edit_set"].startswith("ablate head 1.0 mean; steer 1 2 prompts")
    for name in ("intervene.json", "intervene.csv", "intervene-continuations.csv", "edits.json", "continuations.txt",
                 "intervene-next-token.html", "intervene-heads-zero.html", "intervene-steering.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    assert iv.EditSet.from_dict(json.loads((out / "edits.json").read_text())) == iv.EditSet.parse(manifest["edit_set"])
    spec.write_text("model: circuits\nedits: ablate head 1.9 mean\n")
    capsys.readouterr()
    assert main(["intervene", "--spec", str(spec), "--out", str(tmp_path / "bad"), "--formats", "html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: head 1.9 does not exist: this model has heads 0 to 3 in each of layers 0 to 1"


def test_the_pages_spec_file_reruns_the_same_experiment_in_the_probe(circuits, tmp_path):
    from probes.__main__ import main

    prompt = "apple river stone cloud tiger apple river stone"
    edits = iv.EditSet.parse("ablate head 1.1 resample; resample tiger piano candle garden apple river stone cloud")
    cloud = circuits.tokenizer(" cloud")["input_ids"][0]
    r = iv.intervene(circuits, prompt, edits, iv.Metric("log-probability", cloud), iv.Sampling(max_new_tokens=3, greedy=False, seed=4))
    spec = {"model": "circuits", "prompt": prompt, **edits.to_dict(), "metric": "log-probability", "answer": " cloud"}
    spec |= {"tokens": 3, "sampling": "sampled", "seed": 4}  # what the page's download holds
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["intervene", "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "out"), "--formats", "html"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metric"]["before"] == pytest.approx(r.before, abs=1e-6) and manifest["metric"]["after"] == pytest.approx(
        r.after, abs=1e-6
    )
    assert (tmp_path / "out" / "continuations.txt").read_text().splitlines()[2] == f"edited: {r.edited.text}"


def test_a_shared_server_reads_vectors_and_saes_only_under_its_folder(english, tmp_path, monkeypatch):
    inside, outside = tmp_path / "root", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    for folder in (inside, outside):
        np.save(folder / "v.npy", np.zeros(english.info.d_model, dtype=np.float32))
        _orthonormal_sae(english.info.d_model).save(folder / "sae")
    monkeypatch.setenv("WORKBENCH_MODEL_ROOT", str(inside))
    iv.compile_edits(english, iv.EditSet.parse(f"steer 1 2 file path=v.npy; ablate feature 1 zero sae={inside / 'sae'}"))
    for line in (
        f"steer 1 2 file path={outside / 'v.npy'}",
        "steer 1 2 file path=../elsewhere/v.npy",
        f"ablate feature 1 zero sae={outside / 'sae'}",
    ):
        with pytest.raises(InputError, match="only from"):
            iv.compile_edits(english, iv.EditSet.parse(line))


def test_a_shipped_sae_feature_is_ablated_by_its_hook_name_as_the_sae_itself_would(english):
    hook = "blocks.1.hook_resid_pre"
    shipped = sae.saes_of(english)[hook]
    ids = encode(english, PROMPT)[0][None]  # (1, pos)
    _, cache = run_tokens(english, ids, names=[hook])
    feature = int(shipped.encode(cache[hook][0, -1]).argmax())  # the strongest feature at the last position
    edits = iv.EditSet.parse(f"ablate feature {feature} zero sae={hook}")
    ours, _ = run_edited(english, ids, iv.compile_edits(english, edits))
    want, _ = run_edited(english, ids, [shipped.clamp_edit(feature, 0.0)])
    assert torch.allclose(ours, want, atol=1e-5)
    assert not torch.allclose(ours[0, -1], run_tokens(english, ids)[0][0, -1], atol=1e-4)
