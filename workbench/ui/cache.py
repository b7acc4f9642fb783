"""What the server keeps: the loaded models, the cached analyses (bounded, per server or per session), the memory plan.

- one loaded model per (name, device, dtype), shared by every session and thread (`st.cache_resource`);
  its lock keeps concurrent runs from seeing each other's hooks (see model.py);
- `Cached`: an analysis remembered by its arguments, at most `entries` results (`Bounded`), for the
  whole server or one session;
- `memory_plan`: what a view will hold for a prompt, said before it runs.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch

from workbench import long
from workbench.model import LoadedModel, load_model
from workbench.ui.state import SESSION_CACHES


class Bounded:
    """At most `entries` results, the least recently used dropped first; safe to share between threads."""

    MISSING = object()

    def __init__(self, entries: int):
        assert entries > 0
        self.entries = entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        with self._lock:
            if key not in self._items:
                return Bounded.MISSING
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@st.cache_resource
def server_caches() -> dict[str, Bounded]:
    """The caches shared by every session of this server (cleared with st.cache_resource.clear())."""
    return {}


def _frozen(value) -> Hashable:
    """A hashable stand-in for an argument: lists, dicts and dataclasses become tuples of their parts."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, LoadedModel):  # the same weights, wherever and however often they were loaded
        return ("model", value.info.source, value.info.device, value.info.dtype)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__, *(_frozen(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if not isinstance(value, Hashable) or isinstance(value, torch.Tensor):  # a tensor hashes by identity: never equal twice
        raise TypeError(f"a cached analysis is keyed by its arguments; {type(value).__name__} cannot be one (pass its values)")
    return value


@dataclass(frozen=True)
class Cached:
    """An analysis remembered by its arguments, for the whole server or for one session, `entries` results at most.

    Called like the analysis; `peek` returns the remembered result or None without computing. A
    loaded model counts by its weights' source, device and dtype; a `progress` callback is passed on
    but is not part of the key.
    """

    fn: Callable
    entries: int = 8
    per_session: bool = False
    spinner: str | None = None

    @property
    def name(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"

    def _store(self) -> Bounded:
        caches = st.session_state.setdefault(SESSION_CACHES, {}) if self.per_session else server_caches()
        return caches.setdefault(self.name, Bounded(self.entries))

    def _key(self, args: tuple, kwargs: dict) -> Hashable:
        return _frozen(args), _frozen({k: v for k, v in kwargs.items() if k != "progress"})

    def peek(self, *args, **kwargs):
        found = self._store().get(self._key(args, kwargs))
        return None if found is Bounded.MISSING else found

    def __call__(self, *args, **kwargs):
        store, key = self._store(), self._key(args, kwargs)
        found = store.get(key)
        if found is not Bounded.MISSING:
            return found
        if self.spinner:
            with st.spinner(self.spinner):
                result = self.fn(*args, **kwargs)
        else:
            result = self.fn(*args, **kwargs)
        store.put(key, result)
        return result


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def cached_model(name: str, device: str | None = None, trust_remote_code: bool = False, dtype: str = "float32") -> LoadedModel:
    return load_model(name, device=device, trust_remote_code=trust_remote_code, dtype=dtype)


def memory_plan(model: LoadedModel, prompt: str, truncate: bool, view: str) -> int:
    """Says, before the view runs, what it will hold for this prompt and what the budget allows (long.plan); returns the length in tokens."""
    n = long.n_tokens(model, prompt, truncate)
    plan = long.plan(model, n, view)
    (st.caption if plan.fits else st.warning)(plan.message())
    return n
