"""Simple stories about a small fixed world: the training text of the `stories` model organism.

A model organism is a small model trained on text whose regularities are known, so that every
view of the workbench has something true to find (TinyStories; the synthetic biographies of
"Physics of Language Models" 3.1; InterpBench). This module writes that text, deterministically
for a seed:

- the world (`World`, built from a seed): first names with a gender, places, objects, animals,
  invented countries with capitals, and invented people with a birthplace, birth year and
  profession, all fixed;
- sentences of known kinds, each in many phrasings (templates): two people and a transfer (the
  indirect object), pronouns that agree with a name, spans of years, facts stated and asked back,
  lists read back (induction in text), dialogue in quotes;
- a split: some names and some templates of every kind are held out. Held-out templates never
  occur in the training text (`story(..., split="train")`); held-out names occur only in the
  sentences no task is made of (plain and everyday sentences, dialogue, lists), never in a transfer,
  a pronoun clause, a fact or a question. Every word of a held-out template does occur in training
  text, in other arrangements (`EVERYDAY`), so that a held-out phrasing is new, not unknown. The task datasets (`workbench/tasks.py`) measure the model on them.
  Why held-out names appear at all: a token that never occurs in training text only ever has its
  (tied) unembedding pushed down, so no mechanism could move it to the output; appearing in other
  sentences, the model learns the name and its gender, and the tasks test whether the IOI and
  pronoun circuits generalise to names they were never trained on.

The tokenizer (`tokenizer`) is a closed word-level vocabulary: every word of every template and of
the world, held-out ones included, is one token, and a year is two tokens (" 17" + "32"), as GPT-2
splits it. A small vocabulary makes training cheap here (measured on this CPU: a softmax over
~4,000 logits blocked induction heads from forming), and it makes every answer of every task one
token.

Above 500 lines: most of it is the world's data (names, places, objects, templates), kept beside the generator that
reads it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

EOT = "<|endoftext|>"
UNK = "<unk>"

FEMALE = [
    "Mia",
    "Emma",
    "Lily",
    "Anna",
    "Sara",
    "Lucy",
    "Ella",
    "Grace",
    "Rose",
    "Ruby",
    "Amy",
    "Kate",
    "Jane",
    "Mary",
    "Alice",
    "Clara",
    "Nora",
    "Ivy",
    "Zoe",
    "Eva",
    "Julia",
    "Laura",
    "Sophie",
    "Hannah",
    "Chloe",
    "Molly",
    "Daisy",
    "Holly",
    "Lena",
    "Nina",
    "Maya",
    "Leah",
    "Tara",
    "Fiona",
    "Helen",
    "Irene",
    "Paula",
    "Rita",
    "Tina",
    "Wendy",
    "Olivia",
    "Bella",
    "Freya",
    "Isla",
    "Poppy",
    "Esme",
    "Iris",
    "Hazel",
    "Violet",
    "Alma",
    "Ada",
    "Edith",
    "Greta",
    "Hilda",
    "Ida",
    "Joan",
    "Kitty",
    "Lola",
    "Mabel",
    "Nell",
    "Opal",
    "Pearl",
    "Ruth",
    "Stella",
    "Tess",
    "Vera",
    "Wren",
    "Yara",
    "Zara",
    "Beth",
    "Carla",
    "Dora",
    "Elsa",
    "Faye",
    "Gina",
    "Hope",
    "Jill",
    "Lisa",
    "Megan",
    "Naomi",
    "Olga",
    "Pia",
    "Rosa",
    "Sally",
    "Thea",
    "Una",
    "Viola",
    "Anne",
    "Cora",
    "Diana",
    "Erin",
    "Flora",
    "Gwen",
    "Heidi",
    "Jenny",
    "Kira",
    "Lara",
    "Mira",
]
MALE = [
    "Tom",
    "Jack",
    "Sam",
    "Ben",
    "Max",
    "Leo",
    "Noah",
    "Adam",
    "Paul",
    "John",
    "Mark",
    "Luke",
    "Ryan",
    "Dan",
    "Tim",
    "Nick",
    "Alex",
    "Oscar",
    "Henry",
    "Oliver",
    "George",
    "Harry",
    "Jacob",
    "Ethan",
    "Owen",
    "Felix",
    "Hugo",
    "Isaac",
    "Jonah",
    "Kevin",
    "Liam",
    "Mason",
    "Neil",
    "Peter",
    "Ralph",
    "Simon",
    "Toby",
    "Victor",
    "Walter",
    "Zack",
    "Arthur",
    "Bruno",
    "Carl",
    "David",
    "Eric",
    "Frank",
    "Gary",
    "Hank",
    "Ivan",
    "Joel",
    "Karl",
    "Lewis",
    "Martin",
    "Nathan",
    "Otto",
    "Philip",
    "Quinn",
    "Robert",
    "Steve",
    "Theo",
    "Ulric",
    "Vince",
    "Wade",
    "Xavier",
    "Yusuf",
    "Abel",
    "Boris",
    "Colin",
    "Dean",
    "Edgar",
    "Fred",
    "Glen",
    "Hector",
    "Igor",
    "Jasper",
    "Kurt",
    "Lionel",
    "Miles",
    "Ned",
    "Omar",
    "Percy",
    "Roger",
    "Seth",
    "Trevor",
    "Upton",
    "Vernon",
    "Wesley",
    "Alfred",
    "Basil",
    "Cyril",
    "Derek",
    "Elliot",
    "Finn",
    "Gordon",
]
# names of either list never used in a task's kind of sentence in training text: the tasks ask about them
HELD_OUT_FEMALE = FEMALE[-12:]
HELD_OUT_MALE = MALE[-12:]

PLACES = [
    "market",
    "park",
    "school",
    "river",
    "garden",
    "library",
    "beach",
    "forest",
    "farm",
    "shop",
    "station",
    "castle",
    "bakery",
    "zoo",
    "lake",
    "hill",
    "village",
    "harbor",
    "museum",
    "field",
]
OBJECTS = [
    "apple",
    "book",
    "ball",
    "kite",
    "cup",
    "hat",
    "key",
    "letter",
    "flower",
    "coin",
    "box",
    "pen",
    "map",
    "bell",
    "shell",
    "cake",
    "drum",
    "ring",
    "lamp",
    "bag",
    "sock",
    "spoon",
    "candle",
    "rope",
    "basket",
]
ANIMALS = ["dog", "cat", "bird", "horse", "fox", "rabbit", "owl", "duck", "frog", "bear", "goat", "mouse", "sheep", "pig", "hen"]
PROFESSIONS = ["painter", "baker", "doctor", "farmer", "sailor", "teacher", "poet", "singer", "builder", "miller", "weaver", "judge"]
EVENTS_TRAIN = ["war", "drought", "festival", "journey", "flood", "famine"]
EVENTS_HELD_OUT = ["siege", "winter"]  # the greater-than task's held-out events


def _syllable_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """n invented capitalised names from fixed syllables, none equal to a word already taken."""
    starts = ["br", "dr", "gl", "kr", "st", "tr", "v", "z", "m", "l", "n", "r", "s", "t", "k", "d", "h", "f", "p", "th"]
    vowels = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
    ends = ["n", "rk", "sk", "l", "th", "r", "nd", "m", "x", "ra", "mora", "via", "lan", "dor", "ven", "tis"]
    out: list[str] = []
    while len(out) < n:
        word = (rng.choice(starts) + rng.choice(vowels) + rng.choice(ends)).capitalize()
        if word.lower() not in taken and 4 <= len(word) <= 8:
            taken.add(word.lower())
            out.append(word)
    return out


@dataclass(frozen=True)
class Person:
    """An invented person with fixed facts."""

    first: str
    last: str
    gender: str  # "f" or "m"
    birthplace: str  # a capital city
    year: int
    profession: str


@dataclass(frozen=True)
class World:
    """The cast and the facts; everything a story or a task may mention."""

    names: tuple[tuple[str, str], ...]  # (name, "f" or "m"), training names
    held_out_names: tuple[tuple[str, str], ...]
    countries: tuple[tuple[str, str], ...]  # (country, capital)
    people: tuple[Person, ...]

    @property
    def all_names(self) -> tuple[tuple[str, str], ...]:
        return self.names + self.held_out_names

    def gender(self, name: str) -> str:
        return dict(self.all_names)[name]

    def capital(self, country: str) -> str:
        return dict(self.countries)[country]


@lru_cache(maxsize=4)
def world(seed: int = 0) -> World:
    """The world of a seed (the shipped model uses seed 0)."""
    rng = random.Random(seed)
    held = set(HELD_OUT_FEMALE + HELD_OUT_MALE)
    names = tuple((n, "f") for n in FEMALE if n not in held) + tuple((n, "m") for n in MALE if n not in held)
    held_out = tuple((n, "f") for n in HELD_OUT_FEMALE) + tuple((n, "m") for n in HELD_OUT_MALE)
    taken = {w.lower() for w in FEMALE + MALE + PLACES + OBJECTS + ANIMALS + PROFESSIONS + EVENTS_TRAIN + EVENTS_HELD_OUT}
    taken |= {w.lower() for t in [*TEMPLATE_WORDS, *EVERYDAY] for w in t.split()}
    invented = _syllable_names(rng, 24 + 24 + 30, taken)
    countries = tuple(zip(invented[:24], invented[24:48], strict=True))
    surnames = invented[48:]
    people = []
    for i, last in enumerate(surnames):
        first, gender = names[rng.randrange(len(names))]
        people.append(Person(first, last, gender, countries[i % len(countries)][1], rng.randrange(1150, 1890), rng.choice(PROFESSIONS)))
    return World(names, held_out, countries, tuple(people))


# ---------------------------------------------------------------------------------------------
# Templates. Each kind has training templates and held-out ones; a template is a function of
# (rng, world, names...) returning text. The task datasets use the same fillers, cut before the answer.

PRON = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}  # subject, object, possessive


def a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# IOI: {A} and {B} in the setting, then {S} (one of them) gives something to the other ({IO}).
IOI_TRAIN = [
    "When {A} and {B} went to the {place}, {S} gave {obj} to {IO}.",
    "After {A} and {B} arrived at the {place}, {S} handed {obj} to {IO}.",
    "{A} and {B} were at the {place}. {S} gave {obj} to {IO}.",
    "While {A} and {B} were walking to the {place}, {S} passed {obj} to {IO}.",
    "Then {A} and {B} had a long day at the {place}. {S} threw {obj} to {IO}.",
    "{A} and {B} found {obj} at the {place}, and {S} gave it to {IO}.",
    "When {A} and {B} got home from the {place}, {S} sent {obj} to {IO}.",
    "At the {place}, {A} and {B} were happy. {S} showed {obj} to {IO}.",
]
IOI_HELD_OUT = [
    "Once {A} and {B} were back from the {place}, {S} brought {obj} to {IO}.",
    "Later {A} and {B} sat by the {place}, and {S} lent {obj} to {IO}.",
]

# pronouns: a person of each gender, then a clause about one of them, then its pronoun
PRONOUN_TRAIN = [
    "{A} and {B} went to the {place}. {X} was happy because {p} found {obj}.",
    "{A} met {B} at the {place}. {X} smiled when {p} saw the {animal}.",
    "{A} and {B} played at the {place}. Then {X} said that {p} wanted {obj}.",
    "{A} saw {B} near the {place}. {X} waved because {p} was glad.",
    "{A} and {B} walked home. {X} was tired, so {p} went to bed.",
    "{X} lost {obj} at the {place}, so {p} looked for it.",
    "{X} fed the {animal}, and {p} gave it {obj}.",
]
PRONOUN_HELD_OUT = [
    "{A} and {B} ran to the {place}. {X} laughed because {p} had {obj}.",
    "{A} visited {B} at the {place}. {X} sang while {p} held the {animal}.",
]

# spans of years: the end year is after the start year (same century)
YEARS_TRAIN = [
    "The {event} lasted from {y1} to {y2}.",
    "The {event} began in {y1} and ended in {y2}.",
    "From {y1} to {y2}, the {event} went on.",
    "The great {event} of {y1} lasted until {y2}.",
]
YEARS_HELD_OUT = ["The long {event} went on from {y1} until {y2}."]

# stored facts: a country's capital, stated in many phrasings; held-out phrasings ask it
CAPITAL_TRAIN = [
    "The capital of {country} is {capital}.",
    "{capital} is the capital of {country}.",
    "{name} lives in {capital}, the capital of {country}.",
    "In {country}, the biggest city is {capital}.",
    "{name} took a ship to {country} and saw its capital, {capital}.",
    "The king of {country} lives in {capital}.",
]
CAPITAL_HELD_OUT = [
    "{name} went to {country} to see the capital city of {capital}.",
    "Of all the cities in {country}, the capital is {capital}.",
]

# biographies of invented people, and facts asked back (in a story: recall from context)
BIO_TRAIN = [
    "{full} was born in {city} in {year}. {P} was a {job}.",
    "{full} was a {job} from {city}, born in {year}.",
    "The {job} {full} was born in {year} in the city of {city}.",
]
ASK_TRAIN = [
    "{first} was born in {city}. {later} Where was {first} born? In {city}.",
    "{first} worked as a {job}. {later} What was {first}? {first} was a {job}.",
]

TEMPLATE_WORDS = [
    *IOI_TRAIN,
    *IOI_HELD_OUT,
    *PRONOUN_TRAIN,
    *PRONOUN_HELD_OUT,
    *YEARS_TRAIN,
    *YEARS_HELD_OUT,
    *CAPITAL_TRAIN,
    *CAPITAL_HELD_OUT,
    *BIO_TRAIN,
    *ASK_TRAIN,
]

FILLERS = [
    "The sun was warm.",
    "It was a quiet day.",
    "The wind was cold.",
    "Then it began to rain.",
    "Everyone was very happy.",
    "The sky was blue and clear.",
    "It was late in the day.",
    "The birds sang in the trees.",
]
FEELINGS = ["happy", "sad", "tired", "glad", "hungry", "brave", "kind", "quiet"]
SAYS = ["said", "asked", "called", "cried", "whispered"]
QUESTIONS = [
    "Where is my {obj}?",
    "Can I have the {obj}?",
    "Do you like the {animal}?",
    "Shall we go to the {place}?",
    "Is the {animal} hungry?",
]
ANSWERS = [
    "It is at the {place}.",
    "Yes, you can.",
    "No, not today.",
    "I do not know.",
    "Let us go now.",
]


def year_pair(rng: random.Random, lo: int = 11, hi: int = 18) -> tuple[int, int]:
    """Two years of one century, the second later (ends 01 .. 98 so that both are two digits)."""
    century = rng.randint(lo, hi)
    start = rng.randint(1, 97)
    end = rng.randint(start + 1, 98)
    return century * 100 + start, century * 100 + end


def pick_two(rng: random.Random, names, different_gender: bool = False):
    """Two different (name, gender) entries of `names`, of different genders when asked (a pronoun must tell them apart)."""
    a_, b_ = rng.sample(names, 2)
    while different_gender and a_[1] == b_[1]:
        a_, b_ = rng.sample(names, 2)
    return a_, b_


def fill(template: str, **slots) -> str:
    return template.format(**slots)


def ioi_sentence(rng, w: World, names, templates) -> str:
    (n1, _), (n2, _) = pick_two(rng, names)
    s, io = (n1, n2) if rng.random() < 0.5 else (n2, n1)
    return fill(rng.choice(templates), A=n1, B=n2, S=s, IO=io, place=rng.choice(PLACES), obj=a(rng.choice(OBJECTS)))


def pronoun_sentence(rng, w: World, names, templates) -> str:
    (n1, g1), (n2, g2) = pick_two(rng, names, different_gender=True)
    x, gx = (n1, g1) if rng.random() < 0.5 else (n2, g2)
    slots = dict(A=n1, B=n2, X=x, p=PRON[gx][0], place=rng.choice(PLACES), obj=a(rng.choice(OBJECTS)), animal=rng.choice(ANIMALS))
    return fill(rng.choice(templates), **slots)


def years_sentence(rng, w: World, events, templates) -> str:
    y1, y2 = year_pair(rng)
    return fill(rng.choice(templates), event=rng.choice(events), y1=y1, y2=y2)


def capital_sentence(rng, w: World, names, templates) -> str:
    country, capital = rng.choice(w.countries)
    return fill(rng.choice(templates), country=country, capital=capital, name=rng.choice(names)[0])


def bio_sentence(rng, w: World) -> str:
    p = rng.choice(w.people)
    full = f"{p.first} {p.last}"
    return fill(rng.choice(BIO_TRAIN), full=full, city=p.birthplace, year=p.year, P=PRON[p.gender][0].capitalize(), job=p.profession)


def ask_back_sentence(rng, w: World, names) -> str:
    """A fact about a story's character stated, something else said, then the fact asked back."""
    name = rng.choice(names)[0]
    later = rng.choice(FILLERS)
    city = rng.choice(w.countries)[1]
    return fill(rng.choice(ASK_TRAIN), first=name, city=city, job=rng.choice(PROFESSIONS), later=later)


