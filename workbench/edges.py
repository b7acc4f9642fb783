"""Edges between components: exact edge patching, and its estimates EAP and EAP-IG.

A *sender* writes into the residual stream: the embeddings, each head (its output through W_O),
each MLP. A *receiver* reads it: each head's queries, each key/value head's keys and values, each
MLP, and the logits (the residual at the output). An *edge* joins a sender to a receiver that
reads after it writes (in a sequential block, a head feeds its own layer's MLP; in a parallel
block it does not).

Exact edge patching (the ground truth here): the receiver's input gets the sender's output change
Δ = sender(source run) − sender(base run) added, nothing else changes, and everything after the
receiver is recomputed. Through the engine this is a replace edit of the receiver's activation
(its q, k or v, or its MLP output) by the receiver applied to (base input + Δ), or an added Δ at
the output: one batched pass, one row per edge.

EAP (Syed et al. 2023) estimates every edge at once: Δ · ∂metric/∂(receiver's input), the
gradient taken on the base run along that receiver's own path. EAP-IG (Hanna et al. 2024)
averages that gradient over runs whose input embeddings lie between the two prompts'. Here the m
points run from the source prompt's embeddings to the base prompt's, the last one on the base run
itself (α = 1 − k/m, k = 1..m), so that one step is EAP.

`circuit_faithfulness` scores a set of edges as the MIB benchmark does: in one run each receiver
reads the base run's input plus the changes of only its circuit senders, as they are in this run
(the embeddings are the source prompt's); the empty circuit gives the base run, every edge the
source run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.methods import Node, PreparedPair, nodes_of, pairs_provenance, site_names
from workbench.model import LoadedModel

EDGE_METHODS = ("exact", "EAP", "EAP-IG")
ROWS = 128  # patched runs per engine pass


@dataclass(frozen=True)
class Sender:
    kind: str  # "embed", "head" or "mlp"
    layer: int = -1
    head: int | None = None

    @property
    def label(self) -> str:
        return {"embed": "embed", "head": f"L{self.layer}H{self.head}", "mlp": f"L{self.layer} MLP"}[self.kind]

    @property
    def writes(self) -> tuple[float, ...]:
        """When it writes: after the attention (.5) or after the MLP (1.5) of its layer."""
        return (-1.0,) if self.kind == "embed" else (self.layer, 0.5 if self.kind == "head" else 1.5)


@dataclass(frozen=True)
class Receiver(Node):
    """What reads the residual stream: a node (methods.Node: a head's q, k or v, an MLP), or the logits (kind "logits")."""

    @property
    def label(self) -> str:
        return "logits" if self.kind == "logits" else super().label

    def reads(self, parallel: bool) -> tuple[float, ...]:
        return (self.layer, 1.0 if self.kind == "mlp" and not parallel else 0.0)


@dataclass(frozen=True)
class Edge:
    sender: Sender
    receiver: Receiver

    @property
    def label(self) -> str:
        return f"{self.sender.label} → {self.receiver.label}"


def senders_of(w: engine.Weights) -> list[Sender]:
    out = [Sender("embed")]
    for layer in range(w.n_layers):
        out += [Sender("head", layer, h) for h in range(w.n_heads)] + [Sender("mlp", layer)]
    return out


def receivers_of(w: engine.Weights) -> list[Receiver]:
    """Every node (methods.nodes_of, in its order), then the logits."""
    return [*(Receiver(n.kind, n.layer, n.head) for n in nodes_of(w)), Receiver("logits", w.n_layers)]


def edges_of(w: engine.Weights) -> list[Edge]:
    """Every edge, by receiver in reading order, then sender."""
    senders = senders_of(w)
    return [Edge(s, r) for r in receivers_of(w) for s in senders if s.writes < r.reads(w.parallel)]


# ---- what senders write and receivers read --------------------------------------------------------


CAPTURE = ("resid_pre", "resid_mid", "resid_post", "q", "k", "v", "z", "mlp_out")


def capture_names(w: engine.Weights) -> list[str]:
    return site_names(w, *(s for s in CAPTURE if not (w.parallel and s == "resid_mid")))


def sender_output(w: engine.Weights, s: Sender, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, pos, d_model) what the sender adds to the residual stream (a head's without the shared bias b_O)."""
    if s.kind == "embed":
        return acts["blocks.0.hook_resid_pre"]
    if s.kind == "mlp":
        return acts[f"blocks.{s.layer}.hook_mlp_out"]
    E = w.d_head
    z = acts[f"blocks.{s.layer}.attn.hook_z"][:, :, s.head]  # (batch, pos, d_head)
    return z @ w.layers[s.layer].W_O[s.head * E : (s.head + 1) * E]


def receiver_input(w: engine.Weights, r: Receiver, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, pos, d_model) the residual stream the receiver reads."""
    if r.kind == "logits":
        return acts[f"blocks.{w.n_layers - 1}.hook_resid_post"]
    site = "resid_mid" if r.kind == "mlp" and not w.parallel else "resid_pre"
    return acts[f"blocks.{r.layer}.{engine.SITE_HOOKS[site]}"]


def receive(w: engine.Weights, r: Receiver, resid: torch.Tensor) -> torch.Tensor:
    """The receiver's activation when it reads `resid` (batch, pos, d_model): its q/k/v (batch, pos, d_head), MLP output or the residual itself.

    The engine's own arithmetic for that one component (engine.block), on any residual stream.
    """
    if r.kind == "logits":
        return resid
    L, H, K, E = w.layers[r.layer], w.n_heads, w.n_kv_heads, w.d_head
    if r.kind == "mlp":
        x = L.ln1(resid) if L.ln2 is None else L.ln2(resid)
        if L.W_gate_in is not None:
            gate, hidden = (x @ L.W_gate_in).chunk(2, -1)
            hidden = L.act(gate) * (hidden + (L.b_in if L.b_in is not None else 0))
        else:
            hidden = L.act(x @ L.W_in + (L.b_in if L.b_in is not None else 0))
        return hidden @ L.W_out + (L.b_out if L.b_out is not None else 0)
    start = {"q": 0, "k": H * E, "v": (H + K) * E}[r.kind] + r.head * E
    out = L.ln1(resid) @ L.W_qkv[:, start : start + E]
    return out + (L.b_qkv[start : start + E] if L.b_qkv is not None else 0)


def receiver_activation(w: engine.Weights, r: Receiver, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, pos, ...) the receiver's activation as the run computed it (the engine's capture)."""
    if r.kind == "logits":
        return receiver_input(w, r, acts)
    if r.kind == "mlp":
        return acts[f"blocks.{r.layer}.hook_mlp_out"]
    return acts[f"blocks.{r.layer}.attn.hook_{r.kind}"][:, :, r.head]


def receiver_edit(w: engine.Weights, r: Receiver, value: torch.Tensor, rows: torch.Tensor | None = None) -> engine.Edit:
    """The edit that sets the receiver's activation to `value` (receive()'s output; for the logits, the residual at the output)."""
    if r.kind == "logits":
        return engine.Edit("replace", "resid_post", w.n_layers - 1, value=value, rows=rows)
    if r.kind == "mlp":
        return engine.Edit("replace", "mlp_out", r.layer, value=value, rows=rows)
    return engine.Edit("replace", r.kind, r.layer, head=r.head, value=value, rows=rows)


# ---- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeEffects:
    """Each edge's effect by one method, normalised per pair (1 = the full clean − corrupted restoration), averaged over pairs."""

    method: str
    edges: tuple[Edge, ...]
    effect: torch.Tensor  # (edge,)
    seconds: float
    forward: int  # forward passes per pair
    backward: int  # backward passes per pair
    n_pairs: int
    steps: int = 1  # EAP-IG's points
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def magnitude(self) -> torch.Tensor:
        return self.effect.abs()

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.edges]

    def ranked(self, k: int | None = None) -> list[dict]:
        order = self.magnitude.argsort(descending=True)[:k].tolist()
        return [dict(rank=r + 1, edge=self.edges[i].label, effect=float(self.effect[i])) for r, i in enumerate(order)]


def _runs(pair: PreparedPair) -> tuple[dict, dict]:
    w = pair.weights
    with torch.no_grad():
        base = pair.run("base", capture=capture_names(w)).captured
        source = pair.run("source", capture=capture_names(w)).captured
    return base, source


def exact_edges(model: LoadedModel, pairs: list[PreparedPair], tick=None) -> EdgeEffects:
    """Every edge patched on its own, exactly (the module docstring): batched engine passes, one row per edge.

    `tick()` is called after each pass (a long job's progress; it may raise to cancel).
    """
    t = time.perf_counter()
    w = pairs[0].weights
    edges = edges_of(w)
    effects, passes = [], 0
    for pair in pairs:
        base, source = _runs(pair)
        change = {s: sender_output(w, s, source) - sender_output(w, s, base) for s in senders_of(w)}  # (1, pos, d_model)
        inputs = {r: receiver_input(w, r, base) for r in receivers_of(w)}
        out = torch.empty(len(edges))
        with torch.no_grad():
            for start in range(0, len(edges), ROWS):
                chunk = edges[start : start + ROWS]
                edits = [
                    receiver_edit(w, e.receiver, receive(w, e.receiver, inputs[e.receiver] + change[e.sender]), torch.tensor([i]))
                    for i, e in enumerate(chunk)
                ]
                out[start : start + len(chunk)] = pair.metric(pair.run("base", edits, batch=len(chunk)).logits).cpu()
                passes += 1
                if tick is not None:
                    tick()
        effects.append((out - pair.base_value) / pair.span)
    return EdgeEffects("exact", tuple(edges), torch.stack(effects).mean(0), time.perf_counter() - t, 2 + passes // len(pairs), 0,
                       len(pairs), provenance=pairs_provenance(model, pairs, "exact edge patching"))  # fmt: skip


def _input_gradients(w: engine.Weights, acts: dict, grads: dict, receivers: list[Receiver]) -> dict[Receiver, torch.Tensor]:
    """{receiver: (pos, d_model)} ∂metric/∂(the receiver's input) along its own path, averaged over the batch."""
    out = {}
    for r in receivers:
        if r.kind == "logits":
            out[r] = receiver_activation(w, r, grads).mean(0)
            continue
        resid = receiver_input(w, r, acts).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(receive(w, r, resid), resid, grad_outputs=receiver_activation(w, r, grads))
        out[r] = g.mean(0)
    return out


def _gradient_run(pair: PreparedPair, resid: torch.Tensor | None) -> tuple[dict, dict]:
    """(activations, their gradients) of the metric summed over the batch: on the base tokens, or from input embeddings `resid`."""
    w = pair.weights
    names = capture_names(w)
    with torch.enable_grad():
        out = pair.run("base", capture=names) if resid is None else engine.forward(w, resid=resid, capture=names, last_only=True)
        acts = [out.captured[n] for n in names]
        grads = torch.autograd.grad(pair.metric(out.logits).sum(), acts, allow_unused=True)
    return (
        {n: a.detach() for n, a in zip(names, acts, strict=True)},
        {n: torch.zeros_like(a) if g is None else g for n, a, g in zip(names, acts, grads, strict=True)},
    )


def attribution_edges(model: LoadedModel, pairs: list[PreparedPair], steps: int | None = None) -> EdgeEffects:
    """EAP (steps None: the gradient on the base run) or EAP-IG with `steps` points (one batched pass); see the module docstring."""
    t = time.perf_counter()
    w = pairs[0].weights
    edges, receivers = edges_of(w), receivers_of(w)
    effects = []
    for pair in pairs:
        base, source = _runs(pair)
        change = {s: (sender_output(w, s, source) - sender_output(w, s, base))[0] for s in senders_of(w)}  # (pos, d_model)
        if steps is None:
            acts, grads = _gradient_run(pair, None)
        else:
            a, b = source["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"]  # (1, pos, d_model) input embeddings
            alpha = 1 - torch.arange(1, steps + 1, dtype=a.dtype, device=a.device) / steps  # (step,): from the source to the base
            acts, grads = _gradient_run(pair, b + alpha[:, None, None] * (a - b))
        g = _input_gradients(w, acts, grads, receivers)
        score = torch.stack([(change[e.sender] * g[e.receiver]).sum() for e in edges]).cpu()
        effects.append(score / pair.span)
    method = "EAP" if steps is None else "EAP-IG"
    return EdgeEffects(method, tuple(edges), torch.stack(effects).mean(0), time.perf_counter() - t, 3, 1, len(pairs), steps or 1,
                       pairs_provenance(model, pairs, method, steps=steps))  # fmt: skip


def eap(model: LoadedModel, pairs: list[PreparedPair]) -> EdgeEffects:
    return attribution_edges(model, pairs)


def eap_ig(model: LoadedModel, pairs: list[PreparedPair], steps: int = 5) -> EdgeEffects:
    return attribution_edges(model, pairs, steps)


# ---- circuits ---------------------------------------------------------------------------------------


def circuit_faithfulness(pair: PreparedPair, edges: list[Edge], keep: torch.Tensor) -> torch.Tensor:
    """(circuit,) normalised metric of circuits `keep` (circuit, edge) booleans, MIB-style (module docstring): 0 base, 1 source.

    One row per circuit; the receivers are set read point by read point, each pass running the
    edits so far to read the senders' outputs as they now are: 2 × layers + 1 passes.
    """
    w = pair.weights
    rows = keep.shape[0]
    with torch.no_grad():
        base, source = _runs(pair)
        base_out = {s: sender_output(w, s, base) for s in senders_of(w)}  # (1, pos, d_model)
        current = {Sender("embed"): sender_output(w, Sender("embed"), source)}
        by_receiver: dict[Receiver, list[tuple[int, Sender]]] = {}
        for i, e in enumerate(edges):
            by_receiver.setdefault(e.receiver, []).append((i, e.sender))
        edits: list[engine.Edit] = []
        points = sorted({r.reads(w.parallel) for r in receivers_of(w)})
        for point in points:
            needed = [s for s in senders_of(w) if s.writes < point and s not in current]
            if needed:
                now = pair.run("base", edits, capture=capture_names(w), batch=rows).captured
                current.update({s: sender_output(w, s, now) for s in needed})
            for r in [r for r in receivers_of(w) if r.reads(w.parallel) == point]:
                resid = receiver_input(w, r, base).expand(rows, -1, -1).clone()  # (circuit, pos, d_model)
                for i, s in by_receiver.get(r, ()):
                    resid += keep[:, i, None, None].to(resid.dtype) * (current[s] - base_out[s])
                edits.append(receiver_edit(w, r, receive(w, r, resid)))
        value = pair.metric(pair.run("base", edits, batch=rows).logits).cpu()
    return (value - pair.base_value) / pair.span
