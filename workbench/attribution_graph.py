"""The attribution graph of one prediction over transcoder features (Ameisen et al. 2025, "Circuit Tracing").

The replacement model: every MLP is replaced by its transcoder (workbench/transcoder.py), and what
the transcoder misses at each (layer, position), the real MLP output minus the transcoder's, is kept
as an **error node**, so the replacement reproduces the real run exactly. Freezing the attention
patterns and the norms' scales (each position's standard deviation or RMS, read from the real run)
makes everything between the transcoders' features linear: a feature's pre-activation is a sum of
direct contributions from the token embeddings (each with its position's embedding), the active
features of earlier layers (activation × decoder row, carried by frozen attention and norms), the
error nodes, and constants (biases). The graph's nodes are those sources and the targets: the
features and the top logits (the logit minus the mean logit, as circuit-tracer; up to 10, until
their probability reaches 0.95). An edge s → t is the direct contribution of s to t, computed by
one backward pass of the frozen linear model per batch of targets (the gradient of t at the place
s writes, times what s writes). The direct edges into a node plus its constant sum to its
pre-activation exactly: the test checks this against the real model's own pre-activation.

Pruning, as the paper and circuit-tracer: the adjacency's absolute values are normalised per target
(each row sums to 1), a node's influence is the sum over paths to the logits weighted by the logits'
probabilities (A + A² + ..., which ends: the graph has no cycles), and the most influential feature
nodes up to `node_threshold` (0.8) of the total are kept, then edges up to `edge_threshold` (0.98)
of the edge influence. Replacement score: the share of the tokens' and errors' influence that is the
tokens'; completeness: the influence-weighted share of every node's input that does not come from
error nodes.

Interventions check the graph on the model (`intervene`): set features to a multiple of their
activation (0 ablates, 2 doubles) and compare the answer's logit change with what the graph's edges
predict (`predict`: the direct edges, carried through the graph's active features linearly). The
change is measured
- in the real model as circuit-tracer's `ReplacementModel.feature_intervention` does it: every MLP
  computing, each set feature's decoder row × (its value − its activation in that run) added to
  its MLP's output, norms live; with every attention pattern held at the real run's (its default,
  `freeze_attention=True`: `attention_frozen`) and with attention live (`real`). Its demos and
  tutorial check a graph's supernodes with that default; its tests check the edges exactly with
  everything frozen (`constrained_layers` over every layer: patterns, norm scales, MLP outputs).
  Beside them, `final_norm_frozen`: attention frozen and the final norm's scale held too;
- in the local replacement model (transcoders in place of the MLPs, the error nodes frozen,
  attention and norms live: `replacement`);
- in the graph's own frozen model (`frozen_effect`: patterns, norm scales and errors frozen, every
  feature recomputed: the prediction's arithmetic, equal to it while no TopK set changes), and in
  that model with only the final norm's scale live (`final_norm_live`). A frozen scale leaves out
  that a change along the stream's own direction is divided away by the norm; for features that
  write straight to the logits at the last position this can undo most of the predicted change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import encode, memory_budget, provenance
from workbench.tokens import token_labels
from workbench.transcoder import (
    Transcoder,
    capture_names,
    check_fits,
    is_cross_layer,
    mlp_io,
    reconstruction_errors,
    transcoders_of,
)


@dataclass(frozen=True)
class GraphConfig:
    """How a graph is built and pruned; the paper's and circuit-tracer's defaults."""

    max_logits: int = 10  # logit nodes at most
    logit_probability: float = 0.95  # logit nodes until their probabilities sum to this
    node_threshold: float = 0.8  # keep the feature nodes that carry this share of the influence
    edge_threshold: float = 0.98  # then the edges that carry this share
    max_features: int = 2048  # feature nodes whose incoming edges are computed, the most influential first
    batch: int = 64  # targets per backward pass (fewer where the memory budget asks)
    budget_bytes: int = 512 * 2**20  # the most one batch's gradients may take


CONFIG = GraphConfig()


# ---- the real run, frozen ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Frozen:
    """What the replacement model takes from the real run: the residual stream, patterns and the norms' scales."""

    w: engine.Weights
    tokens: torch.Tensor  # (pos,)
    emb: torch.Tensor  # (pos, d_model) token + position embedding: the token nodes
    resid_pre: list[torch.Tensor]  # per layer (pos, d_model)
    resid_mid: list[torch.Tensor | None]  # per layer (pos, d_model); None in parallel blocks
    patterns: list[torch.Tensor]  # per layer (head, query, key)
    mlp_in: list[torch.Tensor]  # per layer (pos, d_model)
    mlp_out: list[torch.Tensor]  # per layer (pos, d_model)
    final: torch.Tensor  # (pos, d_model) the residual stream after the last block
    logits: torch.Tensor  # (d_vocab,) at the last position

    @property
    def n_pos(self) -> int:
        return len(self.tokens)


def freeze(w: engine.Weights, tokens: torch.Tensor) -> Frozen:
    """The real run of `tokens` (pos,) through the forward engine, with what the graph freezes."""
    names = capture_names(w)
    with torch.no_grad():
        out = engine.forward(w, tokens[None], capture=names)
        c = {n: a[0] for n, a in out.captured.items()}
        emb = engine.embed(w, tokens[None])[0]
    L = w.n_layers
    io = [mlp_io(w, {n: a[None] for n, a in c.items()}, layer) for layer in range(L)]
    return Frozen(
        w=w,
        tokens=tokens,
        emb=emb,
        resid_pre=[c[f"blocks.{layer}.hook_resid_pre"] for layer in range(L)],
        resid_mid=[c.get(f"blocks.{layer}.hook_resid_mid") for layer in range(L)],
        patterns=[c[f"blocks.{layer}.attn.hook_pattern"] for layer in range(L)],
        mlp_in=[i[0][0] for i in io],
        mlp_out=[i[1][0] for i in io],
        final=c[f"blocks.{L - 1}.hook_resid_post"],
        logits=out.logits[0, -1],
    )


