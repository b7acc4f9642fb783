"""The story generator and the task datasets: deterministic, held-out things kept out of training, pairs well formed."""

import json
import re

import pytest

from workbench import tasks
from workbench.errors import InputError
from workbench.model import MODELS_DIR
from workbench.train import stories


@pytest.fixture(scope="module")
def tok():
    return stories.tokenizer()


@pytest.fixture(scope="module")
def training_text():
    return " ".join(stories.corpus(3000, seed=0))


def test_the_generator_is_deterministic_for_a_seed():
    assert stories.corpus(40, seed=3) == stories.corpus(40, seed=3)
    assert stories.corpus(40, seed=3) != stories.corpus(40, seed=4)
    assert stories.world(0) == stories.world(0) and stories.world(0) != stories.world(1)
    assert stories.vocabulary(stories.world()) == stories.vocabulary(stories.world())


def test_the_world_has_about_200_names_of_both_genders_and_fixed_facts():
    w = stories.world()
    assert 180 <= len(w.all_names) <= 240
    assert {g for _, g in w.all_names} == {"f", "m"}
    assert len({n for n, _ in w.all_names}) == len(w.all_names)
    assert len({c for c, _ in w.countries}) == len(w.countries) and len({c for _, c in w.countries}) == len(w.countries)
    assert all(p.birthplace in {c for _, c in w.countries} for p in w.people)


def test_held_out_names_appear_in_training_text_only_in_sentences_no_task_is_made_of():
    w = stories.world()
    held = {n for n, _ in w.held_out_names}
    rng = __import__("random").Random(0)
    seen_in = set()
    for _ in range(3000):
        for kind, text in stories.story_sentences(rng, w):
            if set(re.findall(r"[A-Za-z]+", text)) & held:
                seen_in.add(kind)
    assert seen_in and seen_in <= set(stories.OPEN_KINDS)  # learned as names, never in a transfer, pronoun clause or fact


def test_story_is_its_sentences_joined():
    import random

    assert stories.story(random.Random(5), stories.world()) == " ".join(
        t for _, t in stories.story_sentences(random.Random(5), stories.world())
    )


def _literal_fragments(template: str) -> list[str]:
    """The template's fixed text between its slots."""
    return [part.strip() for part in re.split(r"\{[^}]*\}", template) if len(part.strip()) > 3]


@pytest.mark.parametrize(
    "held, train",
    [
        (stories.IOI_HELD_OUT, stories.IOI_TRAIN),
        (stories.PRONOUN_HELD_OUT, stories.PRONOUN_TRAIN),
        (stories.YEARS_HELD_OUT, stories.YEARS_TRAIN),
        (stories.CAPITAL_HELD_OUT, stories.CAPITAL_TRAIN),
    ],
)
def test_held_out_templates_never_appear_in_training_text(training_text, held, train):
    for template in held:
        # its most distinctive fixed fragment: the longest one that no training template contains
        fragments = [f for f in _literal_fragments(template) if not any(f in t for t in train)]
        assert fragments, f"held-out template {template!r} has nothing of its own"
        assert max(fragments, key=len) not in training_text
    for event in stories.EVENTS_HELD_OUT:  # a held-out event is a known word, never in a span of years
        assert not re.search(rf"{event} (lasted|began|of|went)", training_text) and f"{event} of 1" not in training_text


def test_every_word_of_a_held_out_template_is_known_from_training_text(tok):
    """A word no training sentence holds keeps a random embedding: a held-out phrasing of such words would
    measure noise, not whether a mechanism generalises. (Stories are tokenized one by one, as training does:
    a template's first word, without its space, is a story's first word.)"""
    counts: dict[int, int] = {}
    for story in stories.corpus(3000, seed=0):
        for i in tok(story)["input_ids"]:
            counts[i] = counts.get(i, 0) + 1
    held = [*stories.IOI_HELD_OUT, *stories.PRONOUN_HELD_OUT, *stories.YEARS_HELD_OUT, *stories.CAPITAL_HELD_OUT]
    for template in held:
        for piece in re.findall(stories.SPLIT, re.sub(r" ?\{[^}]*\}", "", template)):
            (i,) = tok(piece)["input_ids"]
            assert counts.get(i, 0) >= 10, (
                f"{piece!r} of the held-out template {template!r} occurs {counts.get(i, 0)} times in training text"
            )
    for event in stories.EVENTS_HELD_OUT:
        assert counts.get(tok(" " + event)["input_ids"][0], 0) >= 20


def test_training_text_has_no_unknown_token_and_every_kind(tok, training_text):
    ids = tok(training_text)["input_ids"]
    assert tok.unk_token_id not in ids
    for cue in (" gave ", " because ", " lasted from ", " the capital of ", " was born in ", "read it back:", '" said '):
        assert cue in training_text


