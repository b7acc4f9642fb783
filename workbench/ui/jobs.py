"""Long work on a page: a progress bar whose Cancel button really stops it, and work gated behind a button when its
estimate is over the budget (cost.py)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from workbench import cost
from workbench.errors import InputError
from workbench.ui.state import NOTICE


class Reporter:
    """A progress callback for the library: calls `update(done, total)`, and returns False once the page is interrupted.

    Streamlit delivers a click that arrives while the page runs (Cancel, or any other widget) as an
    exception from the next call that draws, here `update`. The callback keeps that exception and
    returns False, so the library stops through its own cancel path; `progress()` then lets
    Streamlit's rerun go ahead.
    """

    def __init__(self, update: Callable[[int, int], None]):
        self.update = update
        self.interrupted: ScriptControlException | None = None

    def __call__(self, done: int, total: int) -> bool:
        if self.interrupted is not None:
            return False
        try:
            self.update(done, total)
        except ScriptControlException as stop:
            self.interrupted = stop
            return False
        return True


def _cancel(label: str) -> None:
    st.session_state[NOTICE] = f"{label} cancelled: nothing was kept of it, and the inputs are as they were."


@contextmanager
def progress(label: str):
    """A progress bar and a Cancel button around long work; yields the callback `progress(done, total)`.

    Cancel stops the work where it is: the callback returns False, the library raises its "cancelled"
    InputError (swallowed here), and the page reruns with its inputs, saying what was cancelled.
    """
    bar = st.progress(0.0, text=label)
    st.button("Cancel", key=f"cancel-{label}", on_click=_cancel, args=(label,))
    report = Reporter(lambda done, total: bar.progress(done / total, text=f"{label}: {done} of {total}"))
    try:
        yield report
    except InputError:
        if report.interrupted is None:
            raise
    if report.interrupted is not None:
        raise report.interrupted  # the rerun (or stop) Streamlit asked for


def gate(est: cost.Estimate, label: str, key: str) -> bool:
    """True when the work `est` describes may run in this run of the page: within the budget, or asked for now.

    Above the budget (cost.BUDGET_S) the page shows a button that carries the estimate
    ("Score the methods (~40 s)") and the estimate's line; the work runs only on its click. The
    caller keeps the result (a `Cached`), so that later reruns show it without asking again.
    """
    if not est.over_budget:
        return True
    st.caption(f"Not run on its own: {est.line()}.")
    return st.button(f"{label} ({est.label()})", type="primary", key=f"gate-{key}")


def gated(est: cost.Estimate, label: str, key: str, fn: Callable, *args):
    """fn(*args) when `gate` lets it run, else None; above the budget under `progress` (fn takes progress=), so Cancel reaches it."""
    if not gate(est, label, key):
        return None
    if not est.over_budget:
        return fn(*args)
    with progress(label) as report:
        return fn(*args, progress=report)
