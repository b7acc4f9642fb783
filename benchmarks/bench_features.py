"""SAE features on the English model: training per layer, encoding a prompt at every SAE, all dashboards of one layer.

- training: SAE steps on one hook vs the model's runs that produce their activations (the same tokens);
- a prompt's features at every SAE (run + encode) vs the run it reads alone (target: <= 1.2x);
- all dashboards of one layer (the stats pass + every feature's dashboard) vs the runs over the held-out text they
  read (target: <= 60 s in all).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from benchmarks.common import Row, compare
from workbench import dashboards, features, sae, sae_quality
from workbench.model import load_model
from workbench.runs import run_prompt, run_tokens
from workbench.train import sae as train_sae

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife."


def run(quick: bool = False) -> list[Row]:
    model = load_model("english")
    saes = sae.saes_of(model)
    if not saes:
        return []
    rows = []
    hooks = tuple(saes)

    def the_run():
        model.run_cache.clear()
        run_prompt(model, PROMPT, names=hooks)

    def encoded():
        model.run_cache.clear()
        features.prompt_features(model, saes, PROMPT)

    ref_s, ours_s = compare(the_run, encoded, 5 if quick else 30, warmup=2)
    rows.append(Row("features", f"one prompt, {len(hooks)} SAEs", "the run it reads", ref_s, "run + encode at every SAE", ours_s))

    # training: a short run on one hook, against the model's runs over the same number of tokens
    # activations of the held-out text (the corpus takes a download cache and a minute to read; the cost per step is the same)
    ids = np.asarray(model.tokenizer(sae_quality.heldout_text(model)[1])["input_ids"] * 4, dtype=np.int64)
    steps = 10 if quick else 60
    cfg = dataclasses.replace(train_sae.CONFIG, hooks=(hooks[0],), tokens=steps * train_sae.CONFIG.batch, buffer=0)
    stream = train_sae.activation_stream(model, ids, cfg.hooks, cfg)
    batches = [next(stream)[hooks[0]] for _ in range(steps)]
    windows = torch.from_numpy(ids[: (steps * cfg.batch // (model.info.n_ctx - 1) + 1) * model.info.n_ctx]).view(-1, model.info.n_ctx)
    trainer = train_sae.Trainer(hooks[0], batches[0], cfg, torch.Generator().manual_seed(0))
    t = time.perf_counter()
    for chunk in windows.split(cfg.windows):
        run_tokens(model, chunk, names=[hooks[0]])
    harvest_s = time.perf_counter() - t
    t = time.perf_counter()
    for b in batches:
        trainer.step(b, cfg.lr)
    train_s = time.perf_counter() - t
    per_layer = (harvest_s + train_s) * train_sae.CONFIG.tokens / (steps * cfg.batch)
    rows.append(
        Row(
            "features",
            f"training, {steps * cfg.batch:,} activations (a layer's {train_sae.CONFIG.tokens:,}: ~{per_layer:.0f} s)",
            "the model's runs over them",
            harvest_s,
            f"SAE steps (width {cfg.width}, k {cfg.k})",
            train_s,
        )
    )

    # all dashboards of one layer
    s = saes[hooks[-1]]
    name, text = sae_quality.heldout_text(model)
    held, _ = sae_quality.windows(model, text)

    def reads():
        for chunk in held.split(sae_quality.CHUNK):
            run_tokens(model, chunk, names=[s.hook_name])

    t = time.perf_counter()
    reads()
    ref = time.perf_counter() - t
    t = time.perf_counter()
    stats = dashboards.dashboard_stats(model, s, text, name)
    dashboards.dashboards(model, s, stats)
    ours = time.perf_counter() - t
    rows.append(
        Row(
            "features",
            f"all {s.d_sae} dashboards of {s.hook_name} (target <= 60 s: {ours:.1f} s)",
            "the runs over the held-out text",
            ref,
            "stats pass + every dashboard",
            ours,
        )
    )
    return rows
