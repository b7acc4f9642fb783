"""What the app keeps between runs and pages: the session keys, and the URL parameters a page's link carries.

Selections shared between pages (model, prompt, prompt pair, layer, head, position) live in
`st.session_state` under the keys below, which are not widget keys, because Streamlit forgets a
widget's value when a page without it runs. A page's own keys are declared at the top of that page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workbench import examples

# ---- session keys: everything the app keeps in st.session_state, in one place ------------------
# (a page's own keys are declared at the top of that page)

MODEL = "wb.model"  # name or path of the chosen model
PROMPT = "wb.prompt"  # the prompt shared by all pages
TRUNCATE = "wb.truncate"  # keep the end of a prompt longer than the context
CLEAN, CORRUPTED = "wb.clean", "wb.corrupted"  # the prompt pair of patching
LAYER, HEAD, POSITION = "wb.layer", "wb.head", "wb.position"
RESTORED = "wb.restored"  # the pages whose link has been read in this session
SESSION_CACHES = "wb.caches"  # this session's cached analyses: cache name -> Bounded
CHECKPOINT = "w.checkpoint"  # the sidebar's training-checkpoint slider
NOTICE = "wb.notice"  # a message for the next run of the page (what was cancelled)
DTYPE = "wb.dtype"  # the precision the model is loaded in
PRECISIONS = ("float32", "bfloat16", "float16")

OTHER = "a local folder or cached hub model…"
# the example prompts per model and view (workbench/examples.py), under the names pages and tests use
EXAMPLE_PROMPTS, EXAMPLE_PAIRS, PAGE_PROMPTS = examples.PROMPTS, examples.PAIRS, examples.VIEW_PROMPTS
example_prompt, example_pair = examples.prompt, examples.pair
SELECTED = "#d62728"  # the selected position's outline, the same on every page


# ---- shareable views: a page's state in the URL's query parameters --------------------------------


@dataclass(frozen=True)
class Param:
    """One URL parameter and the session key it restores; `read` turns the link's text into a value, or None."""

    name: str
    key: str
    read: Callable[[str], Any]


def text(name: str, key: str | None = None) -> Param:
    """Any text (a prompt, a typed token). Without `key`, the widget key is `w.<name>`."""
    return Param(name, key or f"w.{name}", lambda value: value)


def choice(name: str, options: Sequence[str], key: str | None = None) -> Param:
    """One of `options`; anything else in a link is ignored."""
    allowed = tuple(options)
    return Param(name, key or f"w.{name}", lambda value: value if value in allowed else None)


def number(name: str, kind: type, lo: float, hi: float, key: str | None = None) -> Param:
    """An int or float within the widget's bounds; a link outside them is ignored (the widget would refuse it)."""

    def read(value: str):
        try:
            n = kind(value)
        except ValueError:
            return None
        return n if math.isfinite(n) and lo <= n <= hi else None

    return Param(name, key or f"w.{name}", read)


# the selections any page may share: layer, head and position are clamped to the model where they are used
SHARED = {
    p.name: p
    for p in (
        text("model", MODEL),
        text("prompt", PROMPT),
        text("clean", CLEAN),
        text("corrupted", CORRUPTED),
        number("layer", int, 0, 10_000, LAYER),
        number("head", int, 0, 10_000, HEAD),
        number("pos", int, 0, 1_000_000, POSITION),
    )
}
