"""Activation patching sweeps for one prompt pair, or averaged over a dataset of pairs (from a spec file,
or generated copying pairs for the circuits model). One pair also gets the preview (AtP*, or plain AtP with
--preview AtP) beside the exact sweep, with its correlation and recall@5."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from workbench import cost, long, patching, preview, tasks
from workbench.errors import InputError
from workbench.figures import patching as draw
from workbench.metrics import METRICS
from workbench.patch_sites import SITES
from workbench.runs import encode

from .common import run_probe

DEFAULTS = {
    "clean": "apple river stone cloud tiger piano candle garden apple river stone",
    "corrupted": "apple river stone lemon tiger piano candle garden apple river stone",
    "answer": " cloud",
    "wrong": " lemon",
    "pairs": [],
    "induction_pairs": 0,
    "metric": "logit difference",
    "direction": "denoising",
    "sites": ["resid_pre", "z"],
    "preview": "AtP*",
    "model": "circuits",
}


def add_arguments(p):
    p.add_argument("--clean")
    p.add_argument("--corrupted")
    p.add_argument("--answer", help="answer token, e.g. ' cloud'")
    p.add_argument("--wrong", help="wrong token, e.g. ' lemon'")
    p.add_argument("--metric", choices=METRICS)
    p.add_argument("--direction", choices=patching.DIRECTIONS)
    p.add_argument("--site", action="append", dest="sites", choices=list(SITES))
    p.add_argument("--preview", choices=preview.PREVIEW_METHODS, help="the estimate beside the exact sweep (default AtP*)")
    p.add_argument("--induction-pairs", type=int, dest="induction_pairs", help="average over N generated copying pairs (circuits model)")
    p.add_argument("--task", choices=list(tasks.TASKS), help="average over a shipped task's pairs (the stories model: ioi, pronoun, ...)")
    p.add_argument("--task-pairs", type=int, dest="task_pairs", help="with --task: how many of its pairs (default 16)")


def prompt_pairs(model, s) -> list[tasks.Pair]:
    """The spec's prompt pairs (a shipped task's, generated copying pairs, or the spec's own), each checked before any runs."""
    if s.get("task"):
        pairs = list(tasks.load(Path(model.info.source), s["task"]).pairs[: int(s.get("task_pairs") or 16)])
    elif s["induction_pairs"]:
        pairs = tasks.induction_pairs(model, int(s["induction_pairs"]), seed=int(s["seed"]))
    else:
        pairs = []
        for i, pair in enumerate(s["pairs"] or [dict(clean=s["clean"], corrupted=s["corrupted"], answer=s["answer"], wrong=s["wrong"])]):
            missing = {"clean", "corrupted", "answer", "wrong"} - set(pair)
            if missing:
                raise InputError(f"pair {i} of the spec lacks {sorted(missing)}")
            pairs.append(tasks.Pair(pair["clean"], pair["corrupted"], pair["answer"], pair["wrong"]))
    for pair in pairs:
        tasks.check_pair(model, pair, s["metric"])
    return pairs


def body(model, s, out):
    pairs = prompt_pairs(model, s)
    n = len(encode(model, pairs[0].clean)[0])
    for site in s["sites"]:
        t = time.time()
        sweep = long.sweep_cost(model, n, site)  # each patched run starts at its layer: at most this many passes
        print(cost.estimate(model, f"the exact {site} sweep, {sweep.cells} cells x {len(pairs)} pair(s)", n,
                            passes=sweep.cells * len(pairs), calls=sweep.passes * len(pairs)).line(), flush=True)  # fmt: skip
        if len(pairs) == 1:
            # the preview first: it takes seconds, and bad input stops the probe before the exact sweep
            estimate = preview.preview_sweep(model, pairs[0], site, method=s["preview"], direction=s["direction"], metric=s["metric"])
            with tqdm(total=1, desc=f"{site}", unit="cell") as bar:

                def progress(done, total, bar=bar):
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                r = patching.sweep(model, pairs[0], site, s["direction"], metric=s["metric"], progress=progress)
            out.figure(draw.patching_heatmap(r), f"patching-{site}")
            out.figure(draw.patching_heatmap(estimate, f"{estimate.method} estimate"), f"patching-{site}-estimate")
            out.data(f"patching-{site}", r, r.rows())
            out.data(f"patching-{site}-estimate", estimate, estimate.rows())
            out.manifest.setdefault("correlation_estimate_exact", {})[site] = patching.correlation(estimate, r)
            out.manifest.setdefault(f"recall@{preview.K}_estimate_exact", {})[site] = preview.recall(estimate, r)
            # the method that ran (plain AtP where the engine cannot run the model) and its passes, whatever the cells
            out.manifest.setdefault("estimate", {})[site] = dict(
                method=estimate.method, forward=estimate.forward, backward=estimate.backward
            )
        else:
            with tqdm(total=len(pairs), desc=f"{site}", unit="pair") as bar:
                r = patching.sweep_dataset(
                    model, pairs, site, s["direction"], metric=s["metric"], progress=lambda done, total: bar.update(done - bar.n)
                )
            out.figure(draw.patching_heatmap(r), f"patching-{site}-dataset")
            out.data(f"patching-{site}-dataset", r)
        # how the patched runs were computed: the fast engine, or the model's own hooks when the engine did not check out
        out.manifest.setdefault("patching_backend", {})[site] = {"backend": r.backend, "note": r.note}
        out.timing(site, time.time() - t)


def main(argv=None) -> int:
    return run_probe("patching", __doc__, add_arguments, DEFAULTS, body, argv)
