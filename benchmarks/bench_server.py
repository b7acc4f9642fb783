"""The server without a browser: N concurrent sessions drive every page through Streamlit's AppTest, in threads.

The browser load test (benchmarks/load.py) runs Chromium instances on the same cores as the server,
so it mostly measures the browsers. Here each session is an AppTest in its own thread of this
process, which is the server: a session sets the model and its own prompt (so that runs are not
shared between sessions), then runs each page once. Per page: the time from the start of the run
to its first figure (the first `ui.figure` call, which sends the chart), p50 and p95 over the
sessions, and the whole page run; the process's peak memory is sampled throughout.
The reference row of each page is the same page run by one session alone, on a fresh prompt.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import psutil
import streamlit as st
from streamlit.testing.v1 import AppTest

from benchmarks.common import Row
from workbench import ui

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
SESSIONS = 4
WORDS = ["cat", "dog", "girl", "boy", "tree", "house", "ball", "bird", "sun", "park", "mom", "box"]
FIRST = "bench.first_figure"  # session-state key: when this run's first figure was sent


def _prompt(i: int) -> str:
    a, b, c = WORDS[i % 12], WORDS[(i + 5) % 12], WORDS[(i + 7) % 12]
    return f"The {a} saw the {b} near the {c}. The {a} ran to the"


def _timed_figure(figure):
    def wrapped(*args, **kwargs):
        st.session_state.setdefault(FIRST, time.perf_counter())
        return figure(*args, **kwargs)

    return wrapped


def _visit(page: Path, i: int) -> tuple[float, float, bool]:
    """(seconds to the first figure, seconds for the whole run, whether the page raised) of session i on `page`."""
    at = AppTest.from_file(str(page), default_timeout=300)
    at.session_state[ui.MODEL] = "english"
    at.session_state[ui.PROMPT] = _prompt(i)
    at.session_state["wb.prompt_b"] = _prompt(i + 1)
    start = time.perf_counter()
    at.run()
    total = time.perf_counter() - start
    first = at.session_state[FIRST] - start if FIRST in at.session_state else float("nan")
    return first, total, bool(at.exception)


def _peak(stop: threading.Event, out: dict) -> None:
    proc = psutil.Process()
    while not stop.is_set():
        out["peak"] = max(out.get("peak", 0), proc.memory_info().rss)
        time.sleep(0.05)


def run(quick: bool = False) -> list[Row]:
    original = ui.figure
    ui.figure = _timed_figure(original)  # pages call ui.figure through the module: every chart is seen
    try:
        for page in PAGES:  # warm-up: the model loaded, the repeated-token head scores cached, as on a running server
            _visit(page, 100)
        alone = {page.stem: _visit(page, 200) for page in PAGES}
        sessions = 2 if quick else SESSIONS
        results: dict[str, list[tuple[float, float, bool]]] = {}
        lock = threading.Lock()

        def session(i: int) -> None:
            for page in PAGES:
                r = _visit(page, i)
                with lock:
                    results.setdefault(page.stem, []).append(r)

        stop, memory = threading.Event(), {}
        watcher = threading.Thread(target=_peak, args=(stop, memory), daemon=True)
        before = psutil.Process().memory_info().rss
        watcher.start()
        threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
    finally:
        ui.figure = original

    print(f"\nServer-side, english model: {sessions} concurrent sessions x {len(PAGES)} pages (AppTest in threads)")
    print(f"process memory {before / 2**20:,.0f} MB before, peak {memory.get('peak', 0) / 2**20:,.0f} MB during")
    print(f"{'page':<16} {'alone first':>12} {'p50 first':>10} {'p95 first':>10} {'p50 page':>9} {'p95 page':>9} {'errors':>7}")
    rows = []
    for page in PAGES:
        rs = results[page.stem]
        firsts, totals = sorted(r[0] for r in rs), sorted(r[1] for r in rs)
        p95 = lambda v: v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]  # noqa: E731
        errors = sum(r[2] for r in rs) + alone[page.stem][2]
        print(
            f"{page.stem:<16} {alone[page.stem][0]:>11.2f}s {statistics.median(firsts):>9.2f}s {p95(firsts):>9.2f}s "
            f"{statistics.median(totals):>8.2f}s {p95(totals):>8.2f}s {errors:>7}"
        )
        rows.append(
            Row(
                "server",
                page.stem,
                "1 session: first figure",
                alone[page.stem][0],
                f"{sessions} sessions: p50 first figure",
                statistics.median(firsts),
            )
        )
    print()
    return rows