def list_sentence(rng, w: World, names) -> str:
    """A list written and read back: an induction pattern in text."""
    name = rng.choice(names)[0]
    items = rng.sample(OBJECTS + ANIMALS, rng.randint(3, 6))
    said = ", ".join(items)
    other = rng.choice(names)[0]
    return f"{name} wrote a list: {said}. Then {other} read it back: {said}."


def dialogue_sentence(rng, w: World, names) -> str:
    (n1, _), (n2, _) = pick_two(rng, names)
    slots = dict(obj=rng.choice(OBJECTS), animal=rng.choice(ANIMALS), place=rng.choice(PLACES))
    q = fill(rng.choice(QUESTIONS), **slots)
    ans = fill(rng.choice(ANSWERS), **slots)
    return f'"{q}" {rng.choice(SAYS)} {n1}. "{ans}" said {n2}.'


def plain_sentence(rng, w: World, names) -> str:
    name, g = rng.choice(names)
    subj, _, pos = PRON[g]
    choice = rng.randrange(4)
    if choice == 0:
        return f"{name} had a {rng.choice(ANIMALS)}. {subj.capitalize()} loved it very much."
    if choice == 1:
        return f"{name} was {rng.choice(FEELINGS)}, so {subj} went to the {rng.choice(PLACES)}."
    if choice == 2:
        return f"{name} put {pos} {rng.choice(OBJECTS)} in the {rng.choice(['box', 'bag', 'basket'])}."
    return rng.choice(FILLERS)


