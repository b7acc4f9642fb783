"""Every page's first visit on a GPT-2-small-shaped model (random weights), as ratios to one plain forward.

Each page is opened alone through Streamlit's AppTest (the real page script, in this process),
with the model already loaded and every cache of analyses emptied before it (the server's caches,
the model's runs and derived tensors; the per-model disk cache is left, as a user's second visit
finds it -- `--cold` empties it too). Two measures, both against one plain `transformers` forward
of the same prompt (with attentions and hidden states, as the NOTES measured it), taken in the
same run:

- forward passes: the page's floating-point work (every matrix multiplication, forward and
  backward, counted by torch's FlopCounterMode inside the page's script thread) divided by that
  forward's. It does not depend on how busy the machine is.
- time: the page's seconds over the forward's seconds (the counter's own overhead included).

The gates decide at the reference machine's speed (cost.reference_calibration, as the tests do), so
that which work a page starts on its own does not depend on how busy this machine is.

"first figure" is the same, counted up to the page's first `ui.figure`. Targets (issue 23): first
figure within 5 forward passes, the whole default page within 15.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import Row
from benchmarks.shapes import build

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"Home": ROOT / "app.py"} | {
    p.stem.split("_", 1)[1].replace("_", " "): p for p in sorted((ROOT / "pages").glob("*.py"), key=lambda p: int(p.stem.split("_")[0]))
}
FIRST_FIGURE, WHOLE_PAGE = 5, 15  # targets, in plain forward passes


@dataclass
class Visit:
    page: str
    seconds: float
    flops: int
    first_seconds: float | None  # until the first figure (None: the page drew none)
    first_flops: int | None
    problems: list[str]


class _Counter:
    """The page thread's FlopCounterMode and the figures it saw; installed around AppTest's script thread."""

    def __init__(self):
        self.mode = None
        self.start = 0.0
        self.first: tuple[float, int] | None = None

    def install(self):
        from streamlit.testing.v1.local_script_runner import LocalScriptRunner
        from torch.utils.flop_counter import FlopCounterMode

        from workbench import ui

        counter = self
        original_thread = LocalScriptRunner._run_script_thread
        original_figure = ui.figure

        def counted_thread(runner):
            # a dispatch mode is per thread: enter it in the page's own thread
            with FlopCounterMode(display=False) as mode:
                counter.mode = mode
                original_thread(runner)

        def noted_figure(*args, **kwargs):
            if counter.first is None and counter.mode is not None:
                counter.first = (time.perf_counter() - counter.start, counter.mode.get_total_flops())
            return original_figure(*args, **kwargs)

        LocalScriptRunner._run_script_thread = counted_thread
        ui.figure = noted_figure

        def uninstall():
            LocalScriptRunner._run_script_thread = original_thread
            ui.figure = original_figure

        return uninstall


def forward_flops(hf, ids: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        hf(ids, output_attentions=True, output_hidden_states=True)
    return mode.get_total_flops()


# what is worked out once per loaded model, whatever the page: the cost model's FLOP count and calibration, the
# engine's weights and its check against the model's logits. Done once before the pages and counted apart.
PER_MODEL = ("flops_per_token", "calibration", "weights", "checked")  # fields of model.state (workbench.model.ModelState)


def per_model_flops(model) -> int:
    """FLOPs of the per-model work (PER_MODEL), done now, once."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench import cost, engine

    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        cost.flops_per_token(model)
        engine.backend(model)
    return mode.get_total_flops()


def reset(model) -> None:
    """Forgets every analysis of `model` held in memory (not the per-model work), so that the next page starts as a first visit."""
    from workbench import ui
    from workbench.model import ModelState

    for cache in ui.server_caches().values():
        with cache._lock:
            cache._items.clear()
    model.run_cache.clear()
    kept = {name: getattr(model.state, name) for name in PER_MODEL}
    model.state = ModelState(**kept)


def visit(counter: _Counter, page: Path, folder: str, name: str) -> Visit:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=900)
    at.session_state["wb.model"] = folder
    counter.first = None
    counter.start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - counter.start
    flops = counter.mode.get_total_flops()
    problems = [f"exception: {str(e.value).splitlines()[0][:120]}" for e in at.exception]
    problems += [f"error: {e.value[:120]}" for e in at.error]
    first = counter.first
    return Visit(name, seconds, flops, first and first[0], first and first[1], problems)


