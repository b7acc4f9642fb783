"""What a node of the information-flow graph holds: the logit lens there, the direct effect of the update written
into it, and the MLP neurons that make most of an MLP's output (by the decomposition's proximity, graph_parts.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import engine, lens
from workbench.errors import InputError
from workbench.graph_parts import proximity
from workbench.model import LoadedModel
from workbench.runs import Run, check_position
from workbench.tokens import token_labels


@dataclass(frozen=True)
class NodeReading:
    """The logit lens at one node, and what the update that made it promotes and suppresses (its direct effect)."""

    point: int
    position: int
    lens_ids: list[int]
    lens_labels: list[str]
    lens_probs: list[float]
    promotes: list[str]  # the update · W_U: largest tokens
    promotes_logits: list[float]
    suppresses: list[str]  # smallest
    suppresses_logits: list[float]

    def rows(self) -> list[dict]:
        return [
            dict(rank=r + 1, lens_token=self.lens_labels[r], lens_probability=self.lens_probs[r], promotes=self.promotes[r],
                 promotes_logit=self.promotes_logits[r], suppresses=self.suppresses[r], suppresses_logit=self.suppresses_logits[r])
            for r in range(len(self.lens_labels))
        ]  # fmt: skip


def read_node(model: LoadedModel, run: Run, point: int, position: int, k: int = 10) -> NodeReading:
    """The lens reading of node (point, position) and the direct effect of the update written into it."""
    points = lens.lens_points(model)
    if not 0 <= point < len(points):
        raise InputError(f"point {point} is outside the model: it has points 0..{len(points) - 1}")
    position = check_position(run.n_tokens, position)
    k = max(1, min(k, model.info.d_vocab))
    resid = run[points[point][1]][position].float()  # (d_model,)
    with torch.no_grad():
        probs = lens.readout(model, resid[None])[0].softmax(-1)  # (d_vocab,)
        before = run[points[point - 1][1]][position].float() if point else torch.zeros_like(resid)
        direct = (resid - before) @ engine.readout_of(model).W_U  # (d_vocab,) the update's direct logits (the embedding itself at point 0)
    top = probs.topk(k)
    up, down = direct.topk(k), (-direct).topk(k)
    tok = model.tokenizer
    return NodeReading(
        point, position, top.indices.tolist(), token_labels(tok, top.indices.tolist()), top.values.tolist(),
        token_labels(tok, up.indices.tolist()), up.values.tolist(), token_labels(tok, down.indices.tolist()), (-down.values).tolist(),
    )  # fmt: skip


@dataclass(frozen=True)
class Neurons:
    """The MLP neurons of one (layer, position) that make most of its output, by the same proximity measure."""

    layer: int
    position: int
    ids: list[int]
    activations: list[float]
    importance: list[float]  # share of the MLP's output, normalised over every neuron and the bias
    promotes: list[str]  # the token each neuron's output direction raises most

    def rows(self) -> list[dict]:
        return [
            dict(neuron=n, activation=a, importance=i, promotes=p)
            for n, a, i, p in zip(self.ids, self.activations, self.importance, self.promotes, strict=True)
        ]


def top_neurons(model: LoadedModel, run: Run, layer: int, position: int, k: int = 10) -> Neurons:
    """The k neurons of the MLP in `layer` at `position` whose parts (activation × W_out row) come closest to its output."""
    if not 0 <= layer < model.info.n_layers:
        raise InputError(f"layer {layer} is outside the model: it has layers 0..{model.info.n_layers - 1}")
    position = check_position(run.n_tokens, position)
    weights = engine.block_weights(model, layer)
    act = run[f"blocks.{layer}.mlp.hook_post"][position].float()  # (d_mlp,)
    w_out = weights.W_out  # (d_mlp, d_model)
    whole = run[f"blocks.{layer}.hook_mlp_out"][position].float()  # (d_model,)
    parts = act[:, None] * w_out  # (d_mlp, d_model)
    b_out = weights.b_out  # (d_model,) or None
    prox = proximity(whole, parts)  # (d_mlp,)
    total = prox.sum() + (proximity(whole, b_out[None])[0] if b_out is not None else 0)
    share = prox / total.clamp(min=1e-30)
    top = share.topk(min(k, len(share)))
    ids = top.indices.tolist()
    promoted = (w_out[ids] @ engine.readout_of(model).W_U).argmax(-1).tolist()
    return Neurons(layer, position, ids, act[ids].tolist(), top.values.tolist(), token_labels(model.tokenizer, promoted))
