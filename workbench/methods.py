"""Cheap estimates of activation patching, and the exact answer they estimate: AtP and AtP* on nodes.

A *node* is one component's activation at every position of the prompt: a head's queries, keys or
values (keys and values per key/value head), or an MLP's output. Patching a node copies its
activation from the *source* run into the *base* run (denoising: clean into corrupted; noising:
the other way) and reads the metric (a prompt pair, tasks.Pair, and a metric's kind: tasks.check_pair). Exact patching costs one run per
node (batched here: one engine pass for every node).

Attribution patching (AtP) estimates every node at once from one forward and one backward pass on
the base run: effect ≈ (source − base activation) · ∂metric/∂activation. Kramár et al. 2024
("AtP*", arXiv 2403.00745) name two ways it misses nodes, and fix them:

- *attention saturation*: a query or key changes the attention scores, and a saturated softmax
  has a near-zero gradient even where the patched pattern changes a lot. The **QK fix** recomputes
  the head's attention pattern exactly with the patched queries (or keys), then takes the change
  of the pattern times ∂metric/∂pattern: exact up to the pattern, linear only after it.
- *cancellation*: a node's direct effect and its effect through later layers can cancel in the
  total gradient. **GradDrop** repeats the backward pass L times, the ℓ-th with the gradient
  through layer ℓ's output (its attention and MLP outputs) set to zero, and scores each node by
  Σ_ℓ |AtP_ℓ(node)| / (L − 1): a node whose paths cancel shows up once one of them is dropped.

AtP* here ranks nodes by max(|AtP with the QK fix|, GradDrop): GradDrop only ever adds magnitude
that cancellation hid. Cost per prompt pair: the source run's forward, the base run's forward and
L + 1 backward passes on it, whatever the number of nodes (`NodeEffects.forward/backward` count them).

Every number here runs through the forward engine only (engine.py; provenance records backend "engine"): it runs
once `engine.backend` has chosen it for the model's weights; a model the engine does not run gets a clear message.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.metrics import Metric
from workbench.model import LoadedModel
from workbench.patching import DIRECTIONS
from workbench.runs import provenance
from workbench.tasks import Pair, check_pair

NODE_METHODS = ("exact", "AtP", "AtP*")
ROWS = 128  # patched runs per engine pass (a batch of 128 short prompts; progress is reported between passes)


# ---- nodes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A head's queries, keys or values (k, v: a key/value head) at every position, or an MLP's output."""

    kind: str  # "q", "k", "v" or "mlp"
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        return f"L{self.layer} MLP" if self.kind == "mlp" else f"L{self.layer}H{self.head}.{self.kind}"

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.{engine.SITE_HOOKS['mlp_out' if self.kind == 'mlp' else self.kind]}"


def nodes_of(w: engine.Weights) -> list[Node]:
    """Every node, layer by layer: queries of each head, keys and values of each key/value head, the MLP."""
    out = []
    for layer in range(w.n_layers):
        out += [Node("q", layer, h) for h in range(w.n_heads)]
        out += [Node(kind, layer, g) for kind in ("k", "v") for g in range(w.n_kv_heads)]
        out.append(Node("mlp", layer))
    return out


# ---- one prompt pair, on the engine -----------------------------------------------------------------


