import pytest
import torch

from tests.references import hf_model
from workbench.errors import InputError
from workbench.generate import Sampling, generate, sampling_distribution
from workbench.runs import encode, next_token_topk, run_prompt, run_tokens


def test_topk_is_sorted_and_matches_the_logits(english):
    run = run_prompt(english, "It was the best of")
    top = next_token_topk(english, run, k=5)
    probs = run.logits[-1].softmax(-1)
    assert top.ids == probs.topk(5).indices.tolist()
    assert top.probs == sorted(top.probs, reverse=True)
    assert abs(top.probs[0] - probs.max().item()) < 1e-6
    with pytest.raises(InputError):
        next_token_topk(english, run, k=0)
    with pytest.raises(InputError):
        next_token_topk(english, run, position=run.n_tokens)


@torch.no_grad()
def _hf_next_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    """(d_vocab,) plain transformers' next-token logits after ids (pos,), the whole sequence run again."""
    return hf(ids[None]).logits[0, -1].float()


def test_greedy_generation_follows_plain_transformers_argmax(english):
    hf = hf_model(english)
    prompt = "My dear sister,"
    gen = generate(english, prompt, Sampling(max_new_tokens=6))
    assert len(gen.steps) == 6
    ids = encode(english, prompt)[0]
    for step in gen.steps:
        logits = _hf_next_logits(hf, ids)
        assert step.chosen_id == int(logits.argmax())
        assert step.chosen_prob == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)
        ids = torch.cat([ids, torch.tensor([step.chosen_id])])
    assert gen.text == english.tokenizer.decode([s.chosen_id for s in gen.steps])


def test_sampling_is_reproducible_by_seed(english):
    hf = hf_model(english)
    s = Sampling(max_new_tokens=8, greedy=False, temperature=1.2, top_k=50, seed=7)
    a, b = generate(english, "The whale", s), generate(english, "The whale", s)
    assert a.text == b.text
    # every drawn token was possible under the settings (top 50 of plain transformers' logits), and its recorded
    # probability is the model's own
    ids = encode(english, "The whale")[0]
    for step in a.steps:
        logits = _hf_next_logits(hf, ids)
        assert step.chosen_id in logits.topk(50).indices.tolist()
        assert step.chosen_prob == pytest.approx(float(logits.softmax(-1)[step.chosen_id]), abs=1e-5)
        ids = torch.cat([ids, torch.tensor([step.chosen_id])])


def test_the_induction_model_completes_a_repeat(answer_key):
    gen = generate(answer_key, "apple river stone cloud tiger piano candle apple river stone", Sampling(max_new_tokens=4))
    assert gen.text.split() == ["cloud", "tiger", "piano", "candle"]


def test_sampling_distribution_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    p = sampling_distribution(logits, Sampling(greedy=False, top_k=2))
    assert (p > 0).sum() == 2 and torch.isclose(p.sum(), torch.tensor(1.0))
    full = logits.softmax(-1)
    p = sampling_distribution(logits, Sampling(greedy=False, top_p=0.8))
    kept = int((p > 0).sum())
    assert full[: kept - 1].sum() < 0.8 <= full[:kept].sum()
    hot = sampling_distribution(logits, Sampling(greedy=False, temperature=10.0))
    assert hot.max() < full.max()
    g = sampling_distribution(logits, Sampling())
    assert g.tolist() == [1.0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "settings",
    [
        Sampling(max_new_tokens=0),
        Sampling(greedy=False, temperature=0.0),
        Sampling(greedy=False, temperature=float("nan")),
        Sampling(top_k=-1),
        Sampling(top_p=0.0),
        Sampling(top_p=1.5),
    ],
)
def test_bad_settings_are_refused(english, settings):
    with pytest.raises(InputError):
        generate(english, "Hello", settings)


def test_generation_with_an_edit_is_plain_transformers_with_the_edit_and_leaves_the_model_as_it_was(english):
    """Layer 1's heads ablated (z = 0 in compatibility mode) against plain transformers with those heads' slices of
    c_proj's input set to their constant output b_V + β_ln1 · W_V (tests/test_conventions.py measures the convention)."""
    from workbench import engine

    prompt = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the"
    s = Sampling(max_new_tokens=6)
    plain = generate(english, prompt, s)
    edited = generate(english, prompt, s, edits=[engine.Edit("ablate", "z", 1, head=h) for h in range(english.info.n_heads)])
    again = generate(english, prompt, s)
    assert [st.chosen_id for st in again.steps] == [st.chosen_id for st in plain.steps]
    assert [st.chosen_prob for st in edited.steps] != [st.chosen_prob for st in plain.steps]
    assert "edits" in edited.provenance["settings"] and "edits" not in plain.provenance["settings"]
    hf = hf_model(english)
    block, d = hf.transformer.h[1], english.info.d_model
    constant = (block.ln_1.bias @ block.attn.c_attn.weight[:, 2 * d :] + block.attn.c_attn.bias[2 * d :]).detach()  # (d_model,)
    handle = block.attn.c_proj.register_forward_pre_hook(lambda m, args: (constant.expand_as(args[0]).clone(),))
    try:
        ids = encode(english, prompt)[0]
        for step in edited.steps:
            logits = _hf_next_logits(hf, ids)
            assert step.chosen_id == int(logits.argmax())
            assert step.chosen_prob == pytest.approx(float(logits.softmax(-1).max()), abs=1e-4)
            ids = torch.cat([ids, torch.tensor([step.chosen_id])])
    finally:
        handle.remove()