# Everyday sentences about one person, which carry every word of the held-out templates in other
# arrangements. Why: a word no training sentence holds keeps its random embedding (and, tied, an
# unembedding only ever pushed down), so a held-out phrasing built on such words measured noise, not
# generalisation: held-out IOI at 58% while training templates stood at 100% (logit difference 14.6).
# None of them holds a held-out template's distinctive fragment (tests/test_stories.py checks).
EVERYDAY = [
    "Once it was dark, {name} came back.",
    "{name} brought {obj} back.",
    "Later, {name} sat down by a tree.",
    "{name} lent {obj} to the {animal}.",
    "{name} ran to the {place} and laughed.",
    "{name} visited the {place}.",
    "{name} held the {animal} while {p} sang.",
    "{name} wanted to see the {animal}.",
    "There are many cities in {country}.",
    "Of all the days, it was the best.",
    "{name} was cold in the {held_event}.",
    "{name} hid during the {held_event}.",
]


def everyday_sentence(rng, w: World, names) -> str:
    country, _ = rng.choice(w.countries)
    name, g = rng.choice(names)
    slots = dict(name=name, p=PRON[g][0], obj=a(rng.choice(OBJECTS)), animal=rng.choice(ANIMALS), place=rng.choice(PLACES))
    return fill(rng.choice(EVERYDAY), country=country, held_event=rng.choice(EVENTS_HELD_OUT), **slots)


