"""The prompt pair on a model (tasks.py): its one input check, its tokens side by side, the answers offered, and a
corrupted prompt built by replacing a word, each against the tokenizer itself."""

import pytest

from workbench import tasks
from workbench.errors import InputError
from workbench.metrics import Metric

CLEAN = "apple river stone cloud tiger piano candle garden apple river stone"
CORRUPTED = "apple river stone lemon tiger piano candle garden apple river stone"


def test_check_pair_gives_the_tokenizers_ids_and_the_metric_of_strings_or_ids(circuits):
    tok = circuits.tokenizer
    answer, wrong = tok(" cloud", add_special_tokens=False)["input_ids"][0], tok(" lemon", add_special_tokens=False)["input_ids"][0]
    clean, corrupted, measure = tasks.check_pair(circuits, tasks.Pair(CLEAN, CORRUPTED, " cloud", " lemon"), "probability")
    assert clean.tolist()[1:] == tok(CLEAN, add_special_tokens=False)["input_ids"]  # BOS first
    assert corrupted.tolist()[1:] == tok(CORRUPTED, add_special_tokens=False)["input_ids"]
    assert measure == Metric("probability", answer, wrong)
    assert tasks.check_pair(circuits, tasks.Pair(CLEAN, CORRUPTED, answer, wrong))[2] == Metric("logit difference", answer, wrong)


def test_check_pair_refuses_what_a_sweep_cannot_read(circuits):
    with pytest.raises(InputError, match=r"same number of tokens \(12 vs 13\)"):
        tasks.check_pair(circuits, tasks.Pair(CLEAN, CORRUPTED + " tiger", 5, 6))
    with pytest.raises(InputError, match="unknown metric 'accuracy'"):
        tasks.check_pair(circuits, tasks.Pair(CLEAN, CORRUPTED, 5, 6), "accuracy")
    with pytest.raises(InputError, match="answer token"):
        tasks.check_pair(circuits, tasks.Pair(CLEAN, CORRUPTED, circuits.info.d_vocab, 6))  # an id outside the vocabulary
    with pytest.raises(InputError, match="tokens"):
        tasks.check_pair(circuits, tasks.Pair(CLEAN, CORRUPTED, " cloud tiger", " lemon"))  # two tokens: not an answer


def test_compare_tokens_and_corrupt_word(circuits):
    cmp = tasks.compare_tokens(circuits, CLEAN, CORRUPTED)
    assert cmp.same_length and cmp.differ == [4]  # BOS, apple, river, stone, then cloud / lemon
    assert tasks.corrupt_word(circuits, CLEAN, "cloud", "lemon") == CORRUPTED


def test_corrupt_word_checks_the_token_count(english):
    with pytest.raises(InputError, match="same token count"):
        tasks.corrupt_word(english, "The cat sat on the mat.", "cat", "hippopotamus")
    with pytest.raises(InputError, match="does not occur"):
        tasks.corrupt_word(english, "The cat sat.", "dog", "cow")


def test_candidate_answers_start_with_the_differing_words(english):
    answers, wrongs = tasks.candidate_answers(
        english, "The cat sat on the mat. The cat sat on the", "The cat sat on the bed. The cat sat on the"
    )
    assert next(iter(answers)) == "␣mat" and next(iter(wrongs)) == "␣bed"
    assert len(answers) > 1 and len(wrongs) > 1
