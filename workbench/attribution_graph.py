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
their probability reaches 0.95). Beside the nodes, the graph holds the edges into the final norm's
share (`FinalNorm`: how much a change of the last position's stream moves the final norm's divisor,
which the graph freezes), from the same backward passes as the logits'; with the edges into the
normalised stream (`final_stream`, computed on demand) they let the checks predict a change with
that divisor live (attribution_graph_checks.predict_live_norm). An edge s → t is the direct contribution of s to t, computed by
one backward pass of the frozen linear model per batch of targets (the gradient of t at the place
s writes, times what s writes). The direct edges into a node plus its constant sum to its
pre-activation exactly: the test checks this against the real model's own pre-activation.

The room's other parts, one module each: the frozen replacement model (replacement_model.py),
pruning and the scores (attribution_graph_pruning.py), the config and memory plan
(attribution_graph_plan.py), the checks by intervention (attribution_graph_checks.py), and
circuit-tracer's files (graph_files.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from workbench import engine
from workbench.attribution_graph_plan import ASSEMBLY_ROWS, CONFIG, GraphConfig, GraphPlan, plan_graph
from workbench.attribution_graph_pruning import prune, scores, spread
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.replacement_model import Frozen, Linear, edge_rows, feature_groups, freeze, node_constants, on_device
from workbench.runs import encode, provenance
from workbench.tokens import token_labels
from workbench.transcoder import Transcoder, check_fits, is_cross_layer, reconstruction_errors, transcoders_of


@dataclass(frozen=True)
class FinalNorm:
    """The final norm's scale as a readout of the graph (not a node: nothing in pruning, influence or the export reads it).

    The graph freezes the final norm's divisor σ (the last position's standard deviation or RMS), so that the logit
    nodes are linear. A change Δx of the last position's stream moves σ too: to first order σ_new / σ = 1 + r · Δx with
    r = u / (d σ²) (u the norm's input there, centred for a LayerNorm; Linear.norm_direction). That share r · x is, like
    a logit, a linear readout of the frozen model's last position, so its direct edges come from the same backward pass
    as the logits' (replacement_model.edge_rows): `edges` + `bias` = `value` at the clean run (|u|² / (d σ²), 1 but
    for the norm's eps). attribution_graph_checks.predict_live_norm combines it with the logit nodes by the norm's
    own formula; `scaled` is the part of each logit node that σ divides (the node's value without the norm's and
    the unembedding's biases)."""

    edges: torch.Tensor  # (node,) direct edge from each node (nodes in the graph's order; zero from logits)
    bias: float  # the constant part (the frozen model on its biases alone)
    value: float  # r · x at the clean run
    unexplained: float  # what features left out of the graph (max_features) contributed
    scaled: torch.Tensor  # (n_logit,) each logit node's part divided by σ


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
    final_norm: FinalNorm | None = None  # the final norm's share as a readout (FinalNorm)

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


def engine_weights(model: LoadedModel) -> engine.Weights:
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
    w = engine_weights(model)
    tokens, _ = encode(model, prompt, truncate)
    tokens = tokens.to(model.device)
    return build_tokens(model, w, tokens, tcs, cfg, answer, prompt)


def plan(model: LoadedModel, n_tokens: int, tcs: dict[int, Transcoder] | None = None, cfg: GraphConfig = CONFIG) -> GraphPlan:
    """The plan of a graph of a prompt of n_tokens, before it runs: TopK transcoders' active features are k per layer
    and position at most; others' are taken as 5% of their width (the shipped and random ones fire far less)."""
    tcs = transcoders_for(model, tcs)
    w = engine_weights(model)
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
    tcs = {layer: on_device(tc, w.W_E.device) for layer, tc in tcs.items()}
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
    groups = feature_groups(tcs, active, act_values, fz.emb.device)
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
            rows = edge_rows(lin, fz, tcs, [targets[i] for i in idx], active, groups, err_stack, logit_ids)
            where = torch.tensor(idx) + start
            R[where] = rows
            row_abs[where] = rows.abs().sum(1)

    # the logits' rows, and in the same backward passes the final norm's share's (FinalNorm), kept beside the buffer
    head = [(L, -1, j) for j in range(n_logit + 1)]
    rows = torch.cat([edge_rows(lin, fz, tcs, head[s : s + the_plan.batch], active, groups, err_stack, logit_ids)
                      for s in range(0, len(head), the_plan.batch)])  # fmt: skip
    R[:n_logit], row_abs[:n_logit], norm_row = rows[:n_logit], rows[:n_logit].abs().sum(1), rows[n_logit]  # norm_row (n_cols,)
    del rows
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
            contrib = spread(R[:done], row_abs[:done], prod)  # (columns,)
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
    const_pre, const_logit, const_norm = node_constants(lin, tcs, logit_ids, active[chosen_t])
    norm_edges = torch.zeros(n)
    norm_edges[: n - n_logit] = norm_row[cols]
    with torch.no_grad():
        last = fz.final[-1:]  # (1, d_model)
        final_norm = FinalNorm(
            edges=norm_edges, bias=const_norm, value=float(last[0] @ lin.norm_direction()),
            unexplained=float(norm_row[:n_active].sum() - norm_row[chosen_t].sum()),
            scaled=lin.logit_values(last, logit_ids, bias=False)[0].float().cpu(),
        )  # fmt: skip
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
    return AttributionGraph(
        prompt=prompt, tokens=fz.tokens.cpu(), labels=token_labels(model.tokenizer, fz.tokens.tolist()),
        features=active[chosen_t].cpu(), activations=act_values[chosen_t].float().cpu() if n_feat else torch.zeros(0),
        logit_tokens=logit_ids.cpu(), logit_labels=token_labels(model.tokenizer, logit_ids.tolist()), logit_probs=logit_probs.float().cpu(),
        adjacency=A, value=value, bias=bias, unexplained=unexplained,
        influence=infl, node_mask=node_mask, edge_mask=edge_mask, cumulative=cumulative,
        replacement_score=replacement, completeness_score=completeness, n_layers=L, active_total=n_active, config=cfg,
        provenance=provenance(
            model, [prompt], method="attribution graph (Ameisen et al. 2025)", node_threshold=cfg.node_threshold,
            edge_threshold=cfg.edge_threshold, max_features=cfg.max_features, feature_rows=limit, planned_bytes=the_plan.bytes,
            transcoders={layer: tc.meta.get("model_name", "") or tc.hook_name for layer, tc in tcs.items()},
        ),
        plan=the_plan,
        final_norm=final_norm,
    )  # fmt: skip