# ---- the key/value cache: the same tokens and logits as running the whole sequence each step ----------------------

CACHE_PROMPT = "The cat sat on the mat. The cat sat on the"


@pytest.fixture(scope="module", params=(*__import__("workbench.families").families.FAMILIES, "bloom"))
def family_model(request, tmp_path_factory):
    """(family, loaded model, its folder): tiny random models of every family the tests build; BLOOM the engine does not know."""
    from workbench import families
    from workbench.model import load_model

    folder = tmp_path_factory.mktemp(request.param)
    families.build_bloom(folder) if request.param == "bloom" else families.build(request.param, folder)
    return request.param, load_model(str(folder)), folder


def _cache_edits(model, n_prompt: int, pattern: bool = True) -> list:
    """Edits of every kind and reach: all positions, a prompt position, generated positions (as the Intervene page
    writes them: maps that pick the positions that exist), a query row of the pattern, a map of every value."""
    from workbench import engine
    from workbench.edit_maps import AddAt, SetTo

    i = model.info
    vector = torch.linspace(-1, 1, i.d_model)
    last = i.n_layers - 1
    edits = [
        engine.Edit("ablate", "z", 0, head=1),  # every position, the generated ones too
        engine.Edit("add", "resid_pre", last, position=2, value=vector),  # a prompt position: in the cache after the first step
        engine.Edit("map", "mlp_out", 0, fn=AddAt(vector, (3, n_prompt + 1))),  # a prompt position and the second generated one
        engine.Edit("map", "v", 0, fn=_Half()),
    ]
    if pattern:  # a query row of the pattern, at a cached step
        edits.append(engine.Edit("map", "pattern", last, head=0, fn=SetTo(torch.tensor(0.0), positions=(n_prompt + 2,))))
    return edits


class _Half:
    def __call__(self, x):
        return x * 0.5


@pytest.mark.parametrize("edited", [False, True], ids=["unedited", "edited"])
def test_cached_generation_equals_the_whole_sequence_run_each_step(family_model, edited):
    """Cached steps (the engine, new tokens only) against whole runs through the model's own hooks: tokens, and logits to 1e-5."""
    from workbench.generate import NextLogits

    name, model, _ = family_model
    ids = encode(model, CACHE_PROMPT)[0]
    # transformer-lens 4.3's OPT and GPT-J attention bridges do not read an edited hook_pattern (NOTES): there the
    # uncached run through the hooks would ignore that edit, which the engine applies
    edits = _cache_edits(model, len(ids), pattern=name not in ("opt", "gptj")) if edited else []
    cached, whole = NextLogits(model, edits), NextLogits(model, edits, cache=False)
    assert cached.cached == (name != "bloom") and not whole.cached  # BLOOM: the engine does not know it, so no cache
    s = Sampling(max_new_tokens=8)
    a, b = generate(model, CACHE_PROMPT, s, edits), generate(model, CACHE_PROMPT, s, edits, cache=False)
    assert [x.chosen_id for x in a.steps] == [x.chosen_id for x in b.steps]
    for step in a.steps:
        torch.testing.assert_close(cached(ids), whole(ids), atol=1e-5, rtol=1e-5)
        ids = torch.cat([ids, torch.tensor([step.chosen_id])])
    if edited and name != "bloom":
        assert cached.past[0][0].shape[1] == len(ids) - 1  # the last call ran one new position on the kept keys


def test_unedited_generation_equals_plain_transformers_generate(family_model):
    """Greedy generation against transformers' own `generate` (its key/value cache, its sampling code)."""
    from transformers import AutoModelForCausalLM

    _, model, folder = family_model
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = encode(model, CACHE_PROMPT)[0]
    with torch.no_grad():
        # the attention mask given: transformers would infer one from the pad id (0), which is also the BOS here
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = plain.generate(ids[None], attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        out = out[0, len(ids) :]
    ours = generate(model, CACHE_PROMPT, Sampling(max_new_tokens=8))
    expected = out.tolist()
    if 0 in expected:  # our generation stops at the end-of-text token (id 0 here), transformers' was told not to
        expected = expected[: expected.index(0) + 1]
    assert [x.chosen_id for x in ours.steps] == expected


def test_a_reduced_precision_model_generates_through_its_hooks_without_copying_its_weights():
    """bfloat16: no engine (it computes in float32, and reading the weights would copy them all); tokens as the hooks give."""
    from workbench.generate import NextLogits
    from workbench.model import load_model

    model = load_model("english", dtype="bfloat16")
    assert not NextLogits(model).cached and model.state.weights is None
    gen = generate(model, "It was the best of", Sampling(max_new_tokens=4))
    ids = encode(model, "It was the best of")[0]
    for step in gen.steps:
        logits = run_tokens(model, ids[None], last_only=True)[0][0, -1].float()
        assert step.chosen_id == int(logits.argmax())
        ids = torch.cat([ids, torch.tensor([step.chosen_id])])