@dataclass(frozen=True)
class PreparedPair:
    """A prompt pair (tasks.Pair) and the metric it reads, ready for the engine: which run is patched (base) and which
    gives the values (source)."""

    pair: Pair
    measure: Metric  # tasks.check_pair: the metric's kind with the pair's answer and wrong ids
    direction: str
    weights: engine.Weights = field(repr=False)
    base_tokens: torch.Tensor  # (pos,)
    source_tokens: torch.Tensor  # (pos,)

    @functools.cached_property
    def _values(self) -> dict[str, float]:
        """{"base", "source"}: the metric of the engine's own two runs, computed when first needed (a preview needs neither).

        The engine's, not the model's, so that a patched run on the engine is measured against runs
        computed the same way (a patch that changes nothing moves the metric by 0, not by float noise).
        """
        values = {}
        for which, ids in (("base", self.base_tokens), ("source", self.source_tokens)):
            with torch.no_grad():
                logits = engine.forward(self.weights, ids[None].to(self.weights.W_U.device)).logits[0, -1:]  # (1, d_vocab)
            values[which] = float(self.measure.value(logits.float().cpu()))
        return values

    @property
    def clean_value(self) -> float:
        return self._values["source" if self.direction == "denoising" else "base"]

    @property
    def corrupted_value(self) -> float:
        return self._values["base" if self.direction == "denoising" else "source"]

    @property
    def base_value(self) -> float:
        return self.corrupted_value if self.direction == "denoising" else self.clean_value

    @property
    def span(self) -> float:
        """What a full restoration moves the metric by: source − base (the sign of a restoring effect)."""
        return (self.clean_value - self.corrupted_value) * (1 if self.direction == "denoising" else -1)

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) metric of next-token logits (batch, d_vocab)."""
        return self.measure.value(logits.float())

    def run(self, which: str, edits=(), capture=(), batch: int = 1) -> engine.Output:
        """The base or source run on the engine, `batch` copies, with edits; next-token logits."""
        tokens = (self.base_tokens if which == "base" else self.source_tokens)[None].expand(batch, -1)
        return engine.forward(self.weights, tokens.to(self.weights.W_U.device), edits=edits, capture=capture, last_only=True)


def site_names(w: engine.Weights, *sites: str) -> list[str]:
    return [f"blocks.{layer}.{engine.SITE_HOOKS[s]}" for layer in range(w.n_layers) for s in sites]


def prepare(model: LoadedModel, pair: Pair, direction: str = "denoising", *, metric: str = "logit difference") -> PreparedPair:
    """The pair, reading the metric of kind `metric`, on the engine once engine.backend has chosen it (its logits checked
    against the model's once per weights)."""
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction '{direction}': use denoising or noising")
    clean_ids, corrupted_ids, measure = check_pair(model, pair, metric)
    try:
        w = engine.checked_weights(model)
    except engine.Unsupported as err:
        raise InputError(f"the patching methods run on the forward engine, which cannot run this model: {err}") from err
    base, source = (corrupted_ids, clean_ids) if direction == "denoising" else (clean_ids, corrupted_ids)
    return PreparedPair(pair, measure, direction, w, base, source)


def prepare_all(
    model: LoadedModel, pairs: list[Pair], direction: str = "denoising", *, metric: str = "logit difference"
) -> list[PreparedPair]:
    """Every prompt pair, reading the metric of kind `metric`, prepared for the engine."""
    if not pairs:
        raise InputError("the task has no prompt pairs")
    return [prepare(model, p, direction, metric=metric) for p in pairs]


# ---- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeEffects:
    """Each node's patching effect by one method, averaged over the task's prompt pairs.

    `effect` is normalised per pair (the change of the metric over the full clean − corrupted
    restoration, so 1 restores everything) and then averaged; `magnitude` is what the method ranks
    nodes by (|effect|, or AtP*'s GradDrop-aware magnitude), on the same scale.
    """

    method: str
    nodes: tuple[Node, ...]
    effect: torch.Tensor  # (node,)
    magnitude: torch.Tensor  # (node,)
    seconds: float  # wall time over every pair
    forward: int  # forward passes per pair
    backward: int  # backward passes per pair
    n_pairs: int
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> list[str]:
        return [n.label for n in self.nodes]

    def ranked(self, k: int | None = None) -> list[dict]:
        order = self.magnitude.argsort(descending=True)[:k].tolist()
        return [
            dict(rank=r + 1, node=self.nodes[i].label, effect=float(self.effect[i]), magnitude=float(self.magnitude[i]))
            for r, i in enumerate(order)
        ]


def pairs_provenance(model: LoadedModel, pairs: list[PreparedPair], method: str, **settings) -> dict:
    return provenance(
        model, [p for x in pairs for p in (x.pair.clean, x.pair.corrupted)], method=method, direction=pairs[0].direction,
        metric=pairs[0].measure.kind, answers=[x.measure.answer for x in pairs], wrongs=[x.measure.wrong for x in pairs], backend="engine",
        **settings,
    )  # fmt: skip


def _finish(model, pairs, method, nodes, effects, magnitudes, seconds, forward, backward, **settings) -> NodeEffects:
    return NodeEffects(
        method, tuple(nodes), torch.stack(effects).mean(0), torch.stack(magnitudes).mean(0), seconds, forward, backward, len(pairs),
        pairs_provenance(model, pairs, method, **settings),
    )  # fmt: skip


def node_edit(node: Node, source: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> engine.Edit:
    """The edit that gives `node` its activation from `source` (hook name -> activation, batch first)."""
    act = source[node.hook][:1]  # (1, pos, ...) the source run's
    if node.kind == "mlp":
        return engine.Edit("replace", "mlp_out", node.layer, value=act, rows=rows)
    return engine.Edit("replace", node.kind, node.layer, head=node.head, value=act[:, :, node.head], rows=rows)


# ---- exact ------------------------------------------------------------------------------------------


def exact_nodes(model: LoadedModel, pairs: list[PreparedPair], nodes: list[Node] | None = None, tick=None) -> NodeEffects:
    """Every node (or only `nodes`) patched on its own, exactly: batched engine passes, one row per node.

    `tick()` is called after each pass of at most ROWS rows (a long job's progress; it may raise to cancel).
    """
    t = time.perf_counter()
    w = pairs[0].weights
    nodes = nodes_of(w) if nodes is None else list(nodes)
    effects = []
    with torch.no_grad():
        for pair in pairs:
            source = pair.run("source", capture=site_names(w, "q", "k", "v", "mlp_out")).captured
            patched = torch.empty(len(nodes))  # (node,)
            for start in range(0, len(nodes), ROWS):
                chunk = nodes[start : start + ROWS]
                rows = torch.arange(len(chunk))
                edits = [node_edit(n, source, rows[i : i + 1]) for i, n in enumerate(chunk)]
                patched[start : start + len(chunk)] = pair.metric(pair.run("base", edits, batch=len(chunk)).logits).cpu()
                if tick is not None:
                    tick()
            effects.append((patched - pair.base_value) / pair.span)
    return _finish(model, pairs, "exact", nodes, effects, [e.abs() for e in effects], time.perf_counter() - t, 2, 0)


# ---- AtP and AtP* -----------------------------------------------------------------------------------


def attention_pattern(w: engine.Weights, layer: int, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(head, query, key) attention pattern of queries q (pos, head, d_head) and keys k (pos, kv_head, d_head), before rotary.

    What the engine's block computes from these queries and keys (rotary, grouped-query heads, the
    causal mask): the QK fix's exact softmax.
    """
    if w.rotary is not None:
        cos, sin = w.rotary.cos_sin(q.shape[0], q.device)
        q, k = w.rotary(q[None], cos, sin)[0], w.rotary(k[None], cos, sin)[0]
    k = k.repeat_interleave(w.n_heads // w.n_kv_heads, 1)  # (pos, head, d_head)
    scores = torch.einsum("qhe,khe->hqk", q, k) * w.layers[layer].scale  # (head, query, key)
    n = q.shape[0]
    future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def metric_gradients(pair: PreparedPair, names: list[str], graddrop: bool) -> tuple[dict, list[dict], int]:
    """(base activations, [gradients of the metric: plain, then with layer ℓ's output dropped for each ℓ], backward passes).

    Activations and gradients are keyed by hook name, without the batch dim. One forward pass of the
    base run, then 1 (+ n_layers with GradDrop) backward passes through the same graph. A long
    prompt's gradients are taken block by block instead (engine.site_gradients: the same numbers,
    one block's graph in memory, one forward pass more).
    """
    from workbench.long import LONG_TOKENS  # imported here: long imports the views beside this module

    w = pair.weights
    if len(pair.base_tokens) > LONG_TOKENS:
        tokens = pair.base_tokens[None].to(w.W_U.device)
        acts, grads = engine.site_gradients(w, tokens, names, pair.metric, graddrop=graddrop)
        return {n: acts[n][0] for n in names}, [{n: g[n][0] for n in names} for g in grads], len(grads)
    dropped: dict[str, int | None] = {"layer": None}  # which layer's output passes no gradient in this backward pass
    with torch.enable_grad():
        out = pair.run("base", capture=names + site_names(w, "attn_out", "mlp_out"))
        m = pair.metric(out.logits).sum()
        for layer in range(w.n_layers):
            for site in ("attn_out", "mlp_out"):

                def drop(g, layer=layer):
                    return torch.zeros_like(g) if dropped["layer"] == layer else g

                out.captured[f"blocks.{layer}.{engine.SITE_HOOKS[site]}"].register_hook(drop)
        acts = [out.captured[n] for n in names]
        grads = []
        for layer in [None, *(range(w.n_layers) if graddrop else ())]:
            dropped["layer"] = layer
            g = torch.autograd.grad(m, acts, retain_graph=True, allow_unused=True)
            # a tensor's own hook does not change the gradient returned for it: the dropped layer's outputs get none here
            own = {f"blocks.{layer}.{engine.SITE_HOOKS[site]}" for site in ("attn_out", "mlp_out")}
            grads.append(
                {n: (torch.zeros_like(a) if x is None or n in own else x)[0].detach() for n, a, x in zip(names, acts, g, strict=True)}
            )
    return {n: a[0].detach() for n, a in zip(names, acts, strict=True)}, grads, len(grads)


def _estimates(w: engine.Weights, nodes: list[Node], base: dict, source: dict, grad: dict, qk_fix: bool, fixed: dict) -> torch.Tensor:
    """(node,) linear estimates of each node's effect on the metric, with the QK fix's exact patterns where asked."""
    out = []
    for n in nodes:
        if qk_fix and n.kind in ("q", "k"):
            pattern = f"blocks.{n.layer}.attn.hook_pattern"
            heads = [n.head] if n.kind == "q" else [h for h in range(w.n_heads) if h // (w.n_heads // w.n_kv_heads) == n.head]
            change = fixed[(n.layer, n.kind)][heads] - base[pattern][heads]  # (heads, query, key) exact
            out.append((change * grad[pattern][heads]).sum())
            continue
        a, b = source[n.hook][0], base[n.hook]
        if n.kind != "mlp":
            a, b = a[:, n.head], b[:, n.head]
            out.append(((a - b) * grad[n.hook][:, n.head]).sum())
        else:
            out.append(((a - b) * grad[n.hook]).sum())
    return torch.stack(out).float().cpu()


def attribution_nodes(model: LoadedModel, pairs: list[PreparedPair], qk_fix: bool = False, graddrop: bool = False) -> NodeEffects:
    """AtP (both False) or AtP* (both True) estimates of every node's effect; see the module docstring."""
    t = time.perf_counter()
    w = pairs[0].weights
    nodes = nodes_of(w)
    names = site_names(w, "q", "k", "v", "mlp_out", "pattern")
    effects, magnitudes, backward = [], [], 0
    for pair in pairs:
        with torch.no_grad():
            source = pair.run("source", capture=names).captured  # forward pass 1
        base, grads, backward = metric_gradients(pair, names, graddrop)  # forward pass 2, then `backward` backward passes
        fixed = {}
        if qk_fix:
            for layer in range(w.n_layers):
                q, k = (f"blocks.{layer}.attn.hook_{x}" for x in "qk")
                fixed[(layer, "q")] = attention_pattern(w, layer, source[q][0], base[k])  # every head's queries from the source
                fixed[(layer, "k")] = attention_pattern(w, layer, base[q], source[k][0])
        effect = _estimates(w, nodes, base, source, grads[0], qk_fix, fixed)
        magnitude = effect.abs()
        if graddrop and w.n_layers > 1:
            dropped = torch.stack([_estimates(w, nodes, base, source, g, qk_fix, fixed).abs() for g in grads[1:]])  # (layer, node)
            magnitude = torch.maximum(magnitude, dropped.sum(0) / (w.n_layers - 1))
        effects.append(effect / pair.span)
        magnitudes.append(magnitude / abs(pair.span))
    method = "AtP*" if (qk_fix and graddrop) else "AtP" if not (qk_fix or graddrop) else "AtP + QK fix" if qk_fix else "AtP + GradDrop"
    return _finish(model, pairs, method, nodes, effects, magnitudes, time.perf_counter() - t, 2, backward, qk_fix=qk_fix, graddrop=graddrop)


def atp(model: LoadedModel, pairs: list[PreparedPair]) -> NodeEffects:
    return attribution_nodes(model, pairs)


def atp_star(model: LoadedModel, pairs: list[PreparedPair]) -> NodeEffects:
    return attribution_nodes(model, pairs, qk_fix=True, graddrop=True)


def exact_check(model: LoadedModel, estimate: NodeEffects, pairs: list[PreparedPair], k: int = 10) -> list[dict]:
    """The estimate's top k nodes beside their exact effect, each patched exactly (k patched runs per pair, not one per node)."""
    top = [estimate.nodes[i] for i in estimate.magnitude.argsort(descending=True)[:k].tolist()]
    exact = exact_nodes(model, pairs, top)
    return [row | {"exact effect": float(e)} for row, e in zip(estimate.ranked(k), exact.effect, strict=True)]