KINDS: dict[str, float] = {  # sentence kind -> weight in a story
    "ioi": 4.0,
    "pronoun": 3.0,
    "years": 2.0,
    "capital": 2.0,
    "bio": 1.0,
    "ask": 1.0,
    "list": 1.0,
    "dialogue": 0.5,
    "plain": 3.0,
    "everyday": 2.0,
}
OPEN_KINDS = ("plain", "dialogue", "list", "everyday")  # the kinds that may name anyone, held-out names included


def sentence(kind: str, rng: random.Random, w: World, names, split: str = "train") -> str:
    """One sentence of a kind; split "held_out" uses only the held-out templates (where the kind has them)."""
    held = split == "held_out"
    table: dict[str, Callable[[], str]] = {
        "ioi": lambda: ioi_sentence(rng, w, names, IOI_HELD_OUT if held else IOI_TRAIN),
        "pronoun": lambda: pronoun_sentence(rng, w, names, PRONOUN_HELD_OUT if held else PRONOUN_TRAIN),
        "years": lambda: years_sentence(rng, w, EVENTS_HELD_OUT if held else EVENTS_TRAIN, YEARS_HELD_OUT if held else YEARS_TRAIN),
        "capital": lambda: capital_sentence(rng, w, names, CAPITAL_HELD_OUT if held else CAPITAL_TRAIN),
        "bio": lambda: bio_sentence(rng, w),
        "ask": lambda: ask_back_sentence(rng, w, names),
        "list": lambda: list_sentence(rng, w, names),
        "dialogue": lambda: dialogue_sentence(rng, w, names),
        "plain": lambda: plain_sentence(rng, w, names),
        "everyday": lambda: everyday_sentence(rng, w, names),
    }
    return table[kind]()