def _scale(norm: engine.Norm, real: torch.Tensor) -> torch.Tensor:
    """(pos, 1) the norm's divisor on the real run: frozen, it makes the norm linear."""
    if norm.kind == "layer":
        return (real.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (real.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()


def _norm(norm: engine.Norm, scale: torch.Tensor, x: torch.Tensor, bias: bool) -> torch.Tensor:
    """The norm with its scale frozen: linear in x (B, pos, d), plus its bias when `bias`."""
    if norm.kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    y = x / scale
    if norm.weight is not None:
        y = y * (norm.offset + norm.weight)
    if bias and norm.kind == "layer" and norm.bias is not None:
        y = y + norm.bias
    return y


@dataclass(frozen=True)
class Linear:
    """The frozen replacement model: norms' scales, patterns and the transcoders; runs (B, pos, d_model) streams."""

    fz: Frozen
    tcs: dict[int, Transcoder]
    s1: list[torch.Tensor] = field(default_factory=list)  # per layer (pos, 1)
    s2: list[torch.Tensor] = field(default_factory=list)
    sf: torch.Tensor | None = None

    @classmethod
    def of(cls, fz: Frozen, tcs: dict[int, Transcoder]) -> Linear:
        w = fz.w
        s1 = [_scale(w.layers[i].ln1, fz.resid_pre[i]) for i in range(w.n_layers)]
        s2 = []
        for i, L in enumerate(w.layers):
            if w.parallel:
                s2.append(s1[i] if L.ln2 is None else _scale(L.ln2, fz.resid_pre[i]))
            else:
                s2.append(_scale(L.ln2, fz.resid_mid[i]))
        return cls(fz, tcs, s1, s2, _scale(w.ln_final, fz.final))

    def prefix(self, n: int) -> Linear:
        """The same model on the first n positions only: by causality they do not depend on later ones."""
        if n >= self.fz.n_pos:
            return self
        fz = dataclasses.replace(self.fz, patterns=[p[:, :n, :n] for p in self.fz.patterns])
        return Linear(fz, self.tcs, [x[:n] for x in self.s1], [x[:n] for x in self.s2], self.sf)

    def attention(self, layer: int, x: torch.Tensor, bias: bool) -> torch.Tensor:
        """(B, pos, d_model) -> (B, pos, d_model): the attention's output with its pattern frozen."""
        w = self.fz.w
        L, H, K, E = w.layers[layer], w.n_heads, w.n_kv_heads, w.d_head
        h = _norm(L.ln1, self.s1[layer], x, bias)
        v = h @ L.W_qkv[:, (H + K) * E :]  # (B, pos, K * E): values are not rotated
        if bias and L.b_qkv is not None:
            v = v + L.b_qkv[(H + K) * E :]
        v = v.reshape(*v.shape[:2], K, E)
        if K != H:
            v = v.repeat_interleave(H // K, 2)  # (B, pos, H, E)
        z = torch.einsum("hqk,bkhe->bqhe", self.fz.patterns[layer], v)  # (B, pos, H, E)
        out = z.reshape(*z.shape[:2], H * E) @ L.W_O
        return out + L.b_O if bias and L.b_O is not None else out

    def run(self, writes: list[torch.Tensor], bias: bool, stop: int | None = None, on_pre=None, mlp=None) -> torch.Tensor:
        """The residual stream after the last block, (B, pos, d_model), from `writes` (L + 1 tensors (B, pos, d_model)).

        writes[0] is the embedding, writes[l + 1] what MLP l writes besides its skip path (features, error,
        b_dec). `on_pre(layer, mlp_in)` sees each layer's MLP input (B, pos, d_model); `stop` ends after
        that layer's MLP input (targets at that layer need nothing later). `mlp(layer, mlp_in)`, when given,
        computes what MLP l writes instead of writes[l + 1]."""
        w = self.fz.w
        x = writes[0]
        for layer in range(w.n_layers):
            attn = self.attention(layer, x, bias)
            L = w.layers[layer]
            if w.parallel:
                mlp_in = _norm(L.ln1 if L.ln2 is None else L.ln2, self.s2[layer], x, bias)
                base = x + attn
            else:
                base = x + attn
                mlp_in = _norm(L.ln2, self.s2[layer], base, bias)
            if on_pre is not None:
                on_pre(layer, mlp_in)
            if stop is not None and layer == stop:
                return x
            tc = self.tcs[layer]
            out = writes[layer + 1] if mlp is None else mlp(layer, mlp_in)
            if tc.W_skip is not None:
                out = out + mlp_in @ tc.W_skip.to(mlp_in)
            x = base + out
        return x

    def logit_directions(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((d_model, n) unembedding columns minus their mean, (n,) bias minus its mean): logit minus mean logit."""
        w = self.fz.w
        u = w.W_U[:, tokens] - w.W_U.mean(1, keepdim=True)
        b = torch.zeros(len(tokens)) if w.b_U is None else w.b_U[tokens] - w.b_U.mean()
        return u, b

    def logit_values(self, x: torch.Tensor, tokens: torch.Tensor, bias: bool) -> torch.Tensor:
        """(B, d_model) the last position's stream -> (B, n) the logits minus the mean logit."""
        u, b = self.logit_directions(tokens)
        y = _norm(self.fz.w.ln_final, self.sf[-1:], x[:, None], bias)[:, 0] @ u
        return y + b if bias else y


# ---- the graph -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributionGraph:
    """Nodes in the order [features, errors (layer-major), tokens, logits]; adjacency[target, source] = direct edge.

    Rows of error and token nodes are zero (nothing flows into them). `value` holds each target's
    pre-activation (feature) or logit minus the mean logit (logit), `bias` its constant part: the
    row of `adjacency` plus `bias` is `value`."""

    prompt: str
    tokens: torch.Tensor  # (pos,)
    labels: list[str]  # (pos,) token labels
    features: torch.Tensor  # (n_feature, 3) long: layer, position, feature index
    activations: torch.Tensor  # (n_feature,)
    logit_tokens: torch.Tensor  # (n_logit,)
    logit_labels: list[str]
    logit_probs: torch.Tensor  # (n_logit,)
    adjacency: torch.Tensor  # (node, node) target × source
    value: torch.Tensor  # (node,)
    bias: torch.Tensor  # (node,)
    influence: torch.Tensor  # (node,) influence on the logits (probability-weighted, normalised edges)
    node_mask: torch.Tensor  # (node,) bool: kept by pruning
    edge_mask: torch.Tensor  # (node, node) bool
    cumulative: torch.Tensor  # (node,) share of the total influence of the nodes at least as influential
    replacement_score: float
    completeness_score: float
    n_layers: int
    active_total: int  # active features before `max_features` chose the computed ones
    unexplained: torch.Tensor  # (n_feature + n_logit,) what un-computed features contributed to each target
    config: GraphConfig
    provenance: dict
    plan: GraphPlan | None = None  # what it was planned to hold (feature rows cut to the memory budget)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    def kind(self, i: int) -> str:
        """ "feature", "error", "token" or "logit"."""
        if i < self.n_features:
            return "feature"
        if i < self.n_features + self.n_errors:
            return "error"
        return "token" if i < self.n_features + self.n_errors + self.n_pos else "logit"

    def where(self, i: int) -> tuple[str, int, int, int]:
        """(kind, layer, position, index): feature index, the vocabulary id of a token or logit, -1 for an error."""
        k = self.kind(i)
        if k == "feature":
            layer, pos, f = self.features[i].tolist()
            return k, layer, pos, f
        if k == "error":
            layer, pos = divmod(i - self.n_features, self.n_pos)
            return k, layer, pos, -1
        if k == "token":
            pos = i - self.n_features - self.n_errors
            return k, -1, pos, int(self.tokens[pos])
        j = i - self.n_features - self.n_errors - self.n_pos
        return k, self.n_layers, self.n_pos - 1, int(self.logit_tokens[j])

    def node_id(self, i: int) -> str:
        """circuit-tracer's node id: layer_feature_position; errors layer_-1_position; tokens E_id_position; logits (L+1)_id_position."""
        k, layer, pos, f = self.where(i)
        if k == "token":
            return f"E_{f}_{pos}"
        if k == "logit":
            return f"{self.n_layers + 1}_{f}_{pos}"
        return f"{layer}_{f}_{pos}"

    def label(self, i: int) -> str:
        k, layer, pos, f = self.where(i)
        if k == "logit":
            return f"logit {self.logit_labels[i - self.answer_node]}"
        return {"feature": f"L{layer} #{f}", "error": f"L{layer} error", "token": "token"}[k] + f" @{pos} {self.labels[pos]}"

    def index_of(self, node_id: str) -> int:
        """The node with circuit-tracer id `node_id` (InputError naming the form if there is none)."""
        ids = {self.node_id(i): i for i in range(self.n_nodes)}
        if node_id not in ids:
            raise InputError(f"no node {node_id!r} in this graph; feature ids are layer_feature_position, e.g. {self.node_id(0)}")
        return ids[node_id]

    @property
    def answer_node(self) -> int:
        return self.n_features + self.n_errors + self.n_pos  # the first logit node: the answer

    def top_features(self, k: int = 10, pruned: bool = True) -> list[int]:
        """The k feature nodes of most influence on the logits (kept by pruning only, unless `pruned` is False)."""
        score = self.influence[: self.n_features].clone()
        if pruned:
            score[~self.node_mask[: self.n_features]] = -1
        order = score.argsort(descending=True)[:k]
        return [int(i) for i in order if score[i] >= 0]

    def edges_into(self, i: int, k: int = 10) -> list[tuple[int, float]]:
        row = self.adjacency[i]
        order = row.abs().argsort(descending=True)[:k]
        return [(int(j), float(row[j])) for j in order if row[j] != 0]

    def edges_from(self, i: int, k: int = 10) -> list[tuple[int, float]]:
        col = self.adjacency[:, i]
        order = col.abs().argsort(descending=True)[:k]
        return [(int(j), float(col[j])) for j in order if col[j] != 0]

    def rows(self, pruned: bool = True) -> list[dict]:
        """One row per node (kept by pruning, unless `pruned` is False): for tables and CSV."""
        out = []
        for i in range(self.n_nodes):
            if pruned and not self.node_mask[i]:
                continue
            k, layer, pos, f = self.where(i)
            out.append(
                dict(
                    node=self.node_id(i), kind=k, layer=layer, position=pos, index=f, label=self.label(i),
                    influence=float(self.influence[i]), value=float(self.value[i]),
                    activation=float(self.activations[i]) if k == "feature" else None,
                )
            )  # fmt: skip
        return out


def _pick_logits(logits: torch.Tensor, cfg: GraphConfig, answer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """((n,) token ids, (n,) probabilities): the top logits until their probability reaches cfg.logit_probability."""
    probs = logits.softmax(-1)
    top = probs.topk(min(cfg.max_logits, len(probs)))
    n = int((top.values.cumsum(0) < cfg.logit_probability).sum()) + 1
    ids = top.indices[: min(n, cfg.max_logits)].tolist()
    if answer is not None:
        ids = [answer, *[i for i in ids if i != answer][: cfg.max_logits - 1]]
    ids_t = torch.tensor(ids)
    return ids_t, probs[ids_t]


def normalize(matrix: torch.Tensor) -> torch.Tensor:
    """|A| with each row divided by its sum (rows of zeros stay zero)."""
    a = matrix.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence_of(A: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """(node,) weights·(A + A² + ...): A is (target, source) normalised, `weights` the logits' probabilities."""
    current = weights @ A
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ A
        total += current
    raise RuntimeError("influence did not converge: the graph has a cycle")


def _threshold(scores: torch.Tensor, share: float) -> torch.Tensor:
    """The score above which the highest scores carry `share` of the total."""
    s = scores.sort(descending=True).values
    cum = s.cumsum(0) / s.sum().clamp(min=1e-30)
    i = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), len(s) - 1)
    return s[i]


def _influence_rows(norm: torch.Tensor, live: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """influence_of where only the rows `live` (m,) of the normalised adjacency can be non-zero: `norm` is those rows
    (m, node), so the series costs (m, node) per step instead of (node, node)."""
    current = weights[live] @ norm  # (node,)
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current[live] @ norm
        total += current
    raise RuntimeError("influence did not converge: the graph has a cycle")


def _live(A: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    return A.any(1).nonzero()[:, 0] if live is None else live


def prune(
    A: torch.Tensor,
    weights: torch.Tensor,
    n_features: int,
    n_keep_tail: int,
    node_threshold: float,
    edge_threshold: float,
    live: torch.Tensor | None = None,
):
    """(node_mask, edge_mask, influence, cumulative) as circuit-tracer's prune_graph: tokens and logits always kept.

    `n_keep_tail`: the number of nodes at the end (tokens and logits) that are always kept. `live`: the
    rows of A that may be non-zero (features and logits; default: found); the work is done on those rows
    alone, which on a long prompt are a small part of a (node, node) matrix made mostly of error nodes."""
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise InputError(f"thresholds are shares between 0 and 1, got node {node_threshold} and edge {edge_threshold}")
    live = _live(A, live)
    rows = A[live]  # (m, node) a copy: pruned in place below
    influence = _influence_rows(normalize(rows), live, weights)
    node_mask = influence >= _threshold(influence, node_threshold)
    node_mask[-n_keep_tail:] = True
    rows[~node_mask[live]] = 0
    rows[:, ~node_mask] = 0
    norm = normalize(rows)
    edge_scores = norm * (_influence_rows(norm, live, weights) + weights)[live][:, None]  # (m, node)
    del norm
    # the threshold over every entry of the (node, node) scores: the rows left out are zeros, which come last
    kept = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    del edge_scores
    kept &= rows != 0
    del rows
    body = slice(0, A.shape[0] - n_keep_tail)
    features = live < n_features  # which of the live rows are features
    previous = None
    while previous is None or not torch.equal(previous, node_mask):
        previous = node_mask.clone()
        kept[~node_mask[live]] = False
        kept[:, ~node_mask] = False
        node_mask[body] &= kept[:, body].any(0)  # features and errors must send somewhere
        receives = torch.zeros(n_features, dtype=torch.bool)
        receives[live[features]] = kept[features].any(1)
        node_mask[:n_features] &= receives  # features must receive from somewhere
    edge_mask = torch.zeros(A.shape, dtype=torch.bool)
    edge_mask[live] = kept
    s, order = influence.sort(descending=True)
    cumulative = torch.zeros_like(influence)
    cumulative[order] = s.cumsum(0) / s.sum().clamp(min=1e-30)
    return node_mask, edge_mask, influence, cumulative


def scores(
    A: torch.Tensor, weights: torch.Tensor, n_features: int, n_errors: int, n_pos: int, live: torch.Tensor | None = None
) -> tuple[float, float]:
    """(replacement score, completeness score), as circuit-tracer's compute_graph_scores (`live` as in prune)."""
    live = _live(A, live)
    norm = normalize(A[live])  # (m, node)
    infl = _influence_rows(norm, live, weights)
    errors = slice(n_features, n_features + n_errors)
    tokens = slice(n_features + n_errors, n_features + n_errors + n_pos)
    t, e = float(infl[tokens].sum()), float(infl[errors].sum())
    replacement = t / (t + e) if t + e > 0 else float("nan")
    non_error = torch.ones(A.shape[0])  # rows with no input take nothing from errors
    non_error[live] = 1 - norm[:, errors].sum(-1)
    out = infl + weights
    completeness = float((non_error * out).sum() / out.sum())
    return replacement, completeness


def transcoder_set(model: LoadedModel, folder: str | None = None) -> dict[int, Transcoder]:
    """The shipped transcoders, or a user's folder of them (one subfolder per layer, SAELens's format), loaded once per model."""
    if not folder:
        return transcoders_of(model)
    from workbench.transcoder import load_set

    key = str(folder)
    if key not in model.state.user_transcoders:
        found = load_set(folder)
        check_fits(found, model.info.d_model, model.info.n_layers)
        model.state.user_transcoders[key] = found
    return model.state.user_transcoders[key]


def transcoders_for(model: LoadedModel, tcs: dict[int, Transcoder] | None) -> dict[int, Transcoder]:
    found = tcs if tcs is not None else transcoders_of(model)
    if not found:
        raise InputError(
            f"{model.info.name} has no transcoders: train them with `python -m workbench.train transcoders {model.info.name}`, "
            "or give a folder of transcoders in SAELens's format"
        )
    check_fits(found, model.info.d_model, model.info.n_layers)
    return found


def _weights(model: LoadedModel) -> engine.Weights:
    """The engine's weights, once `engine.backend` has chosen the engine: attribution graphs run only on it."""
    try:
        return engine.checked_weights(model)
    except engine.Unsupported as err:
        raise InputError(f"attribution graphs run on the forward engine, which cannot run this model: {err}") from None


def build(
    model: LoadedModel,
    prompt: str,
    tcs: dict[int, Transcoder] | None = None,
    cfg: GraphConfig = CONFIG,
    answer: int | None = None,
    truncate: bool = False,
) -> AttributionGraph:
    """The attribution graph of the next-token prediction after `prompt` (module doc); `answer` forces the first logit node."""
    tcs = transcoders_for(model, tcs)
    w = _weights(model)
    tokens, _ = encode(model, prompt, truncate)
    tokens = tokens.to(model.device)
    return build_tokens(model, w, tokens, tcs, cfg, answer, prompt)


# ---- memory: what a graph holds, planned before its rows are computed -----------------------------------------


@dataclass(frozen=True)
class GraphPlan:
    """What one graph will hold, said before its rows are computed (long.Plan for the other views).

    The rows of direct edges are the graph's largest part on a long prompt: (computed features +
    logits) × (active features + errors + tokens) floats. When they would not fit the budget, fewer
    feature rows are computed (the most influential first, as always) and the plan says so."""

    n_tokens: int
    n_active: int  # active features (for a plan made before the run: TopK's k per layer and position)
    rows: int  # feature rows that will be computed
    wanted: int  # feature rows the config asked for (min(n_active, max_features))
    batch: int  # targets per backward pass
    bytes: int  # estimated peak
    budget: int

    @property
    def fits(self) -> bool:
        return self.bytes <= self.budget

    def message(self) -> str:
        mb = 2**20
        cut = "" if self.rows >= self.wanted else f" (cut from {self.wanted:,} to fit)"
        fit = "fits" if self.fits else "does NOT fit"
        return (
            f"The attribution graph at {self.n_tokens:,} tokens computes {self.rows:,} feature rows{cut} over {self.n_active:,} active "
            f"features, {self.batch} targets per backward pass, and holds about {self.bytes / mb:,.0f} MB: it {fit} this server's "
            f"budget of {self.budget / mb:,.0f} MB."
        )


def graph_bytes(w: engine.Weights, n_pos: int, n_active: int, rows: int, d_sae: int, batch: int, n_logit: int = 10) -> int:
    """Estimated peak bytes of one graph (build_tokens), the largest of its three phases.

    Always: the frozen run (per layer the residual stream, MLP input and output and their copies, the
    patterns), the pre-activations and error nodes. Rows phase: the rows buffer and one batch's
    gradients ((L + 1) streams of (batch, pos, d_model), their saved activations and a (batch, layer,
    pos, d_model) product). Adjacency phase: the rows buffer and the (node, node) adjacency. Pruning:
    the adjacency, its boolean masks, and the computed rows normalised, scored and sorted (about 8
    copies of (rows, node) floats and one of int64 indices)."""
    L, H, d, P = w.n_layers, w.n_heads, w.W_E.shape[1], n_pos
    f = 4
    frozen = f * L * (8 * P * d + 2 * H * P * P) + f * (P * d_sae * 3 + P * w.W_U.shape[1])
    keep = f * L * P * (d_sae + d)  # pre-activations and error nodes
    m = rows + n_logit
    n_cols = n_active + L * P + P
    n = rows + L * P + P + n_logit
    buffer = f * m * n_cols
    grads = batch * _per_target_bytes(w, P) + f * batch * n_cols * 2
    adjacency = f * n * n
    assembly = buffer + adjacency + 3 * f * ASSEMBLY_ROWS * n_cols
    prune_phase = adjacency + 2 * n * n + f * m * n * 8 + 8 * m * n
    return frozen + keep + max(buffer + grads, assembly, prune_phase)


ASSEMBLY_ROWS = 64  # rows of the buffer copied into the adjacency at a time


def _per_target_bytes(w: engine.Weights, n_pos: int) -> int:
    """Bytes one target adds to a backward pass of the frozen model: (4 L + 6) floats of (pos, d_model) (measured with
    torch's profiler: 13 of them at 2 layers, 28 at 6: the L + 1 gradients, what each layer saves for the backward pass,
    the product with the error nodes)."""
    d = w.W_E.shape[1]
    return 4 * n_pos * d * (4 * w.n_layers + 6)


def _batch(w: engine.Weights, n_pos: int, d_sae: int, cfg: GraphConfig, budget: int) -> int:
    """Targets per backward pass: cfg.batch, fewer where cfg.budget_bytes or a quarter of the memory budget asks."""
    return max(1, min(cfg.batch, min(cfg.budget_bytes, budget // 4) // max(1, _per_target_bytes(w, n_pos))))


def plan_graph(
    w: engine.Weights, n_pos: int, n_active: int, d_sae: int, cfg: GraphConfig = CONFIG, budget: int | None = None, n_logit: int = 10
) -> GraphPlan:
    """The graph's plan at n_pos tokens: as many feature rows as cfg.max_features asks, fewer where the budget
    (runs.memory_budget, WORKBENCH_MEMORY_MB) would be exceeded; `fits` is False when not even no rows fit."""
    budget = memory_budget() if budget is None else budget
    batch = _batch(w, n_pos, d_sae, cfg, budget)
    wanted = min(n_active, cfg.max_features)

    def cost(rows: int) -> int:
        return graph_bytes(w, n_pos, n_active, rows, d_sae, batch, n_logit)

    lo, hi = 0, wanted
    if cost(hi) <= budget:
        lo = hi
    while lo < hi:  # the most rows that fit: the cost grows with the rows
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    return GraphPlan(n_pos, n_active, lo, wanted, batch, cost(lo), budget)


def plan(model: LoadedModel, n_tokens: int, tcs: dict[int, Transcoder] | None = None, cfg: GraphConfig = CONFIG) -> GraphPlan:
    """The plan of a graph of a prompt of n_tokens, before it runs: TopK transcoders' active features are k per layer
    and position at most; others' are taken as 5% of their width (the shipped and random ones fire far less)."""
    tcs = transcoders_for(model, tcs)
    w = _weights(model)
    per_pos = sum(tc.k if tc.activation == "topk" else max(1, tc.d_sae // 20) for tc in tcs.values())
    return plan_graph(w, n_tokens, per_pos * n_tokens, max(tc.d_sae for tc in tcs.values()), cfg)


def build_tokens(
    model: LoadedModel,
    w: engine.Weights,
    tokens: torch.Tensor,
    tcs: dict[int, Transcoder],
    cfg: GraphConfig,
    answer: int | None,
    prompt: str,
    budget: int | None = None,
) -> AttributionGraph:
    """The graph of `tokens` (pos,) (what `build` computes once the prompt is encoded).

    Memory (plan_graph): the rows of direct edges live in one buffer, computed a batch of targets at a
    time (the batch cut to the budget; each batch runs only the positions up to its last target's), the
    ranking of the next features reads the buffer a block of rows at a time, and pruning works on the
    computed rows rather than the whole (node, node) adjacency. Where the rows would not fit the budget
    (`budget`, default runs.memory_budget), fewer feature rows are computed: `g.plan` says how many."""
    tcs = {layer: _on(tc, w.W_E.device) for layer, tc in tcs.items()}
    fz = freeze(w, tokens)
    lin = Linear.of(fz, tcs)
    L, P = w.n_layers, fz.n_pos
    # the features: activations, active set, error nodes
    pres, errs, found, values = [], [], [], []
    cross = is_cross_layer(tcs)  # a cross-layer transcoder's errors need every layer's activations: computed after
    with torch.no_grad():
        for layer in range(L):
            tc = tcs[layer]
            h = tc.pre(fz.mlp_in[layer])  # (pos, d_sae)
            a = tc.activate(h)
            if not cross:
                errs.append(fz.mlp_out[layer] - tc.decode(a, fz.mlp_in[layer]))  # (pos, d_model)
            nz = a.nonzero()  # (n, 2): position, feature, in row-major order
            found.append(torch.cat([torch.full((len(nz), 1), layer, device=nz.device), nz], 1).cpu())
            values.append(a[nz[:, 0], nz[:, 1]].float().cpu())
            pres.append(h[nz[:, 0], nz[:, 1]].float().cpu())  # (n,) only the active ones' pre-activations are kept
            del h, a
    if cross:
        errs = [e for _, e in sorted(reconstruction_errors(tcs, fz.mlp_in, fz.mlp_out).items())]
    active = torch.cat(found)  # (n_active, 3): layer, position, feature -- sorted by layer, position, feature
    n_active = len(active)
    act_values = torch.cat(values)  # (n_active,)
    pre_values = torch.cat(pres)  # (n_active,)
    logit_ids, logit_probs = _pick_logits(fz.logits, cfg, answer)
    logit_ids = logit_ids.to(fz.logits.device)
    n_logit = len(logit_ids)
    err_stack = torch.stack(errs)  # (layer, pos, d_model)
    del errs
    groups = _groups(tcs, active, act_values, fz.emb.device)
    d_sae = max(tc.d_sae for tc in tcs.values())
    the_plan = plan_graph(w, P, n_active, d_sae, cfg, budget, n_logit)
    if not the_plan.fits:
        raise InputError(f"{the_plan.message()} Shorten the prompt, or raise the budget (WORKBENCH_MEMORY_MB).")
    limit = the_plan.rows
    n_cols = n_active + L * P + P
    # the rows buffer: logits first, then the features in the order they are chosen
    R = torch.zeros(n_logit + limit, n_cols)
    row_abs = torch.zeros(n_logit + limit)  # each row's sum of |edges|: the rows normalised without a copy

    def fill(start: int, targets: list[tuple[int, int, int]]) -> None:
        """Computes the rows of `targets` ((layer, position, feature) or (L, -1, logit j)) into R[start:]."""
        # by position, so that a batch needs only the positions up to its last target's (causality)
        order = sorted(range(len(targets)), key=lambda i: P if targets[i][1] < 0 else targets[i][1])
        for s in range(0, len(order), the_plan.batch):
            idx = order[s : s + the_plan.batch]
            rows = _rows(lin, fz, tcs, [targets[i] for i in idx], active, groups, err_stack, logit_ids)
            where = torch.tensor(idx) + start
            R[where] = rows
            row_abs[where] = rows.abs().sum(1)

    fill(0, [(L, -1, j) for j in range(n_logit)])
    # the features' rows, the most influential first (influence through the rows known so far), until `limit`
    chosen: list[int] = []
    remaining = torch.ones(n_active, dtype=torch.bool)
    while len(chosen) < limit:
        done = n_logit + len(chosen)
        prod = torch.zeros(done)
        prod[:n_logit] = logit_probs
        infl = torch.zeros(n_cols)
        index = torch.tensor(chosen, dtype=torch.long)
        for _ in range(L + 2):
            contrib = _spread(R[:done], row_abs[:done], prod)  # (columns,)
            infl += contrib
            prod = torch.zeros(done)
            prod[n_logit:] = contrib[index]
        score = infl[:n_active].masked_fill(~remaining, -1.0)
        take = score.argsort(descending=True)[: min(cfg.batch, limit - len(chosen))].tolist()
        fill(done, [tuple(active[i].tolist()) for i in take])
        chosen += take
        remaining[take] = False
    row_of = torch.full((n_active,), -1, dtype=torch.long)
    row_of[torch.tensor(chosen, dtype=torch.long)] = torch.arange(n_logit, n_logit + len(chosen))
    chosen_t = torch.tensor(sorted(chosen), dtype=torch.long)  # nodes by layer, position, feature (the order of `active`)
    n_feat = len(chosen_t)
    # columns: chosen features, errors, tokens; what the features left out contributed is kept aside
    cols = torch.cat([chosen_t, torch.arange(n_active, n_cols)])
    n = n_feat + L * P + P + n_logit
    A = torch.zeros(n, n)
    targets_rows = torch.cat([row_of[chosen_t], torch.arange(n_logit)])  # R's row of each target node, in node order
    targets_nodes = torch.cat([torch.arange(n_feat), torch.arange(n - n_logit, n)])
    unexplained = torch.zeros(n_feat + n_logit)
    for s in range(0, len(targets_rows), ASSEMBLY_ROWS):  # a block of rows at a time: no (rows, columns) copy of R
        block = R[targets_rows[s : s + ASSEMBLY_ROWS]]  # (b, n_cols)
        A[targets_nodes[s : s + ASSEMBLY_ROWS], : n - n_logit] = block[:, cols]
        unexplained[s : s + ASSEMBLY_ROWS] = block[:, :n_active].sum(1) - block[:, chosen_t].sum(1)
    R = block = None  # the buffer freed before pruning
    # constants and values
    const_pre, const_logit = _constants(lin, tcs, logit_ids, active[chosen_t])
    bias = torch.zeros(n)
    value = torch.zeros(n)
    bias[:n_feat] = const_pre
    value[:n_feat] = pre_values[chosen_t]
    bias[n - n_logit :] = const_logit
    value[n - n_logit :] = (fz.logits[logit_ids] - fz.logits.mean()).float().cpu()
    weights = torch.zeros(n)
    weights[n - n_logit :] = logit_probs.float().cpu()
    live = targets_nodes.sort().values  # the only rows with edges: features and logits
    node_mask, edge_mask, infl, cumulative = prune(A, weights, n_feat, P + n_logit, cfg.node_threshold, cfg.edge_threshold, live)
    replacement, completeness = scores(A, weights, n_feat, L * P, P, live)
    labels = token_labels(model.tokenizer, fz.tokens.tolist())
    return AttributionGraph(
        prompt=prompt,
        tokens=fz.tokens.cpu(),
        labels=labels,
        features=active[chosen_t].cpu(),
        activations=act_values[chosen_t].float().cpu() if n_feat else torch.zeros(0),
        logit_tokens=logit_ids.cpu(),
        logit_labels=token_labels(model.tokenizer, logit_ids.tolist()),
        logit_probs=logit_probs.float().cpu(),
        adjacency=A,
        value=value,
        bias=bias,
        influence=infl,
        node_mask=node_mask,
        edge_mask=edge_mask,
        cumulative=cumulative,
        replacement_score=replacement,
        completeness_score=completeness,
        n_layers=L,
        active_total=n_active,
        unexplained=unexplained,
        config=cfg,
        provenance=provenance(
            model, [prompt], method="attribution graph (Ameisen et al. 2025)", node_threshold=cfg.node_threshold,
            edge_threshold=cfg.edge_threshold, max_features=cfg.max_features, feature_rows=limit, planned_bytes=the_plan.bytes,
            transcoders={layer: tc.meta.get("model_name", "") or tc.hook_name for layer, tc in tcs.items()},
        ),
        plan=the_plan,
    )  # fmt: skip


def _spread(R: torch.Tensor, row_abs: torch.Tensor, prod: torch.Tensor, block: int = 64) -> torch.Tensor:
    """(columns,) prod @ normalize(R), read a block of rows at a time (no normalised copy of R)."""
    out = torch.zeros(R.shape[1])
    scale = prod / row_abs.clamp(min=1e-10)  # (rows,)
    for s in range(0, len(R), block):
        p = scale[s : s + block]
        live = p != 0
        if live.any():
            out += p[live] @ R[s : s + block][live].abs()
    return out


def _on(tc: Transcoder, device) -> Transcoder:
    if tc.W_enc.device == torch.device(device):
        return tc
    moved = {n: getattr(tc, n).to(device) for n in ("W_enc", "b_enc", "W_dec", "b_dec") if getattr(tc, n) is not None}
    for n in ("W_skip", "threshold", "W_dec_later"):
        if getattr(tc, n) is not None:
            moved[n] = getattr(tc, n).to(device)
    return dataclasses.replace(tc, **moved)


def _rows(
    lin: Linear,
    fz: Frozen,
    tcs: dict[int, Transcoder],
    targets: list[tuple[int, int, int]],
    active: torch.Tensor,
    groups: list,
    err: torch.Tensor,
    logit_ids: torch.Tensor,
) -> torch.Tensor:
    """(B, n_active + L·P + P) the direct edges into a batch of targets, by one backward pass of the frozen linear model."""
    w = fz.w
    L, P, d = w.n_layers, fz.n_pos, fz.emb.shape[-1]
    B = len(targets)
    device = fz.emb.device
    layers = torch.tensor([t[0] for t in targets])
    stop = int(layers.max())
    n = P if stop == L else max(t[1] for t in targets) + 1  # positions the batch needs: up to its last target's
    lin = lin.prefix(n)
    with torch.enable_grad():
        writes = [torch.zeros(B, n, d, device=device, requires_grad=True) for _ in range(L + 1)]
        picked = torch.zeros(B, device=device)

        def on_pre(layer: int, mlp_in: torch.Tensor) -> None:
            nonlocal picked
            rows = (layers == layer).nonzero()[:, 0]
            if len(rows):
                pos = torch.tensor([targets[r][1] for r in rows.tolist()])
                f = torch.tensor([targets[r][2] for r in rows.tolist()])
                enc = tcs[layer].W_enc[:, f].T  # (rows, d_model)
                got = (mlp_in[rows.to(device), pos.to(device)] * enc.to(device)).sum(-1)  # (rows,)
                picked = picked.index_add(0, rows.to(device), got)

        x = lin.run(writes, bias=False, stop=stop if stop < L else None, on_pre=on_pre)
        if stop == L:
            rows = (layers == L).nonzero()[:, 0]
            j = torch.tensor([targets[r][2] for r in rows.tolist()])
            vals = lin.logit_values(x[rows.to(device), -1], logit_ids, bias=False)  # (rows, n_logit)
            picked = picked.index_add(0, rows.to(device), vals[torch.arange(len(rows)), j.to(device)])
        grads = torch.autograd.grad(picked.sum(), writes, allow_unused=True)
    g = [torch.zeros(B, n, d, device=device) if x is None else x for x in grads]  # ∂target/∂(what is written at each place)
    out = torch.zeros(B, len(active) + L * P + P)
    for layer, pos, sel, feats, acts in groups:
        if pos < n:  # later positions cannot reach the batch's targets: their edges stay zero
            dec = tcs[layer].W_dec[feats]  # (n_cell, d_model)
            edge = g[layer + 1][:, pos] @ dec.T  # (B, n_cell): gradient · decoder row
            for j in range(tcs[layer].n_later):  # a cross-layer feature writes to the later MLP outputs too
                edge = edge + g[layer + 2 + j][:, pos] @ tcs[layer].W_dec_later[feats, j].T
            out[:, sel] = (edge * acts).float().cpu()  # × activation
    n_active = len(active)
    errors = (torch.stack(g[1:], 1) * err[:, :n]).sum(-1)  # (B, layer, n)
    out[:, n_active : n_active + L * P].view(B, L, P)[:, :, :n] = errors.float().cpu()
    out[:, n_active + L * P : n_active + L * P + n] = (g[0] * fz.emb[:n]).sum(-1).float().cpu()
    return out


def _groups(tcs: dict[int, Transcoder], active: torch.Tensor, act_values: torch.Tensor, device) -> list:
    """[(layer, position, indices into `active`, their feature ids, their activations)], one per (layer, position) with
    active features: a batch's edges are then one small matmul per cell, never a (B, features, d_model) gather, and
    what the features write is read from the decoder per batch rather than held for the whole graph."""
    found = []
    for layer in range(len(tcs)):
        in_layer = active[:, 0] == layer
        for pos in active[in_layer, 1].unique().tolist():
            sel = (in_layer & (active[:, 1] == pos)).nonzero()[:, 0]
            found.append((layer, pos, sel, active[sel, 2].to(device), act_values[sel].to(device)))
    return found


def _constants(lin: Linear, tcs: dict[int, Transcoder], logit_ids: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((n_feat,), (n_logit,)) the constant of each feature node (`feats` (n_feat, 3): layer, position, feature) and logit
    node: the frozen model run on its biases alone."""
    fz = lin.fz
    P, d = fz.n_pos, fz.emb.shape[-1]
    zero = torch.zeros(1, P, d, device=fz.emb.device)
    writes = [zero] + [tcs[layer].b_dec.to(zero).expand(1, P, d) for layer in range(fz.w.n_layers)]
    out = torch.zeros(len(feats))

    def on_pre(layer: int, mlp_in: torch.Tensor) -> None:
        rows = (feats[:, 0] == layer).nonzero()[:, 0]
        if len(rows):
            pos, f = feats[rows, 1].to(zero.device), feats[rows, 2].to(zero.device)
            tc = tcs[layer]
            pre = (mlp_in[0, pos] * tc.W_enc[:, f].T.to(zero)).sum(-1) + tc.b_enc[f].to(zero)  # (rows,) only the nodes'
            out[rows] = pre.float().cpu()

    with torch.no_grad():
        x = lin.run(writes, bias=True, on_pre=on_pre)
        logit = lin.logit_values(x[:, -1], logit_ids, bias=True)[0]
    return out, logit.float().cpu()


# ---- checking the graph by intervention ----------------------------------------------------------------


def predict(g: AttributionGraph, nodes: list[int], factor: float, target: int | None = None) -> float:
    """The change of `target`'s value (default: the answer's logit minus the mean logit) that the graph's edges predict
    when feature nodes `nodes` are set to `factor` × their activation: their direct edges, carried linearly through the
    graph's other active features (each active feature passes on a change of its pre-activation one for one)."""
    target = g.answer_node if target is None else target
    nf = g.n_features
    bad = [i for i in nodes if not 0 <= i < nf]
    if bad:
        raise InputError(f"only feature nodes can be clamped; nodes {bad} are not features")
    per_unit = g.adjacency[:, :nf] / g.activations.clamp(min=1e-12)  # (node, feature): Δ target per unit of the source's activation
    delta = torch.zeros(nf)
    fixed = torch.zeros(nf, dtype=torch.bool)
    fixed[nodes] = True
    delta[nodes] = (factor - 1) * g.activations[nodes]
    for _ in range(g.n_layers):  # one layer deeper each pass: the graph has n_layers feature layers
        delta = torch.where(fixed, delta, per_unit[:nf] @ delta)
    return float(per_unit[target] @ delta)


@dataclass(frozen=True)
class Intervention:
    """Features set to `factor` × their activation: the answer's logit change as predicted and as measured."""

    nodes: list[str]  # node ids
    factor: float
    answer: str
    predicted: float  # by the graph's edges (predict)
    frozen: float  # measured in the graph's own model: transcoders, frozen errors, attention patterns and norm scales
    final_norm_live: float  # the graph's own model with the final norm's scale live (what freezing that one scale hides)
    replacement: float  # measured in the local replacement model (transcoders + frozen errors, attention live)
    attention_frozen: float  # measured in the real model, attention patterns held (circuit-tracer's feature_intervention default)
    final_norm_frozen: float  # as attention_frozen, the final norm's scale held at the real run's too (what that scale adds)
    real: float  # measured in the real model, attention live (feature_intervention with freeze_attention=False)
    top_before: list[tuple[str, float]]  # (token, probability) of the real run
    top_after: list[tuple[str, float]]  # of the real model with the edit (attention live)

    def rows(self) -> list[dict]:
        return [dict(nodes=" ".join(self.nodes), factor=self.factor, answer=self.answer, predicted=self.predicted,
                     frozen=self.frozen, final_norm_live=self.final_norm_live, replacement=self.replacement,
                     attention_frozen=self.attention_frozen, final_norm_frozen=self.final_norm_frozen,
                     real=self.real)]  # fmt: skip


def clamp_edits(w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float) -> list[engine.Edit]:
    """Engine edits on the real model: each feature's decoder row × (factor - 1) × its activation added to its MLP's
    output at its position (one edit per layer and position, so that a generation keeps them on the prompt's positions).

    A constant change, for continuations; `real_edits` sets the features as circuit-tracer does (the same where no set
    feature feeds another)."""
    delta: dict[tuple[int, int], torch.Tensor] = {}
    for i in nodes:
        layer, pos, f = g.features[i].tolist()
        tc = tcs[layer]
        rows = [tc.W_dec[f]] + ([] if tc.W_dec_later is None else list(tc.W_dec_later[f]))  # its own layer, then later ones
        for j, row in enumerate(rows):
            change = (factor - 1) * float(g.activations[i]) * row.float().cpu()
            delta[(layer + j, pos)] = delta.get((layer + j, pos), 0) + change
    return [engine.Edit("add", "mlp_out", layer, position=pos, value=v.to(w.W_E.device)) for (layer, pos), v in delta.items()]


def replacement_edits(
    w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float
) -> list[engine.Edit]:
    """Engine edits for the local replacement model (transcoders in place of the MLPs, errors frozen), `nodes` clamped."""
    from workbench.transcoder import splice_edits

    fz = freeze(w, g.tokens.to(w.W_E.device))
    errors = reconstruction_errors(tcs, fz.mlp_in, fz.mlp_out)
    clamp = _clamps(g, nodes, factor)
    return splice_edits(w, tcs, errors, clamp)


def real_edits(
    w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float, freeze_attention: bool
) -> list[engine.Edit]:
    """Engine edits on the real model that set `nodes` to factor × their activation as circuit-tracer's
    feature_intervention does (transcoder.steer_edits), with every attention pattern held at the real run's when
    `freeze_attention` (engine.frozen_patterns)."""
    from workbench.transcoder import steer_edits

    edits = steer_edits(w, tcs, _clamps(g, nodes, factor))
    return edits + engine.frozen_patterns(w, g.tokens.to(w.W_E.device)[None]) if freeze_attention else edits


def _clamps(g: AttributionGraph, nodes: list[int], factor: float) -> dict[int, list[tuple[int, int, float]]]:
    """{layer: [(position, feature, value)]}: each node fixed at factor × its activation in the graph's run (a constant,
    as circuit-tracer clamps: a clamped feature downstream of another does not follow it)."""
    clamp: dict[int, list] = {}
    for i in nodes:
        layer, pos, f = g.features[i].tolist()
        clamp.setdefault(layer, []).append((pos, f, factor * float(g.activations[i])))
    return clamp


def frozen_effect(
    w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float, live_final_norm: bool = False
) -> float:
    """The answer's logit change in the frozen replacement model (patterns, norm scales and errors from the real run;
    every feature recomputed by its transcoder, `nodes` clamped): what `predict` linearises.

    `live_final_norm`: the final norm computes its scale from the changed stream, the rest stays frozen (what that one
    scale adds: the frozen scale leaves out that a change along the stream's own direction is divided away)."""
    fz = freeze(w, g.tokens.to(w.W_E.device))
    lin = Linear.of(fz, tcs)
    clamp = _clamps(g, nodes, factor)
    errors = reconstruction_errors(tcs, fz.mlp_in, fz.mlp_out)
    seen: dict[int, torch.Tensor] = {}  # this run's activations so far: a cross-layer feature writes to later layers

    def mlp(layer: int, mlp_in: torch.Tensor, clamped: bool) -> torch.Tensor:
        tc = tcs[layer]
        a = tc.encode(mlp_in)  # (1, pos, d_sae)
        if clamped:
            for pos, f, value in clamp.get(layer, ()):
                a[:, pos, f] = value
        seen[layer] = a
        out = a @ tc.W_dec + tc.b_dec + errors[layer]  # the skip path is added by Linear.run
        for source in range(layer):
            if layer <= source + tcs[source].n_later:
                out = out + tcs[source].write_later(seen[source])[..., layer - source - 1, :]
        return out

    answer = g.logit_tokens[:1].to(w.W_E.device)

    def logit(last: torch.Tensor) -> torch.Tensor:  # (1, d_model) the last position's stream -> (1, 1)
        if not live_final_norm:
            return lin.logit_values(last, answer, bias=True)
        u, b = lin.logit_directions(answer)
        return w.ln_final(last) @ u + b

    with torch.no_grad():
        values = [logit(lin.run([fz.emb[None]], bias=True, mlp=lambda layer, x, c=c: mlp(layer, x, c))[:, -1]) for c in (False, True)]
    return float(values[1] - values[0])


def _answer_logit(logits: torch.Tensor, answer: int) -> float:
    return float(logits[answer] - logits.mean())


def intervene(
    model: LoadedModel, g: AttributionGraph, nodes: list[int], factor: float = 0.0, tcs: dict[int, Transcoder] | None = None
) -> Intervention:
    """Sets feature nodes `nodes` to `factor` × their activation and measures the answer's logit (module doc)."""
    tcs = {layer: _on(tc, model.device) for layer, tc in transcoders_for(model, tcs).items()}
    w = _weights(model)
    answer = int(g.logit_tokens[0])
    tokens = g.tokens.to(model.device)[None]
    final = [f"blocks.{w.n_layers - 1}.hook_resid_post"]  # the stream the final norm reads
    with torch.no_grad():
        plain = engine.forward(w, tokens, capture=final, last_only=True)
        base = plain.logits[0].float().cpu()
        rep = engine.forward(w, tokens, edits=replacement_edits(w, g, tcs, nodes, factor), last_only=True).logits[0].float().cpu()
        real = engine.forward(w, tokens, edits=real_edits(w, g, tcs, nodes, factor, False), last_only=True).logits[0].float().cpu()
        out = engine.forward(w, tokens, edits=real_edits(w, g, tcs, nodes, factor, True), capture=final, last_only=True)
        held = out.logits[0].float().cpu()
        x0, x1 = plain.captured[final[0]][0, -1:], out.captured[final[0]][0, -1:]  # (1, d_model) before and after
        scale = _scale(w.ln_final, x0)  # the real run's divisor, held: the final norm made linear as in the graph
        held_norm = [(_norm(w.ln_final, scale, x, bias=True) @ w.W_U + (0 if w.b_U is None else w.b_U))[0].float().cpu() for x in (x0, x1)]

    def top(logits: torch.Tensor) -> list[tuple[str, float]]:
        p = logits.softmax(-1).topk(5)
        return list(zip(token_labels(model.tokenizer, p.indices.tolist()), p.values.tolist(), strict=True))

    b = _answer_logit(base, answer)
    return Intervention(
        nodes=[g.node_id(i) for i in nodes],
        factor=float(factor),
        answer=g.logit_labels[0],
        predicted=predict(g, nodes, factor),
        frozen=frozen_effect(w, g, tcs, nodes, factor),
        final_norm_live=frozen_effect(w, g, tcs, nodes, factor, live_final_norm=True),
        replacement=_answer_logit(rep, answer) - b,
        attention_frozen=_answer_logit(held, answer) - b,
        final_norm_frozen=_answer_logit(held_norm[1], answer) - _answer_logit(held_norm[0], answer),
        real=_answer_logit(real, answer) - b,
        top_before=top(base),
        top_after=top(real),
    )


def continuations(
    model: LoadedModel, g: AttributionGraph, nodes: list[int], factor: float, new_tokens: int = 20, tcs: dict[int, Transcoder] | None = None
):
    """(original, edited) greedy continuations of the graph's prompt, the edited one with `nodes` set to factor × their
    activation in the real model (clamp_edits) at every step."""
    from workbench.generate import Sampling, generate

    tcs = transcoders_for(model, tcs)
    w = _weights(model)
    s = Sampling(max_new_tokens=new_tokens)
    return generate(model, g.prompt, s), generate(model, g.prompt, s, clamp_edits(w, g, tcs, nodes, factor))


def graph_of(
    model: LoadedModel,
    prompt: str,
    answer: int | None = None,
    node_threshold: float = CONFIG.node_threshold,
    edge_threshold: float = CONFIG.edge_threshold,
    truncate: bool = False,
    folder: str | None = None,
) -> AttributionGraph:
    """`build` with the shipped transcoders (or those in `folder`) and plain values (a page caches it by them)."""
    tcs = transcoder_set(model, folder) or None
    return build(
        model, prompt, tcs, dataclasses.replace(CONFIG, node_threshold=node_threshold, edge_threshold=edge_threshold), answer, truncate
    )


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
        w = _weights(model)
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


def random_features(g: AttributionGraph, n: int, seed: int = 0, exclude: list[int] = ()) -> list[int]:
    """n feature nodes drawn at random (not in `exclude`)."""
    pool = torch.tensor([i for i in range(g.n_features) if i not in set(exclude)])
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=gen)[:n]].tolist()


# ---- export: circuit-tracer's graph JSON ------------------------------------------------------------------


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def export(g: AttributionGraph, slug: str, scan: str, supernodes: list[list[str]] = ()) -> dict:
    """The graph in circuit-tracer's JSON (frontend/graph_models.py: metadata, qParams, nodes, links), pruned.

    `supernodes`: [[name, node_id, ...], ...] as the viewer's qParams keeps them."""
    if not slug or not all(c.isalnum() or c in "-_" for c in slug):
        raise InputError(f"a graph's slug is letters, digits, - and _, got {slug!r}")
    keep = g.node_mask.nonzero()[:, 0].tolist()
    nodes = []
    for i in keep:
        k, layer, pos, f = g.where(i)
        cum = float(g.cumulative[i])  # circuit-tracer's 'influence': the cumulative share up to this node
        if k == "feature":
            node = dict(node_id=g.node_id(i), feature=_cantor(layer, f), layer=str(layer), ctx_idx=pos, feature_type="cross layer transcoder",
                        jsNodeId=f"{layer}_{f}-0", clerp=g.label(i), influence=cum, activation=float(g.activations[i]))  # fmt: skip
        elif k == "error":
            node = dict(node_id=g.node_id(i), feature=-1, layer=str(layer), ctx_idx=pos, feature_type="mlp reconstruction error",
                        jsNodeId=f"{layer}_-1-{pos}", clerp=g.label(i), influence=cum, activation=None)  # fmt: skip
        elif k == "token":
            node = dict(node_id=g.node_id(i), feature=pos, layer="E", ctx_idx=pos, feature_type="embedding",
                        jsNodeId=f"E_{f}-{pos}", clerp=g.label(i), influence=cum, activation=None)  # fmt: skip
        else:
            j = i - (g.n_nodes - g.n_logits)
            p = float(g.logit_probs[j])
            node = dict(node_id=g.node_id(i), feature=f, layer=str(g.n_layers + 1), ctx_idx=pos, feature_type="logit",
                        jsNodeId=f"L_{f}-{pos}", clerp=f'Output "{g.logit_labels[j]}" (p={p:.3f})', influence=cum, activation=None,
                        token_prob=p, is_target_logit=j == 0)  # fmt: skip
        node.setdefault("token_prob", 0.0)
        node.setdefault("is_target_logit", False)
        node.update(run_idx=0, reverse_ctx_idx=0)
        nodes.append(node)
    kept = set(keep)
    dst, src = g.edge_mask.nonzero(as_tuple=True)
    links = [
        dict(source=g.node_id(s), target=g.node_id(t), weight=float(g.adjacency[t, s]))
        for t, s in zip(dst.tolist(), src.tolist(), strict=True)
        if s in kept and t in kept
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": list(g.labels),
            "prompt": g.prompt,
            "node_threshold": g.config.node_threshold,
            "schema_version": 1,
            "info": {
                "creator_name": "GPT interpretability workbench",
                "generator": {"name": "workbench.attribution_graph"},
                "replacement_score": g.replacement_score,
                "completeness_score": g.completeness_score,
            },
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [list(s) for s in supernodes],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


def feature_details(model: LoadedModel, g: AttributionGraph, tcs: dict[int, Transcoder] | None = None, k: int = 10) -> dict[str, dict]:
    """node_id -> a feature detail file (circuit-tracer's frontend reads one per feature): its activation on this
    prompt at every position and the tokens its decoder row promotes and suppresses through the unembedding."""
    tcs = transcoders_for(model, tcs)
    w = _weights(model)
    fz = freeze(w, g.tokens.to(model.device))
    out = {}
    for i in g.node_mask[: g.n_features].nonzero()[:, 0].tolist():
        layer, _pos, f = g.features[i].tolist()
        tc = tcs[layer]
        with torch.no_grad():
            acts = tc.encode(fz.mlp_in[layer])[:, f].float().cpu()  # (pos,)
            effect = (tc.total_row(f).to(w.W_U) @ w.W_U).float().cpu()  # (d_vocab,)
        up, down = effect.topk(k), (-effect).topk(k)
        out[g.node_id(i)] = {
            "index": _cantor(layer, f),
            "layer": layer,
            "feature": f,
            "act_max": float(acts.max()),
            "activations": acts.tolist(),
            "top_logits": token_labels(model.tokenizer, up.indices.tolist()),
            "top_logit_values": up.values.tolist(),
            "bottom_logits": token_labels(model.tokenizer, down.indices.tolist()),
            "bottom_logit_values": (-down.values).tolist(),
        }
    return out
