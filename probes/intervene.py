"""Interventions: a prompt run with and without a set of edits (ablate, steer, clamp), both continuations, per-position KL,
the metric before and after; optionally every head ablated and ranked, and a steering-coefficient sweep."""

from __future__ import annotations

import json
import time

from workbench import edit_values as values
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench.edit_specs import HOW
from workbench.errors import InputError
from workbench.figures import intervene as draw
from workbench.generate import Sampling
from workbench.tokens import single_token_id

from .common import run_probe

DEFAULTS = {
    "model": "english",
    "prompt": "In the morning Jane walked to the old whale by the sea. In the morning Jane walked to the old",
    "edits": "ablate head 1.0 mean; ablate head 1.2 mean; ablate head 1.3 mean",
    "reference": [],  # mean ablation's prompts (empty: the model's held-out text)
    "resample": "",
    "metric": "probability",
    "answer": "",  # empty: the original run's top next token
    "wrong": "",
    "tokens": 12,
    "sampling": "greedy",  # or "sampled" (with --seed and --temperature)
    "temperature": 1.0,
    "head_sweep": "",  # zero, mean or resample: ablate every head and rank them
    "steer_answers": [],  # answer tokens of a steering sweep over the first steering edit
    "coefficients": [0, 0.5, 1, 2, 4, 8],
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--edits", help="the edit set as one line, e.g. 'ablate head 1.2 mean; steer 1 4 prompts plus=... minus=...'")
    p.add_argument("--resample", help="the prompt resample ablations take their values from")
    p.add_argument("--metric", choices=iv.METRICS)
    p.add_argument("--answer", help="answer token, e.g. ' whale' (default: the original run's top next token)")
    p.add_argument("--wrong", help="wrong token for the logit difference")
    p.add_argument("--tokens", type=int, help="tokens to generate")
    p.add_argument("--sampling", choices=("greedy", "sampled"), help="greedy (default), or sampled with --seed and --temperature")
    p.add_argument("--temperature", type=float)
    p.add_argument("--head-sweep", dest="head_sweep", choices=HOW, help="also ablate every head alone, this way, and rank them")
    p.add_argument(
        "--steer-answer", dest="steer_answers", action="append", help="sweep the first steering edit's coefficient for these tokens"
    )


def edit_set(s: dict) -> iv.EditSet:
    spec = {"edits": s["edits"], "reference": s["reference"], "resample": s["resample"]}
    return iv.EditSet.from_dict(spec)


def body(model, s, out):
    edits = edit_set(s)
    out.manifest["edit_set"] = str(edits)
    out.manifest["conventions"] = {e.label(): e.convention for e in edits.edits if isinstance(e, iv.Ablate)}  # a head's two zeros differ
    metric = None
    if s["answer"]:
        answer = single_token_id(model.tokenizer, s["answer"], "answer")
        wrong = single_token_id(model.tokenizer, s["wrong"], "wrong") if s["wrong"] else None
        metric = iv.Metric(s["metric"], answer, wrong)
    elif s["metric"] == "logit difference":
        raise InputError("the logit difference needs --answer and --wrong")
    sampling = Sampling(
        max_new_tokens=int(s["tokens"]), greedy=s["sampling"] == "greedy", temperature=float(s["temperature"]), seed=int(s["seed"])
    )
    t = time.time()
    r = iv.intervene(model, s["prompt"], edits, metric, sampling)
    out.timing("intervene", time.time() - t)
    out.figure(draw.next_token(r), "intervene-next-token")
    out.figure(draw.kl_by_position(r), "intervene-kl")
    out.figure(draw.continuations(r), "intervene-continuations")
    out.data("intervene", r, r.rows())
    out.data("intervene-continuations", r.continuation_rows(), r.continuation_rows())
    out.text("edits.json", json.dumps(edits.to_dict(), indent=1, ensure_ascii=False) + "\n")
    out.text("continuations.txt", f"prompt: {r.prompt}\noriginal: {r.original.text}\nedited: {r.edited.text}\n")
    out.manifest["metric"] = {"label": r.metric_label, "before": r.before, "after": r.after}
    print(f"{r.metric_label}: {r.before:.4f} -> {r.after:.4f}; KL at the last position {float(r.kl[-1]):.4f} nats")
    print(f"original: {r.original.text!r}\nedited:   {r.edited.text!r}")
    if s["head_sweep"]:
        t = time.time()
        sweep = ivs.ablation_sweep(model, s["prompt"], r.metric, s["head_sweep"], edits)
        out.timing("head_sweep", time.time() - t)
        out.figure(draw.head_ablation(sweep), f"intervene-heads-{sweep.how}")
        out.data(f"intervene-heads-{sweep.how}", sweep, sweep.ranked())
        out.manifest["head_sweep_backend"] = {
            "backend": sweep.backend,
            "note": sweep.note,
            "convention": sweep.provenance["settings"]["convention"],
        }
    if s["steer_answers"]:
        steers = [e for e in edits.edits if isinstance(e, iv.Steer)]
        if not steers:
            raise InputError("a steering sweep needs a steering edit in the edit set")
        answers = [single_token_id(model.tokenizer, tok, "answer") for tok in s["steer_answers"]]
        held = values.reference_prompts(model)
        t = time.time()
        sweep = ivs.steering_sweep(model, steers[0], answers, held[:8], held[8:16], s["coefficients"], edits)
        out.timing("steering_sweep", time.time() - t)
        out.figure(draw.steering(sweep), "intervene-steering")
        out.data("intervene-steering", sweep, sweep.rows())


def main(argv=None) -> int:
    return run_probe("intervene", __doc__, add_arguments, DEFAULTS, body, argv)