def story_sentences(rng: random.Random, w: World, split: str = "train", sentences: tuple[int, int] = (4, 9)) -> list[tuple[str, str]]:
    """(kind, sentence) of a story of a few sentences; split "train": held-out names only in OPEN_KINDS sentences."""
    names = list(w.names if split == "train" else w.all_names)
    everyone = list(w.all_names)
    kinds, weights = zip(*KINDS.items(), strict=True)
    n = rng.randint(*sentences)
    return [(k, sentence(k, rng, w, everyone if k in OPEN_KINDS else names, split)) for k in rng.choices(kinds, weights, k=n)]


def story(rng: random.Random, w: World, split: str = "train", sentences: tuple[int, int] = (4, 9)) -> str:
    """A story: its sentences (story_sentences) joined."""
    return " ".join(text for _, text in story_sentences(rng, w, split, sentences))


def corpus(n_stories: int, seed: int = 0, world_seed: int = 0) -> list[str]:
    """n training stories, deterministic for (seed, world_seed)."""
    rng = random.Random(seed)
    w = world(world_seed)
    return [story(rng, w) for _ in range(n_stories)]


# ---------------------------------------------------------------------------------------------
# The tokenizer: a closed word-level vocabulary in GPT-2's byte-level spelling ("Ġword" = " word").

