"""The example prompts each shipped model opens on, per view: in the app (ui.prompt_form, ui.pair_form) and in probes.

Each default shows a learned mechanism on its model:
- `stories` (the default model; workbench/tasks.py): each view opens on a task prompt, with names held out of
  every training sentence of that kind (tests/test_stories_model.py: each default shows its mechanism where
  the card finds it);
- `english`: a sentence repeated, so that the induction heads copy what followed its first half last time
  ("whale"), and the lens shows it forming (tests/test_examples.py);
- `circuits` and `answer-key`: a repeated run of their 96-word vocabulary;
- the Intervene page's first edit set (`edits`): the heads that carry the example's mechanism, knocked out.
A model that is not shipped gets the English ones.
"""

from __future__ import annotations

PROMPTS = {
    "english": "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old",
    "circuits": "apple river stone cloud tiger piano candle garden apple river stone cloud tiger piano",
    "stories": "Erin and Vernon went to the park. Vernon was happy because",  # attention: he -> Vernon
}
PAIRS = {  # (clean, corrupted), or (A, B) on the compare page
    "circuits": (
        "apple river stone cloud tiger piano candle garden apple river stone",
        "apple river stone lemon tiger piano candle garden apple river stone",
    ),
    "english": (
        "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old",
        "In the morning Jane walked to the old woman by the sea. In the morning Jane walked to the old",
    ),
    "stories": (  # an IOI pair: the second mention of the subject becomes a third name
        "When Erin and Vernon went to the market, Vernon gave an apple to",
        "When Erin and Vernon went to the market, Gordon gave an apple to",
    ),
}
PROMPTS["answer-key"] = PROMPTS["circuits"]  # the same 96-word vocabulary
PAIRS["answer-key"] = PAIRS["circuits"]
VIEW_PROMPTS = {  # a view's own example, where it differs from the model's
    "stories": {
        "lens": "The capital of Sourk is",  # a stored fact forming layer by layer
        "attribution": "Erin and Vernon went to the park. Vernon was happy because",  # the pronoun points back to its name
        "generate": "Anna and Jack played at the park.",  # a story continued
    }
}
FALLBACK = "english"
# the Intervene page's first edit set: the example prompt's induction heads knocked out (their mean over the held-out text)
EDITS = {
    "english": "ablate head 1.0 mean; ablate head 1.2 mean; ablate head 1.3 mean",
    "circuits": "ablate head 1.0 mean; ablate head 1.1 mean; ablate head 1.2 mean; ablate head 1.3 mean",
}


def prompt(model_name: str, view: str = "") -> str:
    """The example prompt of a shipped model (and of its checkpoints, "stories@600") for a view; the English one otherwise."""
    base = model_name.split("@")[0]
    return VIEW_PROMPTS.get(base, {}).get(view) or PROMPTS.get(base, PROMPTS[FALLBACK])


def pair(model_name: str) -> tuple[str, str]:
    """The example (clean, corrupted) pair of a shipped model; the English one otherwise."""
    return PAIRS.get(model_name.split("@")[0], PAIRS[FALLBACK])


def prompts_of(model_name: str) -> set[str]:
    """Every example prompt of a model's views: a prompt among these was not typed by the user."""
    base = model_name.split("@")[0]
    return {*VIEW_PROMPTS.get(base, {}).values(), PROMPTS.get(base, PROMPTS[FALLBACK])}


def edits(model_name: str) -> str:
    """The Intervene page's first edit set for a model ("" for none): for the stories model, the head its card finds
    first for pronouns (models/stories/card.json) knocked out, so that the story's pronoun can change."""
    base = model_name.split("@")[0]
    if base in EDITS:
        return EDITS[base]
    if base != "stories":
        return ""
    import json

    from workbench.model import MODELS_DIR

    card = MODELS_DIR / "stories" / "card.json"
    if not card.is_file():
        return ""
    components = json.loads(card.read_text())["measured"]["tasks"]["pronoun"]["components"]
    heads = [c for c in components if c["kind"] == "head" and c["layer"] > 0]  # past layer 0's heads, which every task reads
    return f"ablate head {heads[0]['layer']}.{heads[0]['head']} mean" if heads else ""