def final_stream(model: LoadedModel, g: AttributionGraph, tcs: dict[int, Transcoder] | None = None) -> torch.Tensor:
    """(d_model, n_feature) the direct edge of each feature node, per unit of its activation, into each coordinate of
    the final norm's normalised input u / σ at the last position (σ frozen; Linear.normalised): d_model more readouts
    of the graph's frozen model, by the backward passes that compute its edges (replacement_model.edge_rows).

    Not part of `build`: only the norm-aware prediction needs them (attribution_graph_checks.predict_live_norm: the
    squared size of the change, which the final norm's divisor sees), and d_model more rows would cost a large model
    a third of its graph's time."""
    tcs = {layer: on_device(tc, model.device) for layer, tc in transcoders_for(model, tcs).items()}
    w = engine_weights(model)
    fz = freeze(w, g.tokens.to(w.W_E.device))
    lin = Linear.of(fz, tcs)
    L, P, d = w.n_layers, fz.n_pos, fz.emb.shape[-1]
    ones = torch.ones(g.n_features)  # per unit of activation
    groups = feature_groups(tcs, g.features, ones, fz.emb.device)
    err = torch.zeros(L, P, d, device=fz.emb.device)  # error nodes do not change: their columns are not read
    ids = g.logit_tokens.to(fz.emb.device)
    first = g.n_logits + 1  # readouts: logits, the final norm's share, then the normalised stream (Linear.readouts)
    batch = g.plan.batch if g.plan is not None else g.config.batch  # the graph's batch, cut to its memory budget
    rows = [
        edge_rows(lin, fz, tcs, [(L, -1, first + k) for k in range(s, min(d, s + batch))], g.features, groups, err, ids)
        for s in range(0, d, batch)
    ]
    return torch.cat(rows)[:, : g.n_features]


def stream_change(
    model: LoadedModel, g: AttributionGraph, changes: torch.Tensor, tcs: dict[int, Transcoder] | None = None, fz: Frozen | None = None
) -> torch.Tensor:
    """(d_model,) the change of the final norm's normalised input u / σ at the last position (σ frozen) when the graph's
    feature nodes change their activations by `changes` (n_feature,): `final_stream(...) @ changes`, by one pass of the
    graph's frozen linear model instead of d_model backward rows (on a GPT-2-small shape those cost ~9 graphs).

    The features' decoder writes (and a cross-layer feature's writes to later MLP outputs) go in where their MLPs
    write; nothing else does, and no feature is recomputed: these are the features' direct edges, as in
    final_stream. The frozen model is linear without its biases, so the pass gives the change itself. `fz`: the
    graph's real run frozen (replacement_model.freeze), where the caller holds it already."""
    tcs = {layer: on_device(tc, model.device) for layer, tc in transcoders_for(model, tcs).items()}
    w = engine_weights(model)
    fz = fz if fz is not None else freeze(w, g.tokens.to(w.W_E.device))
    lin = Linear.of(fz, tcs)
    P, d = fz.n_pos, fz.emb.shape[-1]
    writes = [torch.zeros(1, P, d, device=fz.emb.device) for _ in range(w.n_layers + 1)]  # [embedding, MLP 0, ...]
    for i, change in enumerate(changes.tolist()):
        if change == 0.0:
            continue
        layer, pos, f = g.features[i].tolist()
        tc = tcs[layer]
        rows = [tc.W_dec[f]] + ([] if tc.W_dec_later is None else list(tc.W_dec_later[f]))  # its own layer, then later ones
        for j, row in enumerate(rows):
            writes[layer + 1 + j][0, pos] += change * row.to(writes[0])
    with torch.no_grad():
        last = lin.run(writes, bias=False)[:, -1]  # (1, d_model)
    return lin.normalised(last)[0].float().cpu()


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