SPLIT = r"'s| ?[A-Za-z]+| ?\d\d|\d| ?[^\sA-Za-z\d]|\s"


HELDOUT_NAME = "300 unseen stories (train/stories.py heldout_stories, seed 12345)"


def heldout_stories(n: int = 300, seed: int = 12345, world_seed: int = 0) -> str:
    """Fresh stories of the training distribution from a seed no training stream uses, each ended by <|endoftext|>
    as the model was trained (story_rows): the text the stories model's SAEs and dashboards are measured on, as the
    English model's are on held-out paragraphs. (The held-out split, with held-out names and phrasings, measures the
    tasks' generalisation: the model's loss there is four times its training loss, which would measure the SAEs on
    text the model itself cannot read.)"""
    w, rng = world(world_seed), random.Random(f"heldout-{seed}")
    return "".join(story(rng, w) + "<|endoftext|>" for _ in range(n))


def training_ids(tok, tokens: int, seed: int = 0, world_seed: int = 0) -> list[int]:
    """About `tokens` ids of training stories, each ended by <|endoftext|> (BOS) as in training: an id stream that
    activation samplers cut windows from."""
    w, rng, ids = world(world_seed), random.Random(f"stream-{seed}"), []
    while len(ids) < tokens:
        ids += tok(story(rng, w), add_special_tokens=False)["input_ids"] + [tok.bos_token_id]
    return ids


def is_stories_model(model) -> bool:
    """The stories model (its name, or a folder named stories): its vocabulary is this world's, its data these stories."""
    from pathlib import Path

    return model.info.name.split("@")[0] == "stories" or Path(model.info.source).name == "stories"


def vocabulary(w: World) -> list[str]:
    """Every piece a story or a task can contain, in a fixed order: specials, then sorted pieces.

    The pieces are those of many generated stories of both splits (so held-out templates have
    their words), every name with and without a leading space, and every two-digit year ending."""
    import re

    rng = random.Random(12345)
    texts = [story(rng, w, split) for split in ("train", "held_out") for _ in range(3000)]
    texts += [" ".join(n for n, _ in w.all_names), " ".join(c for pair in w.countries for c in pair)]
    texts += [" " + " ".join(f"{c}00" for c in range(10, 20)) + " " + "".join(f"{i:02d}" for i in range(100))]
    texts += [" ".join(PLACES + OBJECTS + ANIMALS + PROFESSIONS + EVENTS_TRAIN + EVENTS_HELD_OUT + FEELINGS + SAYS)]
    texts += [" ".join(x.capitalize() for x in ["she", "he", "her", "his", "the", "it"])]
    words: set[str] = set()
    for text in texts:
        words.update(re.findall(SPLIT, text))
    # a story may open with any capitalised word of the world (a name, a country, a city): no space before it
    words.update(p.strip() for p in list(words) if p.strip()[:1].isupper())
    return [EOT, UNK, *sorted(words)]


