"""The nnsight backend on a GPT-2-small shape (12 × 12 × 768, vocabulary 50,257, random weights), 16-token prompts.

The residual-stream patching sweep (192 cells) on the bridge's forward engine (the reference), on
nnsight here, and through nnsight's simulation of an NDIF server (each trace serialized as the
remote backend sends it, zstd-compressed, then run here): seconds, and for nnsight the requests and
bytes each way. Then what each view costs through the simulated server: requests, bytes sent,
bytes back. No NDIF server runs on this machine (README, "Beyond one machine"): the network and
the server's queue are not in these numbers, the payloads are.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.bench_patching import gpt2_small_shaped
from benchmarks.common import Row, compare
from workbench import attention, attribution, lens, nnsight_backend, patching, runs, tasks
from workbench import interventions as iv
from workbench.model import load_model

CLEAN = "apple river stone cloud tiger piano apple river stone cloud tiger piano apple river stone"
CORRUPTED = "apple river stone cloud tiger piano apple river stone cloud tiger piano apple river tiger"


def _kb(n: int) -> str:
    return f"{n / 1e3:,.0f} KB" if n < 1e6 else f"{n / 1e6:,.1f} MB"


def view_costs(server, pair: tasks.Pair) -> list[tuple[str, nnsight_backend.Traffic]]:
    """(view, traffic) of each view run once through the (simulated) server, from a cold run cache."""
    views = {
        "next token": lambda: runs.next_token_topk(server, runs.run_prompt(server, CLEAN)),
        "attention patterns": lambda: attention.patterns(server, CLEAN),
        "logit lens (with W_U once)": lambda: lens.lens(server, CLEAN),
        "patching sweep resid_pre": lambda: patching.sweep(server, pair, "resid_pre"),
        "attribution patching": lambda: patching.attribution_sweep(server, pair, "resid_pre"),
        "DLA (with W_O, W_out once)": lambda: attribution.component_attribution(server, CLEAN, pair.answer, pair.wrong),
        "intervene (ablate MLP 3)": lambda: iv.intervene(
            server, CLEAN, iv.EditSet((iv.Ablate("mlp", 3),)), sampling=iv.Sampling(max_new_tokens=4)
        ),
    }
    found = []
    for name, view in views.items():
        server.run_cache.clear()
        before = server.backend.traffic.snapshot()
        try:
            view()
        except Exception as err:  # a view the simulated path cannot run is reported, not hidden
            print(f"  {name}: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
            continue
        found.append((name, server.backend.traffic.since(before)))
    return found


def run(quick: bool = False) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-small"
        gpt2_small_shaped(folder)
        bridge = load_model(str(folder))
        local = load_model(f"nnsight:{folder}")
        server = nnsight_backend.load(f"nnsight:{folder}", simulate_remote=True)
        top = runs.next_token_topk(bridge, runs.run_prompt(bridge, CLEAN), 2)
        pair = tasks.Pair(CLEAN, CORRUPTED, top.ids[0], top.ids[1])
        want = patching.sweep(bridge, pair, "resid_pre")
        rows = []
        for label, model in (("nnsight here", local), ("nnsight via simulated server", server)):
            got = patching.sweep(model, pair, "resid_pre")
            assert (got.raw - want.raw).abs().max() < 1e-3, "the nnsight sweep must equal the bridge's"
            repeats = 1 if quick else 3
            before = model.backend.traffic.snapshot()
            ref_s, ours_s = compare(
                lambda: patching.sweep(bridge, pair, "resid_pre"), lambda m=model: patching.sweep(m, pair, "resid_pre"),
                repeats=repeats, warmup=0,
            )  # fmt: skip
            spent = model.backend.traffic.since(before)  # `repeats` sweeps of ours
            per_sweep = (
                f"{spent.requests // repeats} req, {_kb(spent.sent_bytes // repeats)} up, {_kb(spent.received_bytes // repeats)} down"
            )
            rows.append(Row("nnsight", "resid_pre sweep, 192 cells", "bridge engine", ref_s, f"{label} ({per_sweep})", ours_s))
        print("view costs through the simulated server (GPT-2-small shape, 16 tokens):")
        for name, t in view_costs(server, pair):
            print(f"  {name:<30} {t.requests:>2} requests  {_kb(t.sent_bytes):>9} up  {_kb(t.received_bytes):>9} down  {t.seconds:6.2f} s")
        return rows


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    for r in run(quick=True):
        print(r)
