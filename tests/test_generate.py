import pytest
import torch

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


def test_greedy_generation_follows_the_argmax(english):
    prompt = "My dear sister,"
    gen = generate(english, prompt, Sampling(max_new_tokens=6))
    assert len(gen.steps) == 6
    ids = run_prompt(english, prompt).tokens
    for step in gen.steps:
        with torch.no_grad():
            logits = english.bridge(ids[None])[0, -1]
        assert step.chosen_id == int(logits.argmax())
        ids = torch.cat([ids, torch.tensor([step.chosen_id])])
    assert gen.text == english.tokenizer.decode([s.chosen_id for s in gen.steps])


def test_sampling_is_reproducible_by_seed(english):
    s = Sampling(max_new_tokens=8, greedy=False, temperature=1.2, top_k=50, seed=7)
    a, b = generate(english, "The whale", s), generate(english, "The whale", s)
    assert a.text == b.text
    # every drawn token was possible under the settings, and its recorded probability is the model's own
    ids = encode(english, "The whale")[0]
    for step in a.steps:
        logits = run_tokens(english, ids[None], last_only=True)[0][0, -1].float()
        assert sampling_distribution(logits, s)[step.chosen_id] > 0
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


def test_generation_with_an_edit_differs_and_leaves_the_model_as_it_was(english):
    from workbench import engine

    prompt = "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the"
    s = Sampling(max_new_tokens=6)
    plain = generate(english, prompt, s)
    edited = generate(english, prompt, s, edits=[engine.Edit("ablate", "z", 1, head=h) for h in range(english.info.n_heads)])
    again = generate(english, prompt, s)
    assert [st.chosen_id for st in again.steps] == [st.chosen_id for st in plain.steps]
    assert [st.chosen_prob for st in edited.steps] != [st.chosen_prob for st in plain.steps]
    assert "edits" in edited.provenance["settings"] and "edits" not in plain.provenance["settings"]