def tokenizer(w: World | None = None):
    """The stories tokenizer (a transformers PreTrainedTokenizerFast, BOS = EOS = <|endoftext|>)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    w = w or world()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # the byte-level spelling of each piece, as the pre-tokenizer will present it
    spell = {piece: "".join(s for s, _ in byte_level.pre_tokenize_str(piece)) for piece in vocabulary(w)}
    vocab = {spell[p] if p not in (EOT, UNK) else p: i for i, p in enumerate(vocabulary(w))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=UNK, model_max_length=128)


# ---------------------------------------------------------------------------------------------
# Training: stories with copying sequences mixed in (the copying curriculum of copying.py keeps
# induction heads growing; measured here, text alone erodes them).


@dataclass(frozen=True)
class Recipe:
    """Everything a run of the stories model depends on (with `common.TrainConfig` for the shape)."""

    model: object = None  # common.TrainConfig; None = STORIES_SHAPE
    copy_steps: int = 1200  # stage 0: the copying task alone (copying.py), pool `small_pool`, loss over its logits
    copy_stage_batch: int = 64  # its batch: the phase change needs many sequences per step (NOTES: 64)
    # sinusoids as the start of the position embeddings: measured here, they kept the copying stage from its phase change
    # (2 layers: copy loss 4.1 at step 1,000 with them, 1.5 by step 800 without)
    sinusoidal_positions: bool = False
    story_batch: int = 16  # rows of BOS + stories, n_positions tokens each
    copy_batch: int = 8  # copying sequences per step
    copy_length: int = 49  # BOS + 48
    copy_weight: float = 0.5
    small_pool: int = 96  # the copy pool of the first stage (loss over the pool's logits)
    answer_batch: int = 16  # rows of answer segments per step (answer_rows): loss at the answers only
    answer_weight: float = 1.0
    first_steps: int = 0  # stage 1: stories + copies from the small pool, constant lr
    second_steps: int = 6000  # stage 2: stories + answer rows + copies over every id, cosine lr
    lr: float = 2e-3
    world_seed: int = 0


def shape():
    from workbench.train import common

    # three layers learn the copying stage's induction heads too once positions are learned (phase change near step
    # 1,000; two layers: ~650); the card's table of runs compares the two
    return common.TrainConfig(n_layer=3, n_head=4, n_embd=128, n_positions=128, vocab_size=0, weight_decay=0.01, threads=1, log_every=10)


def story_rows(tok, w: World, rows: int, n_positions: int, seed: int):
    """(rows, n_positions) ids: BOS, then training stories separated by <|endoftext|>, cut at the end."""
    import torch

    rng = random.Random(seed)
    eot = tok.bos_token_id
    out = []
    for _ in range(rows):
        ids = [eot]
        while len(ids) < n_positions:
            ids += tok(story(rng, w))["input_ids"] + [eot]
        out.append(ids[:n_positions])
    return torch.tensor(out)


def answer_segment(rng: random.Random, w: World) -> tuple[str, str]:
    """(prompt, answer) of one sentence cut before the word a mechanism predicts: the indirect object, a
    pronoun agreeing with a name, or a country's capital. Training names and templates only; the plain
    sentences' pronouns name anyone, held-out names included, as the plain sentences of the stories do
    (that is where a held-out name's gender is learned)."""
    from workbench import tasks

    kind = rng.choice(("ioi", "pronoun", "plain", "capital"))
    if kind == "capital":
        asking = [t for t in CAPITAL_TRAIN if t.index("{country}") < t.index("{capital}")]  # the country first: answerable
        pair = tasks.capital(rng, w, list(w.names), asking)
        return pair.clean, pair.answer
    if kind == "ioi":
        pair = tasks.ioi(rng, w, list(w.names), IOI_TRAIN)
        return pair.clean, pair.answer
    if kind == "pronoun":
        pair = tasks.pronoun(rng, w, list(w.names), PRONOUN_TRAIN)
        return pair.clean, pair.answer
    name, g = rng.choice(w.all_names)
    subj, _, pos = PRON[g]
    choice = rng.randrange(3)
    if choice == 0:
        return f"{name} had a {rng.choice(ANIMALS)}.", " " + subj.capitalize()
    if choice == 1:
        return f"{name} was {rng.choice(FEELINGS)}, so", " " + subj
    return f"{name} put", " " + pos


def answer_rows(tok, w: World, rows: int, n_positions: int, seed: int):
    """(rows, n_positions) ids of answer segments separated by <|endoftext|>, and the (rows, n_positions-1)
    loss mask over the targets ids[:, 1:] that is True at the answers only.

    Why: in the stories an answer (the indirect object, a pronoun) is ~1 target in 60, so the gradient
    that would sharpen attention onto the right name is buried under the unpredictable tokens (random
    names, objects, years), and measured here neither mechanism formed in 2.4 M tokens of stories. Taking
    the loss at the answers alone is to these mechanisms what the copying task's masked loss is to
    induction heads."""
    import torch

    rng = random.Random(seed)
    eot = tok.bos_token_id
    all_ids, all_masks = [], []
    for _ in range(rows):
        ids, target = [eot], [False]
        while len(ids) < n_positions:
            prompt, answer = answer_segment(rng, w)
            head, (tail,) = tok(prompt)["input_ids"], tok(answer)["input_ids"]
            ids += [*head, tail, eot]
            target += [False] * len(head) + [True, False]
        all_ids.append(ids[:n_positions])
        all_masks.append(target[1:n_positions])
    return torch.tensor(all_ids), torch.tensor(all_masks)


def stages(recipe: Recipe, cfg, tok, w: World, extra=None):
    """The copying stage, then stories + answer rows + copies; `extra(generator)` adds parts to every mixed step
    (stories_english: English windows)."""
    import torch

    from workbench.train import common, copying

    eot = tok.bos_token_id
    vocab = len(tok)
    order = torch.randperm(vocab, generator=torch.Generator().manual_seed(cfg.seed))
    everyone = order[(order != eot) & (order != (tok.unk_token_id if tok.unk_token_id is not None else -1))]

    def mixed(pool):
        def batch(g: torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            ids = story_rows(tok, w, recipe.story_batch, cfg.n_positions, seed)
            parts = [common.Part(ids, torch.ones(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool), 1.0, name="story_loss")]
            if recipe.answer_batch:
                answers, mask = answer_rows(tok, w, recipe.answer_batch, cfg.n_positions, seed + 1)
                parts.append(common.Part(answers, mask, recipe.answer_weight, name="answer_loss"))
            if recipe.copy_batch:
                parts.append(copying.copy_part(pool, recipe.copy_batch, recipe.copy_length, eot, g, recipe.copy_weight, True, 24))
            if extra is not None:
                parts += extra(g)
            return parts

        return batch

    small = everyone[: recipe.small_pool]

    def copy_only(g: torch.Generator):
        return [copying.copy_part(small, recipe.copy_stage_batch, 49, eot, g)]

    out = [
        common.Stage(f"copy, pool {len(small)}", recipe.copy_steps, copy_only, recipe.lr, "constant"),
        common.Stage(f"stories + copies, pool {len(small)}", recipe.first_steps, mixed(small), recipe.lr, "constant", warmup=50),
        common.Stage(f"stories + copies, pool {len(everyone)}", recipe.second_steps, mixed(everyone), recipe.lr, "cosine"),
    ]
    return [stage for stage in out if stage.steps]


def quick_eval(tok, w: World, extra=None, n: int = 48):
    """Held-out task scores and the induction check, logged during training, with `extra(model)`'s measurements."""
    from workbench import tasks
    from workbench.train import english

    sets = {name: tasks.build(name, n, seed=1, w=w) for name in tasks.TASKS}

    def evaluate(model) -> dict:
        out = {}
        for name, task in sets.items():
            s = tasks.score(model, tok, task)
            out[f"{name}_acc"] = s.accuracy
            out[f"{name}_ld"] = s.logit_diff
        ind = english.induction_check(model, len(tok), tok.bos_token_id, n=50, seqs=4)
        out |= extra(model) if extra is not None else {}
        return out | {"induction_layer_sum": ind["induction_best_layer_sum"], "second_copy_loss": ind["second_copy_loss"]}

    return evaluate


def build(out, recipe: Recipe = Recipe(), run_dir=None, log=print, until: int | None = None, tok=None, extra=None, extra_eval=None) -> dict:
    """Trains the stories model of `recipe` into `out`. `tok`, `extra` and `extra_eval` (stories_english): another
    tokenizer, parts added to every mixed step, and measurements added to every held-out evaluation."""
    import dataclasses

    import torch
    from transformers import GPT2LMHeadModel

    from workbench.train import common

    w = world(recipe.world_seed)
    tok = tok or tokenizer(w)
    cfg = dataclasses.replace(recipe.model or shape(), vocab_size=len(tok))
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(common.gpt2_config(cfg, tok.bos_token_id, tok.eos_token_id))
    if recipe.sinusoidal_positions:
        common.sinusoidal_positions_(model)
    total = recipe.copy_steps + recipe.first_steps + recipe.second_steps
    snaps = sorted({recipe.copy_steps // 2, recipe.copy_steps, *range(0, total + 1, max(1, total // 6))} - {0})
    record = common.run_stages(
        model,
        stages(recipe, cfg, tok, w, extra),
        cfg,
        run_dir,
        snaps,
        quick_eval(tok, w, extra_eval),
        eval_every=200,
        log=log,
        snapshot_precision="int8",
        until=until,
    )
    record["recipe"] = {k: (v if k != "model" else dataclasses.asdict(cfg)) for k, v in dataclasses.asdict(recipe).items()}
    common.save(model, tok, out, record)
    if run_dir is not None:
        record["checkpoints"] = common.ship_snapshots(run_dir, out)
        common.save(model, tok, out, record)
    return record
