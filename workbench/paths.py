"""Path patching (Wang et al. 2022, the IOI circuit): a sender's effect along chosen paths only.

The *sender* is a head (its output) or an MLP; the *receivers* are components that read the
residual stream after it: heads' queries, keys or values, MLPs, or the residual at the output
(the logits). Path patching changes only what the receivers read: each receiver's input gains
the sender's change Δ = sender(source run) − sender(base run), on top of what it reads in this
very run; the sender's change reaches nothing else directly.

Exact, through the forward engine, a pass per read point: run with the edits so far and record
what the next receivers read, then replace their activations (q, k, v, MLP output) by the engine's
own arithmetic on (that input + Δ) (edges.receive); the output receives Δ as an added edit. A
receiver's input depends only on edits before it, so each pass fixes the next receivers exactly.
With every receiver after the sender selected, this is ordinary patching of the sender (every
reader of the residual sees the sender's source output); with one receiver it is exact edge
patching (edges.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.edges import Receiver, Sender, capture_names, receive, receiver_edit, receiver_input, receivers_of, sender_output, senders_of
from workbench.errors import InputError
from workbench.methods import PreparedPair, pairs_provenance
from workbench.model import LoadedModel


def sender_choices(w: engine.Weights) -> list[Sender]:
    """Heads and MLPs (the embeddings are not a path's sender: patching them is patching the prompt)."""
    return [s for s in senders_of(w) if s.kind != "embed"]


def receiver_choices(w: engine.Weights, sender: Sender) -> list[Receiver]:
    """Every receiver that reads after `sender` writes."""
    return [r for r in receivers_of(w) if sender.writes < r.reads(w.parallel)]


def find(options, label: str, what: str):
    for o in options:
        if o.label == label:
            return o
    raise InputError(f"unknown {what} '{label}': use one of {', '.join(o.label for o in options)}")


@dataclass(frozen=True)
class PathResult:
    """The metric with the sender patched along the chosen paths only, and along each path alone."""

    sender: str
    receivers: tuple[str, ...]
    value: float  # the metric of the path-patched run
    normalised: float  # 0 = the base run, 1 = the full clean − corrupted restoration
    each: torch.Tensor  # (receiver,) normalised effect of each receiver's path alone
    clean_value: float
    corrupted_value: float
    direction: str
    provenance: dict = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        return [dict(receiver=r, normalised=float(v)) for r, v in zip(self.receivers, self.each, strict=True)]


def _patched_value(pair: PreparedPair, sender: Sender, receivers: list[Receiver], base: dict, source: dict) -> float:
    w = pair.weights
    change = sender_output(w, sender, source) - sender_output(w, sender, base)  # (1, pos, d_model)
    edits: list[engine.Edit] = []
    for point in sorted({r.reads(w.parallel) for r in receivers}):
        here = [r for r in receivers if r.reads(w.parallel) == point]
        if any(r.kind != "logits" for r in here):
            now = pair.run("base", edits, capture=capture_names(w)).captured  # what these receivers read, after the edits before them
        for r in here:
            if r.kind == "logits":
                edits.append(engine.Edit("add", "resid_post", w.n_layers - 1, value=change))
            else:
                edits.append(receiver_edit(w, r, receive(w, r, receiver_input(w, r, now) + change)))
    return float(pair.metric(pair.run("base", edits).logits))


def path_patch(model: LoadedModel, pair: PreparedPair, sender: Sender, receivers: list[Receiver]) -> PathResult:
    """The sender's effect along the paths to `receivers`, exactly (module docstring); each path alone too."""
    w = pair.weights
    allowed = receiver_choices(w, sender)
    bad = [r.label for r in receivers if r not in allowed]
    if bad:
        raise InputError(f"{', '.join(bad)} read(s) the residual stream before {sender.label} writes it: choose receivers after the sender")
    if not receivers:
        raise InputError("choose at least one receiver (a head's q, k or v, an MLP, or the logits)")
    with torch.no_grad():
        base = pair.run("base", capture=capture_names(w)).captured
        source = pair.run("source", capture=capture_names(w)).captured
        value = _patched_value(pair, sender, receivers, base, source)
        each = torch.tensor([(_patched_value(pair, sender, [r], base, source) - pair.base_value) / pair.span for r in receivers])
    return PathResult(
        sender.label, tuple(r.label for r in receivers), value, (value - pair.base_value) / pair.span, each,
        pair.clean_value, pair.corrupted_value, pair.direction,
        pairs_provenance(model, [pair], "path patching", sender=sender.label, receivers=[r.label for r in receivers]),
    )  # fmt: skip


def path_patch_named(
    model: LoadedModel, prompt_pair, direction: str, sender: str, receivers: tuple[str, ...], *, metric: str = "logit difference"
) -> PathResult:
    """path_patch for a prompt pair (tasks.Pair) read with the metric of kind `metric`, and labels ("L0H1", "L1H3.k",
    "logits"), as a page or a probe names them."""
    from workbench.methods import prepare

    pair = prepare(model, prompt_pair, direction, metric=metric)
    s = find(sender_choices(pair.weights), sender, "sender")
    options = receiver_choices(pair.weights, s)
    return path_patch(model, pair, s, [find(options, r, "receiver") for r in receivers])