def test_years_are_two_tokens_as_gpt2_splits_them(tok):
    assert tok.convert_ids_to_tokens(tok(" 1732")["input_ids"]) == ["Ġ17", "32"]
    assert tok.decode(tok("When Mia went from 1732 to 1756.")["input_ids"]) == "When Mia went from 1732 to 1756."


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_every_pair_tokenizes_to_equal_lengths_with_single_token_answers(tok, name):
    task = tasks.build(name, 200)
    for p in task.pairs:
        clean, corrupted = tok(p.clean)["input_ids"], tok(p.corrupted)["input_ids"]
        assert len(clean) == len(corrupted), p
        assert sum(a != b for a, b in zip(clean, corrupted, strict=True)) == 1, p
        assert tok.unk_token_id not in clean + corrupted
        assert len(tok(p.answer)["input_ids"]) == 1 and len(tok(p.wrong)["input_ids"]) == 1
        assert p.answer != p.wrong
        assert p.clean == p.clean.strip()  # pages strip what is typed: the prompts need no leading space


def test_held_out_task_pairs_use_only_held_out_names():
    held = {n for n, _ in stories.world().held_out_names}
    train = {n for n, _ in stories.world().names}
    for name in ("ioi", "pronoun", "capital"):
        for p in tasks.build(name, 100).pairs:
            words = set(re.findall(r"[A-Z][a-z]+", p.clean + " " + p.corrupted))
            assert not words & train, (name, p)
    assert any(n in p.clean for p in tasks.build("ioi", 50).pairs for n in held)


def test_pronoun_answers_agree_with_the_named_person():
    w = stories.world()
    for p in tasks.build("pronoun", 100).pairs:
        person = re.findall(r"([A-Z][a-z]+) [a-z]+ because|([A-Z][a-z]+) [a-z]+ while|([A-Z][a-z]+) lost|([A-Z][a-z]+) fed", p.clean)
        subject = next(n for n in person[-1] if n)
        assert p.answer.strip() == stories.PRON[w.gender(subject)][0]


def test_greater_than_answer_follows_the_start_year():
    for p in tasks.build("greater_than", 100).pairs:
        start = int(re.findall(r"\d{4}", p.clean)[0]) % 100
        assert int(p.answer) == start + 1 and int(p.wrong) == start - 1
        assert re.findall(r"\d{4}", p.corrupted)[0].endswith("01")


def test_capital_answers_are_the_worlds_facts():
    w = stories.world()
    for p in tasks.build("capital", 50).pairs:
        country = next(c for c, _ in w.countries if f" {c}" in f" {p.clean}")
        assert p.answer == " " + w.capital(country)


def test_induction_answer_is_what_followed_the_current_word_in_the_first_copy():
    for p in tasks.build("induction", 50).pairs:
        words = p.clean.split()
        first = words[:20]
        assert words[-1] in first and first[first.index(words[-1]) + 1] == p.answer.strip()


def test_unknown_task_and_missing_datasets_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="choose one of"):
        tasks.build("nope")
    with pytest.raises(InputError, match="ships no task datasets"):
        tasks.load(tmp_path, "ioi")
    assert tasks.available(tmp_path) == []


def test_shipped_task_files_are_what_the_generator_writes():
    folder = MODELS_DIR / "stories"
    if not (folder / "tasks").is_dir():
        pytest.skip("the stories model is not shipped in this checkout")
    for name in tasks.TASKS:
        shipped = json.loads((folder / "tasks" / f"{name}.json").read_text())
        assert shipped == tasks.build(name, len(shipped["pairs"])).to_json()


def test_answer_rows_take_the_loss_at_answers_the_world_makes_true_and_hold_no_held_out_task_sentence(tok):
    import random

    w = stories.world()
    ids, mask = stories.answer_rows(tok, w, 6, 128, seed=3)
    assert ids.shape == (6, 128) and mask.shape == (6, 127) and str(mask.dtype) == "torch.bool"
    # the segments again, from the same seed: each answer sits where the mask says, and is true of the world
    rng = random.Random(3)
    held = {n for n, _ in w.held_out_names}
    for row in range(6):
        pos, n_answers = 1, 0
        while pos < 128:
            prompt, answer = stories.answer_segment(rng, w)
            head = tok(prompt)["input_ids"]
            (target,) = tok(answer)["input_ids"]
            at = pos + len(head)  # the answer's position in the row
            if at < 128:
                assert ids[row, at] == target and mask[row, at - 1]
                n_answers += 1
            words = re.findall(r"[A-Za-z]+", prompt)
            if answer.strip() in ("he", "she", "He", "She", "his", "her"):
                person = [x for x in words if x in dict(w.all_names)][-1]
                assert answer.strip().lower() in stories.PRON[w.gender(person)]
                assert not (set(words) & held) or len([x for x in words if x in dict(w.all_names)]) == 1  # held-out: plain only
            elif answer.strip() in dict(w.all_names):
                assert not set(words) & held and answer.strip() in words  # IOI: the answer is a training name of the prompt
            else:
                country = next(x for x in words if x in dict(w.countries))
                assert answer.strip() == w.capital(country)
            pos = at + 2  # answer, <|endoftext|>
        assert int(mask[row].sum()) == n_answers  # nothing else carries loss
