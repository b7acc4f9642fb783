"""The one metric and the one prompt pair: values against a hand computation on plain transformers logits, the
fallback rule, and a pair's answer and wrong tokens resolved by the tokenizer."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workbench import attribution, graph_faithfulness, interventions, methods, patching, tasks
from workbench.errors import InputError
from workbench.metrics import KINDS, METRICS, Metric, metric_for
from workbench.model import MODELS_DIR
from workbench.runs import run_prompt

CLEAN = "apple river stone cloud tiger piano candle garden apple river stone"


@pytest.fixture(scope="module")
def plain():
    """(tokenizer, (1, d_vocab) next-token logits of CLEAN) from plain transformers on the circuits model's folder."""
    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "circuits")
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "circuits", use_safetensors=True).eval()
    ids = torch.tensor([[tok.bos_token_id, *tok(CLEAN, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        return tok, hf(ids).logits[:, -1].double()


def _ids(tok, *words):
    return [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]


def test_each_metric_is_its_hand_computation(plain):
    tok, logits = plain
    a, w = _ids(tok, " cloud", " lemon")
    row = logits[0].tolist()
    logsumexp = max(row) + math.log(sum(math.exp(x - max(row)) for x in row))
    by_hand = {
        "logit difference": row[a] - row[w],
        "probability": math.exp(row[a] - logsumexp),
        "log-probability": row[a] - logsumexp,
        "logit above mean": row[a] - sum(row) / len(row),
    }
    assert set(by_hand) == set(KINDS) and set(METRICS) < set(KINDS)
    for kind, want in by_hand.items():
        assert float(Metric(kind, a, w).value(logits)) == pytest.approx(want, rel=1e-9, abs=1e-9), kind
    assert abs(by_hand["logit difference"]) > 0.1  # the two tokens differ: a swapped index would fail
    # the restricted logits an engine run unembeds give the same logit difference
    d = Metric("logit difference", a, w)
    assert float(d.value_of_columns(logits[:, d.columns()])) == pytest.approx(by_hand["logit difference"])
    assert Metric("probability", a).columns() is None


def test_the_workbench_run_reads_the_same_metric(plain, circuits):
    tok, logits = plain
    a, w = _ids(tok, " cloud", " lemon")
    ours = run_prompt(circuits, CLEAN).logits[-1:].double()  # (1, d_vocab), the bridge's run
    _, _, measure = tasks.check_pair(circuits, tasks.Pair(CLEAN, CLEAN, " cloud", " lemon"), "log-probability")
    assert measure == Metric("log-probability", a, w)
    assert float(measure.value(ours)) == pytest.approx(float(Metric("log-probability", a).value(logits)), abs=1e-4)


def test_one_fallback_rule():
    assert metric_for(3, 5, "log-probability") == Metric("logit difference", 3, 5)
    assert metric_for(3, None, "probability") == Metric("probability", 3)
    with pytest.raises(InputError):
        metric_for(3, None, "logit difference")  # no wrong token to fall back from
    with pytest.raises(InputError):
        metric_for(3, None, "nonsense")
    # each view names its own default without a wrong token, through the one rule
    assert attribution.attribution_metric(3, None) == Metric("log-probability", 3)
    assert graph_faithfulness.graph_metric(3, None) == Metric("logit above mean", 3)
    assert attribution.attribution_metric(3, 5) == graph_faithfulness.graph_metric(3, 5) == Metric("logit difference", 3, 5)
    assert interventions.Metric is Metric


def test_a_metric_checks_its_tokens_in_one_message(circuits):
    a, w = _ids(circuits.tokenizer, " cloud", " lemon")
    assert Metric("logit difference", a, w).check(circuits) == Metric("logit difference", a, w)
    for bad in (Metric("nonsense", a), Metric("logit difference", a), Metric("probability", circuits.info.d_vocab)):
        with pytest.raises(InputError):
            bad.check(circuits)
    assert Metric("logit difference", a, w).label(circuits.tokenizer).count("logit(") == 2


def test_a_pair_resolves_its_tokens_with_the_tokenizer():
    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "stories")
    pair = tasks.load(MODELS_DIR / "stories", "ioi").pairs[0]
    answer, wrong = pair.ids(tok)
    assert tok.decode([answer]) == pair.answer and tok.decode([wrong]) == pair.wrong and answer != wrong
    assert Metric.of(pair, tok, "probability") == Metric("probability", answer, wrong)
    assert tasks.Pair(pair.clean, pair.corrupted, answer, wrong).ids(tok) == (answer, wrong)  # ids as given
    with pytest.raises(InputError, match="is 2 tokens"):
        tasks.Pair(pair.clean, pair.corrupted, pair.answer + pair.wrong, pair.wrong).ids(tok)  # two tokens: not an answer


def test_generated_copying_pairs_by_their_tokens(circuits):
    length, repeat = 8, 4
    for s in tasks.induction_pairs(circuits, 3, length=length, repeat=repeat, seed=1):
        clean = circuits.tokenizer(s.clean, add_special_tokens=False)["input_ids"]
        corrupted = circuits.tokenizer(s.corrupted, add_special_tokens=False)["input_ids"]
        assert len(clean) == len(corrupted) == length + repeat and clean[length:] == clean[:repeat]
        assert s.answer == clean[repeat]  # the word after the repeated part in the first copy
        assert [i for i in range(len(clean)) if clean[i] != corrupted[i]] == [repeat] and corrupted[repeat] == s.wrong


def test_the_dataset_sweep_and_the_methods_take_pairs_of_strings(circuits):
    tok = circuits.tokenizer
    corrupted = CLEAN.replace("cloud", "lemon")
    pair = tasks.Pair(CLEAN, corrupted, " cloud", " lemon")
    by_ids = tasks.Pair(CLEAN, corrupted, *_ids(tok, " cloud", " lemon"))
    by_pair = patching.sweep_dataset(circuits, [pair], "z", metric="probability")
    by_id_pair = patching.sweep_dataset(circuits, [by_ids], "z", metric="probability")
    assert torch.equal(by_pair.mean, by_id_pair.mean) and by_pair.metric == "probability"
    assert torch.isfinite(by_pair.mean).all() and by_pair.mean.abs().max() > 0.1  # the sweep moved the metric: a real comparison
    prepared = methods.prepare_all(circuits, [pair], metric="probability")[0]
    assert prepared.pair == pair and prepared.measure == Metric("probability", *_ids(tok, " cloud", " lemon"))
