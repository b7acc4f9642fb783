"""A transcoder feature's strongest activations on held-out data: the attribution graph page's feature dashboard.

One pass over the held-out rows per layer (train/transcoders.heldout, the text the card measures
on) keeps every feature's top activations and its density in the model's state; a feature's
contexts are read from there. Beside attribution_graph.py, which builds the graph the page draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.attribution_graph import engine_weights, transcoder_set, transcoders_for
from workbench.model import LoadedModel
from workbench.tokens import token_labels


@dataclass(frozen=True)
class Contexts:
    """A feature's strongest activations on held-out data: (text before, token, activation) each."""

    layer: int
    feature: int
    data: str
    top: list[tuple[str, str, float]]
    density: float  # share of held-out tokens where it is active

    def rows(self) -> list[dict]:
        return [dict(context=c, token=t, activation=a) for c, t, a in self.top]


def top_contexts(model: LoadedModel, layer: int, feature: int, k: int = 8, folder: str | None = None) -> Contexts:
    """The `k` held-out tokens where `feature` of layer `layer`'s transcoder (shipped, or in `folder`) is strongest
    (train/transcoders.heldout)."""
    from workbench.train.transcoders import heldout, io_of

    tcs = transcoders_for(model, transcoder_set(model, folder) or None)
    tc = tcs[layer]
    f = tc.check_feature(feature)
    key = (layer, str(folder))
    if key not in model.state.transcoder_contexts:  # each feature's top activations, one pass over the held-out rows per layer
        w = engine_weights(model)
        name, rows, _ = heldout(model)
        rows = rows[:64]
        vals, where, active = [], [], torch.zeros(tc.d_sae)
        with torch.no_grad():
            for s in range(0, len(rows), 16):
                x, _ = io_of(w, rows[s : s + 16].to(model.device))[layer]
                a = tc.encode(x)[:, 1:].float().cpu()  # (b, pos - 1, d_sae): BOS left out
                active += (a > 0).flatten(0, 1).sum(0)
                top = a.flatten(0, 1).topk(min(k, a.shape[0] * a.shape[1]), dim=0)  # (k, d_sae)
                vals.append(top.values)
                where.append(top.indices + s * (rows.shape[1] - 1))
        vals_t, where_t = torch.cat(vals), torch.cat(where)
        best = vals_t.topk(k, dim=0)
        density = active / (len(rows) * (rows.shape[1] - 1))
        model.state.transcoder_contexts[key] = (name, rows, best.values, where_t.gather(0, best.indices), density)
    name, rows, values, where, density = model.state.transcoder_contexts[key]
    width = rows.shape[1] - 1
    top = []
    for v, idx in zip(values[:, f].tolist(), where[:, f].tolist(), strict=True):
        if v <= 0:
            continue
        r, p = divmod(int(idx), width)
        p += 1
        before = model.tokenizer.decode(rows[r, max(1, p - 12) : p].tolist())
        top.append((before, token_labels(model.tokenizer, [int(rows[r, p])])[0], float(v)))
    return Contexts(layer, f, name, top, float(density[f]))
