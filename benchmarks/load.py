"""Load test: python -m benchmarks.load [--sessions 8] [--rounds 2].

Starts the real server (`streamlit run app.py`) on loopback, opens N browser sessions at once
(Debian's headless Chromium through Playwright), each visiting every view with its own prompt
through a shared link, and reports per view the median and 95th-percentile time until its
figures are drawn, the errors, and the server's peak memory. Bounded: at most 16 sessions and
4 rounds, and a 10-minute cap; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import capture  # noqa: E402  (server and browser set-up shared with the screenshots)

VIEWS = capture.PAGES  # view name -> URL path
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "candle", "garden", "lemon", "violin", "ocean", "basket"]


def _peak_memory(pid: int, stop: threading.Event, out: dict) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
            out["peak"] = max(out.get("peak", 0), rss)
        except psutil.Error:
            pass
        time.sleep(0.2)


async def _session(browser, base: str, i: int, rounds: int, times: dict, errors: list) -> None:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    words = WORDS[i % len(WORDS) :] + WORDS[: i % len(WORDS)]
    prompt = " ".join(words[:5] + words[:3])
    query = urlencode({"model": "circuits", "prompt": prompt, "layer": 1, "head": i % 4})
    try:
        for _ in range(rounds):
            for view, path in VIEWS.items():
                start = time.perf_counter()
                try:
                    await page.goto(f"{base}/{path}?{query}", timeout=120_000)
                    await page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 1", timeout=120_000)
                    await page.wait_for_function("!document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000)
                    if await page.locator("[data-testid=stException]").count():
                        errors.append(f"session {i} {view}: exception on the page")
                    times.setdefault(view, []).append(time.perf_counter() - start)
                except Exception as err:
                    errors.append(f"session {i} {view}: {type(err).__name__}")
    finally:
        await context.close()


async def _run(base: str, sessions: int, rounds: int) -> tuple[dict, list]:
    from playwright.async_api import async_playwright

    times: dict[str, list[float]] = {}
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True, args=capture.CHROMIUM_ARGS
        )
        await asyncio.wait_for(asyncio.gather(*(_session(browser, base, i, rounds, times, errors) for i in range(sessions))), timeout=600)
        await browser.close()
    return times, errors


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    sessions, rounds = max(1, min(args.sessions, 16)), max(1, min(args.rounds, 4))
    port = capture.free_port()
    server = capture.start_server(port)
    stop, memory = threading.Event(), {}
    watcher = threading.Thread(target=_peak_memory, args=(server.pid, stop, memory), daemon=True)
    watcher.start()
    try:
        times, errors = asyncio.run(_run(f"http://127.0.0.1:{port}", sessions, rounds))
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=20)
    rows = []
    print(
        f"{sessions} sessions x {rounds} rounds x {len(VIEWS)} views; server peak memory {memory.get('peak', 0) / 2**20:,.0f} MB; {len(errors)} errors"
    )
    print(f"{'view':<12} {'n':>4} {'median s':>9} {'p95 s':>7}")
    for view in VIEWS:
        t = sorted(times.get(view, []))
        if not t:
            continue
        p95 = t[min(len(t) - 1, round(0.95 * (len(t) - 1)))]
        rows.append(dict(view=view, n=len(t), median_s=statistics.median(t), p95_s=p95))
        print(f"{view:<12} {len(t):>4} {statistics.median(t):>9.2f} {p95:>7.2f}")
    for e in errors[:10]:
        print("error:", e)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "load.json").write_text(
        json.dumps(
            dict(sessions=sessions, rounds=rounds, peak_memory_mb=memory.get("peak", 0) / 2**20, errors=errors, views=rows), indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