def measure(folder: str, pages: dict[str, Path] | None = None, cold: bool = False) -> tuple[float, int, list[Visit], int]:
    """(plain forward seconds, its flops, each page's visit, the per-model work's flops) on the model in `folder`."""
    import streamlit as st
    from transformers import AutoModelForCausalLM

    from workbench import cost, ui
    from workbench.runs import encode

    measured_calibration, cost.calibrate = cost.calibrate, cost.reference_calibration  # gates at the reference speed
    st.cache_resource.clear()
    # called exactly as the pages call it (ui.View.start), so that this is the very object they run on: the server's
    # cache keys its arguments as given, and a call without them would load a second model that `reset` never clears
    model = ui.cached_model(folder, trust_remote_code=False, dtype="float32")
    prompt = ui.example_prompt(folder)
    ids, _ = encode(model, prompt)
    hf = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, attn_implementation="eager").eval().to(model.device)
    ids = ids[None].to(model.device)  # (1, pos)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    with torch.no_grad():
        for _ in range(2):
            hf(ids, output_attentions=True, output_hidden_states=True)
        times = []
        for _ in range(7):
            sync()
            t = time.perf_counter()
            hf(ids, output_attentions=True, output_hidden_states=True)
            sync()
            times.append(time.perf_counter() - t)
    ref_s, ref_flops = statistics.median(times), forward_flops(hf, ids)
    del hf
    model.state = type(model.state)()  # a fresh ModelState: the per-model work is counted from nothing
    once = per_model_flops(model)
    print(f"  per-model work, once per loaded model: {once / ref_flops:.1f} passes", flush=True)
    counter = _Counter()
    uninstall = counter.install()
    visits = []
    try:
        for name, page in (pages or PAGES).items():
            reset(model)
            if cold:
                cost.clear_disk_cache(model)
            visits.append(visit(counter, page, folder, name))
            v = visits[-1]
            print(f"  {name:<18} {v.flops / ref_flops:7.1f} passes  {v.seconds:6.2f} s  {'; '.join(v.problems)}", flush=True)
    finally:
        uninstall()
        cost.calibrate = measured_calibration
    return ref_s, ref_flops, visits, once


def table(ref_s: float, ref_flops: int, visits: list[Visit], once: int = 0) -> str:
    """A markdown table of the visits, as ratios to the plain forward."""
    lines = [
        f"plain transformers forward: {ref_s * 1e3:.0f} ms, {ref_flops / 1e9:.2f} GFLOP; per-model work (once per loaded model, "
        f"not in the pages' counts: {', '.join(PER_MODEL)}): {once / ref_flops:.1f} forward passes",
        "",
        "| page | first figure (forward passes) | whole page (forward passes) | whole page (time / forward) | seconds | problems |",
        "|---|---|---|---|---|---|",
    ]
    for v in visits:
        first = "no figure" if v.first_flops is None else f"{v.first_flops / ref_flops:.1f}"
        lines.append(
            f"| {v.page} | {first} | {v.flops / ref_flops:.1f} | {v.seconds / ref_s:.0f} | {v.seconds:.2f} | {'; '.join(v.problems) or '-'} |"
        )
    return "\n".join(lines)


def run(quick: bool = False, cold: bool = False) -> list[Row]:
    """The GPT-2-small shape, then the shipped English model (the README's two tables)."""
    from workbench.model import MODELS_DIR

    tables, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        build("gpt2-small", Path(tmp))
        for name, folder in (("GPT-2-small shape (random weights)", tmp), ("shipped English model", str(MODELS_DIR / "english"))):
            ref_s, ref_flops, visits, once = measure(folder, cold=cold)
            tables.append(f"### {name}\n\n{table(ref_s, ref_flops, visits, once)}\n")
            rows += [
                Row(
                    "pages",
                    f"{name.split()[0]} {v.page}",
                    "transformers forward",
                    ref_s,
                    f"first visit, {v.flops / ref_flops:.1f} fwd (FLOPs)",
                    v.seconds,
                )
                for v in visits
            ]
    print("\n".join(tables))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "pages.md").write_text("\n".join(tables))
    return rows
