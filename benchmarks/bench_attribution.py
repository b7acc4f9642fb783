"""Integrated Gradients: the workbench's (steps in batches, only the last position unembedded) vs captum's default use."""

from __future__ import annotations

import torch
from captum.attr import LayerIntegratedGradients

from benchmarks.common import Row, compare
from workbench import attribution
from workbench.model import load_model
from workbench.runs import encode

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a"
STEPS = 64


def run(quick: bool = False) -> list[Row]:
    model = load_model("english")
    ids, _ = encode(model, PROMPT)
    with torch.no_grad():
        target = int(model.bridge(ids[None])[0, -1].argmax())
    bos = torch.full_like(ids, model.bos_id)[None]
    bos[0, 1:] = model.bos_id

    def captum_default():
        # the usual recipe: layer IG on the embedding, the whole forward pass, captum's defaults otherwise
        with model.lock:
            lig = LayerIntegratedGradients(lambda x: model.bridge(x)[:, -1].log_softmax(-1), model.bridge.embed)
            lig.attribute(ids[None], baselines=bos, target=target, n_steps=STEPS)

    def ours():
        attribution.input_attribution(model, PROMPT, attribution.Answer((target,)), steps=STEPS)

    ref_s, ours_s = compare(captum_default, ours, 2 if quick else 7, warmup=1)
    return [
        Row("attribution", f"IG, {STEPS} steps", "captum LayerIntegratedGradients", ref_s, "workbench IG (batched, last position)", ours_s)
    ]
