"""`View`: a page declares its title and caption, the selections and widgets its link carries (URL state) and its
cached analyses in one place; `View.start` is the common top of every page. Nothing here lists the pages or their widgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st

from workbench import long
from workbench.model import LoadedModel
from workbench.ui.cache import Cached
from workbench.ui.state import NOTICE, RESTORED, SHARED, Param
from workbench.ui.widgets import model_picker

_ALLOCATOR = {"set": False}


def serving_allocator() -> None:
    """Once per process: the server's allocator setting for long prompts (long.map_large_allocations)."""
    if not _ALLOCATOR["set"]:
        long.map_large_allocations()
        _ALLOCATOR["set"] = True


@dataclass
class View:
    """One page's declaration: its title and caption, what its link carries, its cached analyses.

    `shared` names selections of `SHARED` (model, prompt, clean, corrupted, layer, head, pos);
    `params` are the page's own widgets (`choice`, `number`, `text`); a widget's key is `view.key(name)`.
    """

    title: str
    caption: str
    shared: tuple[str, ...] = ("model", "prompt")
    params: tuple[Param, ...] = ()
    _params: dict[str, Param] = field(init=False, repr=False)

    def __post_init__(self):
        unknown = [name for name in self.shared if name not in SHARED]
        assert not unknown, f"not shared selections: {unknown}; a page's own widgets go in params"
        self._params = {name: SHARED[name] for name in self.shared} | {p.name: p for p in self.params}

    def key(self, name: str) -> str:
        """The session (widget) key of one of this page's parameters."""
        if name not in self._params:
            raise KeyError(f"'{name}' is not a parameter of the {self.title} page: declare it in its View(params=...)")
        return self._params[name].key

    def cached(self, fn: Callable, *, entries: int = 8, per_session: bool = False, spinner: str | None = None) -> Cached:
        """`fn` remembered by its arguments; per session for results a user asked for (bounded either way)."""
        return Cached(fn, entries, per_session, spinner)

    def start(self) -> LoadedModel:
        """The common top of every page: configuration, title, caption, the link's state, the model picker.

        Stops the page if no model loads.
        """
        # The app serves long prompts, whose chunked tensors fragment glibc's heap under its default allocation
        # threshold (see long.map_large_allocations): set for the server's process when a page first runs, not when
        # this module is imported (a notebook or a test that imports it keeps its allocator).
        serving_allocator()
        st.set_page_config(
            page_title=self.title if "workbench" in self.title else f"{self.title} · workbench", page_icon="🔬", layout="wide"
        )
        st.title(self.title)
        st.caption(self.caption)
        self.restore()
        if notice := st.session_state.pop(NOTICE, None):
            st.info(notice, icon="⏹️")
        model = model_picker()
        if model is None:
            st.stop()
        return model

    def restore(self) -> None:
        """Once per page and session, before any widget is drawn: the link's parameters become the selections.

        Only once: afterwards the widgets are the truth, and the link follows them (`share`).
        """
        restored = st.session_state.setdefault(RESTORED, set())
        if self.title in restored:
            return
        restored.add(self.title)
        params = st.query_params
        for name, p in self._params.items():
            if name in params and (value := p.read(params[name])) is not None:
                st.session_state[p.key] = value

    def share(self) -> None:
        """Writes this page's selections into the URL, so that a reload or a sent link opens the same view."""
        wanted = {name: str(st.session_state[p.key]) for name, p in self._params.items() if p.key in st.session_state}
        if dict(st.query_params) != wanted:
            st.query_params.from_dict(wanted)
