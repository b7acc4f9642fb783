"""The information-flow graph: which routes through the model made one prediction (Ferrando & Voita 2024).

The residual stream is read at the lens points (lens.lens_points): the embeddings, then after each
block's attention and after its MLP (a parallel block, GPT-NeoX, Phi, GPT-J, has one point after
both). Every step from one point to the next adds an update, and the update is a sum of parts:

- an attention step at query position i: the incoming residual x_i, one vector per (key position
  j, head h), pattern[h, i, j] · v[j, h] · W_O[h], and the output bias b_O (it comes from no token);
- an MLP step: the incoming residual and the MLP's output;
- a parallel block: the residual, the attention parts, the bias and the MLP's output together.

The sum of the parts is the point's residual exactly: `Incoming.error` is the largest difference
from the model's own activation, checked, not assumed. A part's importance for the whole y is the
paper's proximity `max(‖y‖₁ − ‖y − part‖₁, 0)`, normalised over the parts, so that the importances
of each node's incoming parts sum to 1. An edge between two token positions sums its heads
(the part Σ_h ...), and the same measure on the heads' own parts breaks it down by head.

The graph keeps the incoming edges of a node above a threshold (0.04, the llm-transparency-tool's
default), renormalises them and follows them back from the chosen position's output to the
embeddings, one step at a time: only the nodes on the route are decomposed, a chunk of query
positions at a time, so positions × positions × heads × d_model is never held for more than one
chunk of one layer.

Contrastive mode (answer vs wrong, the paper's contrastive variant as read here): every whole and
part is measured along the direction that separates the two tokens' logits (the final norm's gain
times W_U[:, answer] − W_U[:, wrong]), so the route is the one that carries the logit difference.

Faithfulness: the graph is checked by ablation through edits given as data (engine.Edit, run by the
forward engine, or through the bridge's hooks for a family the engine does not know): an
attention edge is removed by zeroing its pattern entries (every head; mean ablation adds back the
mean of the same entries' contribution over reference prompts), an MLP by replacing its output at
that position. Keeping only the graph must keep the metric; removing the graph's top-k edges must
hurt it more than removing k random edges.

The check holds the attention patterns at the clean run's (`frozen_patterns`), because that is what
the graph describes: its edges are value-path contributions pattern · v · W_O, measured with the
model's own attention weights, and say nothing about the queries and keys that set those weights.
Measured before this (patterns recomputed in the ablated run): on the answer-key model, whose
induction circuit is known by construction, the contrastive graph of "apple river stone cloud tiger
apple river" (answer " stone", wrong " lemon") is exactly the induction head's edge 3 → 7, and the
check kept only 14% (zero) / 18% (mean) of the metric, at every threshold from 0.04 to 0.01: the
previous-token edge 2 → 3 carries " river" (orthogonal to stone − lemon, so on no contrastive
route), yet ablating it moved the induction head's attention away through its keys. On the trained
circuits model, "… lemon apple river stone": -4% (mean), 79% (zero). The threshold was not at fault.
With the patterns frozen: 1.05 / 1.06 (answer key), 0.66-0.78 (circuits, either prompt or ablation).

Mean ablation's references are random tokens of the vocabulary (BOS kept first, same length), no longer
the prompt's own tokens shuffled: a shuffle keeps the prompt's repeated tokens, so the references'
induction heads copy the prompt's other tokens, and their mean adds competing answers. Measured with
frozen patterns, share with shuffled references 1.72 on the answer key (the metric overshoots: the
fill is not neutral) and 1.68 on the circuits model's contrastive graph; with random tokens 1.05 and
0.62.

Above 500 lines for now: decomposition, routes and faithfulness split along those seams once issue
25's backend change to this module (the run layer's choice, the readout's store) has landed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench import cost, engine, lens
from workbench.edit_maps import Rescale
from workbench.errors import InputError
from workbench.metrics import Metric, metric_for
from workbench.model import LoadedModel
from workbench.runs import Run, check_position, check_token_ids, has_hook, hook_names, provenance, run_edited, run_prompt, run_tokens
from workbench.tokens import token_labels

THRESHOLD = 0.04  # the llm-transparency-tool's default
CHUNK_ELEMENTS = 2**24  # floats per chunk of (query, key, head, d_model) parts: 64 MB
ABLATIONS = ("mean", "zero")
REFERENCE_RUNS = 8  # mean ablation's reference: runs of random tokens, the prompt's length
GRAPH_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_pattern", "attn.hook_v", "hook_mlp_out")


# ---- the steps of the residual stream -----------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """One update of the residual stream: from point `source` to point `destination` inside block `layer`."""

    layer: int
    kind: str  # "attn", "mlp", or "block" (a parallel block: attention and MLP at once)
    source: int  # lens point read
    destination: int  # lens point written

    @property
    def attention(self) -> bool:
        return self.kind in ("attn", "block")

    @property
    def mlp(self) -> bool:
        return self.kind in ("mlp", "block")


def steps(model: LoadedModel) -> list[Update]:
    """The updates in order, following the architecture (no resid_mid in a parallel block: LTT's issue #24)."""
    out, point = [], 0
    for layer in range(model.info.n_layers):
        if has_hook(model, f"blocks.{layer}.hook_resid_mid"):
            out += [Update(layer, "attn", point, point + 1), Update(layer, "mlp", point + 1, point + 2)]
            point += 2
        else:
            out.append(Update(layer, "block", point, point + 1))
            point += 1
    return out


def graph_run(model: LoadedModel, prompt: str, truncate: bool = False) -> Run:
    """The cached run a graph reads: residuals at every point, patterns, values, MLP outputs and neurons."""
    return run_prompt(model, prompt, hook_names(model, *GRAPH_HOOKS, "mlp.hook_post"), truncate=truncate)


def _value_out(model: LoadedModel, run: Run, layer: int) -> torch.Tensor:
    """(key, head, d_model): what each head would write from each key position at full attention, v · W_O."""
    v = run[f"blocks.{layer}.attn.hook_v"].float()  # (key, kv_head, d_head)
    heads = model.info.n_heads
    if v.shape[1] != heads:  # grouped-query attention: each key/value head serves heads / kv_head query heads
        v = v.repeat_interleave(heads // v.shape[1], 1)
    w_o = engine.block_weights(model, layer).W_O  # (head, d_head, d_model)
    return torch.einsum("khe,hed->khd", v, w_o)


# ---- importances --------------------------------------------------------------------------------------


def proximity(whole: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """max(‖whole‖₁ − ‖whole − part‖₁, 0): whole (..., d), parts (..., n, d) -> (..., n)."""
    return (whole.abs().sum(-1)[..., None] - (whole[..., None, :] - parts).abs().sum(-1)).clamp(min=0)


@dataclass(frozen=True)
class Incoming:
    """The parts of one step's update at some positions, and each part's importance (they sum to 1 per position).

    `attention` (query, key) sums the heads; `heads` (query, key, head) is the same measure on
    every head's own part, normalised over the residual, the bias, the MLP and all (key, head)
    parts. Steps without attention or without an MLP hold zeros there.
    """

    step: Update
    positions: torch.Tensor  # (query,) the destination positions
    residual: torch.Tensor  # (query,)
    attention: torch.Tensor  # (query, key)
    heads: torch.Tensor  # (query, key, head)
    bias: torch.Tensor  # (query,) the attention output's bias
    mlp: torch.Tensor  # (query,)
    heads_residual: torch.Tensor  # (query,) the residual's importance in the per-head decomposition
    heads_rest: torch.Tensor  # (query,) the bias's and the MLP's together in the per-head decomposition
    error: float  # largest |Σ parts − the model's residual| at these positions


def incoming(model: LoadedModel, run: Run, step: Update, positions: torch.Tensor, direction: torch.Tensor | None = None) -> Incoming:
    """Importances of the parts of `step`'s update at `positions`; `direction` (d_model,): measure along it (contrastive)."""
    points = lens.lens_points(model)
    layer, n, heads = step.layer, run.n_tokens, model.info.n_heads
    whole_all = run[points[step.destination][1]].float()  # (pos, d_model)
    resid_all = run[points[step.source][1]].float()
    b_o = engine.block_weights(model, layer).b_O if step.attention else None  # (d_model,)
    u = _value_out(model, run, layer) if step.attention else None  # (key, head, d_model)
    pattern = run[f"blocks.{layer}.attn.hook_pattern"].float() if step.attention else None  # (head, query, key)
    mlp_all = run[f"blocks.{layer}.hook_mlp_out"].float() if step.mlp else None

    def measure(x: torch.Tensor) -> torch.Tensor:  # (..., d_model) -> (..., d_model) or (..., 1) along the direction
        return x if direction is None else (x @ direction)[..., None]

    q_n = len(positions)
    out = dict(
        residual=torch.zeros(q_n), attention=torch.zeros(q_n, n), heads=torch.zeros(q_n, n, heads), bias=torch.zeros(q_n),
        mlp=torch.zeros(q_n), heads_residual=torch.zeros(q_n), heads_rest=torch.zeros(q_n),
    )  # fmt: skip
    error = 0.0
    per_query = n * heads * (model.info.d_model if direction is None else 1)
    chunk = max(1, CHUNK_ELEMENTS // per_query)
    for start in range(0, q_n, chunk):
        rows = slice(start, start + chunk)
        q = positions[rows]  # (c,)
        keys = int(q.max()) + 1  # causal: no query sees past the latest of the chunk
        whole, resid = whole_all[q], resid_all[q]  # (c, d_model)
        total = resid.clone()
        w_whole = measure(whole)  # (c, d')
        r_prox = proximity(w_whole, measure(resid)[:, None])[:, 0]  # (c,)
        bias_prox = mlp_prox = torch.zeros(len(q))
        if step.attention:
            p = pattern[:, q, :keys]  # (head, c, key)
            head_parts = torch.einsum("hqk,khd->qkhd", p, u[:keys])  # (c, key, head, d_model)
            summed = head_parts.sum(2)  # (c, key, d_model)
            total = total + summed.sum(1)
            a_prox = proximity(w_whole, measure(summed))  # (c, key)
            h_prox = proximity(w_whole[:, None], measure(head_parts))  # (c, key, head)
            if b_o is not None:
                total = total + b_o
                bias_prox = proximity(w_whole, measure(b_o).expand(len(q), 1, -1))[:, 0]
        if step.mlp:
            m = mlp_all[q]  # (c, d_model)
            total = total + m
            mlp_prox = proximity(w_whole, measure(m)[:, None])[:, 0]
        extra = bias_prox + mlp_prox  # in both normalisations
        error = max(error, float((total - whole).abs().max()))
        norm = r_prox + extra + (a_prox.sum(1) if step.attention else 0)
        h_norm = r_prox + extra + (h_prox.sum((1, 2)) if step.attention else 0)
        # a whole that no part approaches (every proximity 0) is left to the residual: the update is lost in it
        for name, value, denominator in (("residual", r_prox, norm), ("heads_residual", r_prox, h_norm)):
            out[name][rows] = torch.where(denominator > 0, value / denominator.clamp(min=1e-30), torch.ones(()))
        safe, h_safe = norm.clamp(min=1e-30)[:, None], h_norm.clamp(min=1e-30)[:, None]
        out["bias"][rows] = bias_prox / safe[:, 0]
        out["mlp"][rows] = mlp_prox / safe[:, 0]
        out["heads_rest"][rows] = extra / h_safe[:, 0]
        if step.attention:
            out["attention"][rows, :keys] = a_prox / safe
            out["heads"][rows, :keys] = h_prox / h_safe[..., None]
    return Incoming(step, positions, error=error, **out)


# ---- the graph ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One kept edge: from node (point, position) to node (point, position) through one part of the update."""

    kind: str  # "residual", "attention" (every head of a pair of positions) or "mlp"
    layer: int
    source: tuple[int, int]  # (point, position)
    destination: tuple[int, int]
    importance: float  # share of the destination's update, before thresholding
    weight: float  # after thresholding, renormalised over the destination's kept incoming edges
    flow: float  # share of the output that flows through this edge: weight × the destination's flow
    heads: tuple[float, ...] = ()  # attention: each head's importance (the per-head decomposition)

    @property
    def ablatable(self) -> bool:
        """Attention and MLP edges can be removed by an edit; the residual path is the stream itself."""
        return self.kind != "residual"


@dataclass(frozen=True)
class Graph:
    """The routes to one prediction: nodes (lens point, position) and the edges kept above the threshold."""

    model: str
    prompt: str
    tokens: torch.Tensor  # (pos,)
    labels: list[str]  # (pos,)
    points: list[str]  # (point,) lens point labels, embeddings first
    position: int  # the prediction's position
    threshold: float
    answer: int  # the predicted token id the graph explains
    answer_label: str
    wrong: int | None  # contrastive mode: the token the answer is contrasted with
    wrong_label: str | None
    nodes: tuple[tuple[int, int], ...]  # (point, position), output first
    edges: tuple[Edge, ...]
    node_flow: dict[tuple[int, int], float]  # share of the output that passes through each node
    error: float  # largest |Σ parts − residual| over the decomposed nodes (exactness check)
    provenance: dict = field(repr=False)

    @property
    def contrastive(self) -> bool:
        return self.wrong is not None

    def ranked(self, k: int | None = None) -> list[Edge]:
        """Ablatable edges (attention, MLP) by the share of the output that flows through them, largest first."""
        found = sorted((edge for edge in self.edges if edge.ablatable), key=lambda edge: -edge.flow)
        return found if k is None else found[:k]

    def document(self) -> dict:
        """The graph as JSON-ready data in the node-link format (networkx, d3): nodes, links (its edges), metadata.

        The schema is in the README; `networkx.node_link_graph(doc, directed=True, edges="links")` reads it.
        """
        nodes = [
            dict(id=node_id(n), point=n[0], point_label=self.points[n[0]], position=n[1], token=self.labels[n[1]], flow=self.node_flow[n])
            for n in self.nodes
        ]
        edges = [
            dict(
                source=node_id(edge.source), target=node_id(edge.destination), kind=edge.kind, layer=edge.layer,
                importance=edge.importance, weight=edge.weight, flow=edge.flow, heads=list(edge.heads),
            )
            for edge in self.edges
        ]  # fmt: skip
        meta = dict(
            model=self.model, prompt=self.prompt, tokens=self.tokens.tolist(), labels=self.labels, points=self.points,
            position=self.position, threshold=self.threshold, answer=self.answer, answer_label=self.answer_label,
            wrong=self.wrong, wrong_label=self.wrong_label, contrastive=self.contrastive, decomposition_error=self.error,
            method="Ferrando & Voita 2024 proximity: max(|y|_1 - |y - part|_1, 0), normalised over the parts",
            provenance=self.provenance,
        )  # fmt: skip
        return dict(directed=True, multigraph=True, nodes=nodes, links=edges, metadata=meta)

    def rows(self) -> list[dict]:
        return [
            dict(kind=edge.kind, layer=edge.layer, source_point=self.points[edge.source[0]], source_position=edge.source[1],
                 destination_point=self.points[edge.destination[0]], destination_position=edge.destination[1], importance=edge.importance,
                 weight=edge.weight, flow=edge.flow)
            for edge in self.edges
        ]  # fmt: skip


def node_id(node: tuple[int, int]) -> str:
    return f"p{node[0]}@{node[1]}"


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        raise InputError(f"the threshold must be at least 0 and below 1 (a share of a node's update), got {threshold}")
    return float(threshold)


def contrast_direction(model: LoadedModel, answer: int, wrong: int) -> torch.Tensor:
    """(d_model,): the final norm's gain times W_U[:, answer] − W_U[:, wrong]: the residual direction of the logit difference."""
    r = engine.readout_of(model)
    norm, d = r.norm, r.W_U[:, answer] - r.W_U[:, wrong]  # (d_model,)
    return d if norm.weight is None else d * (norm.offset + norm.weight)


def build(
    model: LoadedModel,
    prompt: str,
    position: int = -1,
    threshold: float = THRESHOLD,
    answer: int | None = None,
    wrong: int | None = None,
    truncate: bool = False,
) -> Graph:
    """The information-flow graph of the prediction after `position` (default: the last).

    Without `wrong`, the routes are those of the output residual at `position`, as in the paper:
    they do not depend on the token, and `answer` (default: the model's top prediction there) only
    names it and sets the faithfulness metric. `wrong` turns on contrastive mode, whose routes are
    those of the answer − wrong logit difference. Edges below `threshold` (a share of their
    destination's update) are dropped.
    """
    threshold = check_threshold(threshold)
    run = graph_run(model, prompt, truncate)
    position = check_position(run.n_tokens, position)
    answer = int(run.logits[position].argmax()) if answer is None else check_token_ids(model, [answer], "answer")[0]
    direction = None
    if wrong is not None:
        wrong = check_token_ids(model, [wrong], "wrong")[0]
        if wrong == answer:
            raise InputError("the answer and the wrong token are the same: contrast the answer with another token")
        direction = contrast_direction(model, answer, wrong)
    all_steps = steps(model)
    top = all_steps[-1].destination
    frontier: dict[int, set[int]] = {top: {position}}
    edges: list[Edge] = []
    error = 0.0
    for step in reversed(all_steps):
        destinations = sorted(frontier.get(step.destination, ()))
        if not destinations:
            continue
        parts = incoming(model, run, step, torch.tensor(destinations), direction)
        error = max(error, parts.error)
        for row, i in enumerate(destinations):
            kept = []  # (kind, source position, importance, heads)
            if parts.residual[row] >= threshold:
                kept.append(("residual", i, float(parts.residual[row]), ()))
            if step.mlp and parts.mlp[row] >= threshold:
                kept.append(("mlp", i, float(parts.mlp[row]), ()))
            if step.attention:
                for j in torch.nonzero(parts.attention[row] >= threshold).flatten().tolist():
                    kept.append(("attention", j, float(parts.attention[row, j]), tuple(parts.heads[row, j].tolist())))
            total = sum(k[2] for k in kept) or 1.0
            for kind, j, importance, heads in kept:
                edges.append(Edge(kind, step.layer, (step.source, j), (step.destination, i), importance, importance / total, 0.0, heads))
                frontier.setdefault(step.source, set()).add(j)
    edges, node_flow = _flows(edges, (top, position))
    nodes = tuple(sorted(node_flow, key=lambda n: (-n[0], n[1])))
    labels = run.labels
    decode = token_labels(model.tokenizer, [answer] + ([wrong] if wrong is not None else []))
    return Graph(
        model=model.info.name,
        prompt=prompt,
        tokens=run.tokens,
        labels=labels,
        points=[label for label, _ in lens.lens_points(model)],
        position=position,
        threshold=threshold,
        answer=answer,
        answer_label=decode[0],
        wrong=wrong,
        wrong_label=decode[1] if wrong is not None else None,
        nodes=nodes,
        edges=tuple(edges),
        node_flow=node_flow,
        error=error,
        provenance=provenance(model, [prompt], method="information flow routes", position=position, threshold=threshold,
                              answer=answer, wrong=wrong, truncate=truncate),
    )  # fmt: skip


def _flows(edges: list[Edge], output: tuple[int, int]) -> tuple[list[Edge], dict[tuple[int, int], float]]:
    """Edges with their flow, and each node's flow: the output's is 1, a node's is the sum over its outgoing edges."""
    node_flow = {output: 1.0}
    done = []
    for edge in sorted(edges, key=lambda edge: -edge.destination[0]):  # destinations from the top down: a node's flow is complete first
        flow = edge.weight * node_flow.get(edge.destination, 0.0)
        node_flow[edge.source] = node_flow.get(edge.source, 0.0) + flow
        done.append(Edge(edge.kind, edge.layer, edge.source, edge.destination, edge.importance, edge.weight, flow, edge.heads))
    return done, node_flow


# ---- what a node holds: the lens there, its update's direct effect, the MLP's neurons --------------------


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


# ---- faithfulness: ablations as edits --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Ablation:
    """What to remove, as masks: attention edges (every head of a query and key position) and MLPs at a position."""

    edges: torch.Tensor  # (layer, query, key) bool
    mlps: torch.Tensor  # (layer, pos) bool

    @classmethod
    def of(cls, n_layers: int, n_tokens: int, edges=(), mlps=()) -> Ablation:
        """From (layer, query, key) and (layer, position) tuples."""
        e, m = torch.zeros(n_layers, n_tokens, n_tokens, dtype=torch.bool), torch.zeros(n_layers, n_tokens, dtype=torch.bool)
        for layer, i, j in edges:
            e[layer, i, j] = True
        for layer, i in mlps:
            m[layer, i] = True
        return cls(e, m)

    @property
    def size(self) -> int:
        return int(self.edges.sum() + self.mlps.sum())

    def clip(self, n: int) -> Ablation:
        """Only what acts on the first n positions."""
        return Ablation(self.edges[:, :n, :n], self.mlps[:, :n])


@dataclass(frozen=True)
class Reference:
    """Mean activations over reference prompts of the same length, for mean ablation (None: zero ablation)."""

    pattern: list[torch.Tensor]  # per layer (ref, head, query, key)
    v: list[torch.Tensor]  # per layer (ref, key, head, d_head), key/value heads repeated for grouped-query attention
    mlp_out: list[torch.Tensor]  # per layer (query, d_model), the mean


def reference(model: LoadedModel, tokens: torch.Tensor, n: int = REFERENCE_RUNS, seed: int = 0) -> Reference:
    """`n` reference runs of random tokens (no special tokens; BOS kept first), the prompt's length (module doc: why not shuffles)."""
    gen = torch.Generator().manual_seed(seed)
    keep = 1 if model.bos_id is not None and int(tokens[0]) == model.bos_id else 0
    special = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    ordinary = torch.tensor([i for i in range(min(model.info.d_vocab, len(model.tokenizer))) if i not in special])
    rows = [
        torch.cat([tokens[:keep], ordinary[torch.randint(0, len(ordinary), (len(tokens) - keep,), generator=gen)].to(tokens)])
        for _ in range(n)
    ]
    L = model.info.n_layers
    names = [f"blocks.{layer}.{s}" for layer in range(L) for s in ("attn.hook_pattern", "attn.hook_v", "hook_mlp_out")]
    with torch.no_grad():
        _, cache = run_tokens(model, torch.stack(rows), names)
    heads = model.info.n_heads
    v = [cache[f"blocks.{layer}.attn.hook_v"].float().cpu() for layer in range(L)]
    v = [x.repeat_interleave(heads // x.shape[2], 2) if x.shape[2] != heads else x for x in v]
    return Reference(
        [cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu() for layer in range(L)],
        v,
        [cache[f"blocks.{layer}.hook_mlp_out"].float().cpu().mean(0) for layer in range(L)],
    )


def ablation_edits(
    model: LoadedModel, n_tokens: int, ablation: Ablation, row: int, ref: Reference | None, clean: list[torch.Tensor] | None = None
) -> list[engine.Edit]:
    """Engine edits (for runs.run_edited) that remove `ablation`'s parts in batch row `row`; mean ablation with `ref`.

    `clean` (per layer (head, query, key), the clean run's patterns): every layer's pattern is held at
    the clean one, with the removed entries zeroed (module doc)."""
    rows = torch.tensor([row])
    edits = []
    for layer in range(model.info.n_layers):
        cut = ablation.edges[layer].float()  # (query, key)
        if clean is not None:  # the pattern edit sees (rows, query, head, key)
            held = clean[layer][:, :n_tokens, :n_tokens].permute(1, 0, 2) * (1 - cut)[:, None, :]  # (query, head, key)
            edits.append(engine.Edit("replace", "pattern", layer, rows=rows, value=held.to(model.device)))
        if cut.any():
            if clean is None:  # the pattern edit sees (rows, query, head, key): zero the pairs for every head
                edits.append(engine.Edit("map", "pattern", layer, rows=rows, fn=Rescale((1 - cut)[:, None, :])))
            if ref is not None:  # the removed entries' mean contribution to z, per (query, head)
                fill = torch.einsum("rhqk,qk,rkhe->qhe", ref.pattern[layer], cut, ref.v[layer]) / len(ref.v[layer])
                edits.append(engine.Edit("add", "z", layer, rows=rows, value=fill.to(model.device)))
        gone = ablation.mlps[layer].float()[:, None]  # (pos, 1)
        if gone.any():
            fill = None if ref is None else gone * ref.mlp_out[layer]
            edits.append(engine.Edit("map", "mlp_out", layer, rows=rows, fn=Rescale(1 - gone, fill)))
    return edits


def nothing(model: LoadedModel, n_tokens: int) -> Ablation:
    return Ablation.of(model.info.n_layers, n_tokens)


def everything(model: LoadedModel, n_tokens: int) -> Ablation:
    """Every attention edge (query sees key: key <= query) and every MLP of the model."""
    L = model.info.n_layers
    causal = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()  # (query, key)
    return Ablation(causal.expand(L, -1, -1).clone(), torch.ones(L, n_tokens, dtype=torch.bool))


def graph_ablation(model: LoadedModel, n_tokens: int, edges: list[Edge]) -> Ablation:
    """The attention edges and MLPs of `edges`."""
    return Ablation.of(
        model.info.n_layers,
        n_tokens,
        [(edge.layer, edge.destination[1], edge.source[1]) for edge in edges if edge.kind == "attention"],
        [(edge.layer, edge.destination[1]) for edge in edges if edge.kind == "mlp"],
    )


def graph_metric(answer: int, wrong: int | None) -> Metric:
    """The faithfulness metric: answer − wrong logit, or without a wrong token the answer's logit above the mean logit
    (metrics.metric_for: linear in the logits and 0 for a flat distribution, so a share of it kept is meaningful)."""
    return metric_for(answer, wrong, "logit above mean")


def run_ablations(
    model: LoadedModel,
    tokens: torch.Tensor,
    position: int,
    ablations: list[Ablation],
    ref: Reference | None,
    clean: list[torch.Tensor] | None = None,
    progress=None,
) -> torch.Tensor:
    """(ablation, d_vocab) logits at `position`, each ablation in its own batch row of one edited run.

    Through the forward engine where engine.backend chooses it: some attention bridges (OPT, GPT-J) hand
    the pattern to Hugging Face's module before its hook fires and discard an edit of it. Elsewhere
    through the model's own hooks (runs.run_edited). Positions after `position` cannot change it (causality)
    and are not run. With `progress(done)`, one ablation per call instead, reported after each (long work
    on a large model: a Cancel reaches it between calls).
    """
    n = position + 1
    if progress is not None:
        out = []
        for i, a in enumerate(ablations):
            out.append(run_ablations(model, tokens, position, [a], ref, clean))
            progress(i + 1)
        return torch.cat(out)
    edits = [e for row, a in enumerate(ablations) for e in ablation_edits(model, n, a.clip(n), row, _clip_ref(ref, n), clean)]
    batch = tokens[:n][None].expand(len(ablations), -1)
    chosen = engine.backend(model)
    with torch.no_grad():
        if not chosen.engine:
            logits, _ = run_edited(model, batch, edits, last_only=True)
            return logits[:, -1].float().cpu()
        return engine.forward(chosen.weights, batch.to(model.device), edits=edits, last_only=True).logits.float().cpu()


def _clip_ref(ref: Reference | None, n: int) -> Reference | None:
    if ref is None:
        return None
    return Reference([p[:, :, :n, :n] for p in ref.pattern], [v[:, :n] for v in ref.v], [m[:n] for m in ref.mlp_out])


@dataclass(frozen=True)
class Faithfulness:
    """How much of the prediction the graph explains, by ablation (metric: answer − wrong logit, or answer − mean logit)."""

    metric: str
    ablation: str  # "mean" or "zero"
    reference: str  # what the ablation puts in a part's place, in words (ablation_reference): its mean over what, or zero
    full: float  # the metric of the model's own run
    empty: float  # every attention edge and MLP ablated
    kept: float  # everything outside the graph ablated
    share: float  # (kept − empty) / (full − empty): 1 = the graph alone makes the prediction
    answer_top1: bool  # whether the answer is still the top prediction with only the graph kept
    k: int
    top_k: float  # the metric with the graph's top-k edges ablated
    random_k: list[float]  # the metric with k random attention edges or MLPs ablated, one per draw
    top_drop: float  # (full − top_k) / (full − empty)
    random_drop: float  # the same, averaged over the random draws
    survives: bool
    verdict: str
    backend: str = "engine"  # engine.backend's choice for the ablated runs (run_ablations)

    def rows(self) -> list[dict]:
        rows = [
            dict(run="model", metric=self.full), dict(run="everything ablated", metric=self.empty),
            dict(run="only the graph kept", metric=self.kept), dict(run=f"graph's top {self.k} ablated", metric=self.top_k),
        ]  # fmt: skip
        return rows + [dict(run=f"{self.k} random ablated (draw {d})", metric=m) for d, m in enumerate(self.random_k)]


def clean_patterns(model: LoadedModel, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (head, query, key): the attention patterns of the clean run of `tokens` (pos,)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.info.n_layers)]
    with torch.no_grad():
        _, cache = run_tokens(model, tokens[None], names)
    return [cache[n][0].float().cpu() for n in names]


def faithfulness(
    model: LoadedModel,
    g: Graph,
    ablation: str = "mean",
    k: int = 5,
    draws: int = 8,
    seed: int = 0,
    min_share: float = 0.5,
    frozen_patterns: bool = True,
    progress=None,
) -> Faithfulness:
    """Ablates everything outside the graph, and the graph's top-k edges vs k random ones, in one batched edited run.

    `frozen_patterns`: hold the attention patterns at the clean run's (module doc: what the graph describes).
    `progress(done, total)` after each model call (the reference runs, the clean run, each ablated
    run in turn); its False cancels there (cost.report)."""
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive number of edges, got {k}")
    n = g.position + 1  # later positions cannot change the prediction (causality): neither ablated nor drawn
    total, what = 2 + 4 + draws, "the faithfulness check"  # the reference and clean runs, then each ablated run
    ref = reference(model, g.tokens[:n], seed=seed) if ablation == "mean" else None
    cost.report(progress, 1, total, what)
    every = everything(model, n)
    inside = graph_ablation(model, n, list(g.edges))
    outside = Ablation(every.edges & ~inside.edges, every.mlps & ~inside.mlps)
    top = g.ranked(k)
    # k random parts from every attention edge and MLP that can reach the prediction
    pool_edges, pool_mlps = every.edges.nonzero(), every.mlps.nonzero()  # (e, 3), (m, 2)
    gen = torch.Generator().manual_seed(seed)
    randoms = []
    for _ in range(draws):
        picked = torch.randperm(len(pool_edges) + len(pool_mlps), generator=gen)[: len(top)].tolist()
        randoms.append(
            Ablation.of(
                model.info.n_layers, n,
                [tuple(pool_edges[i].tolist()) for i in picked if i < len(pool_edges)],
                [tuple(pool_mlps[i - len(pool_edges)].tolist()) for i in picked if i >= len(pool_edges)],
            )
        )  # fmt: skip
    ablations = [nothing(model, n), every, outside, graph_ablation(model, n, top), *randoms]
    clean = clean_patterns(model, g.tokens[:n]) if frozen_patterns else None
    cost.report(progress, 2, total, what)
    logits = run_ablations(model, g.tokens, g.position, ablations, ref, clean, progress=lambda i: cost.report(progress, 2 + i, total, what))
    m = graph_metric(g.answer, g.wrong).value(logits).tolist()
    full, empty, kept, top_k, random_k = m[0], m[1], m[2], m[3], m[4:]
    span = full - empty
    share = (kept - empty) / span if abs(span) > 1e-9 else float("nan")
    top_drop = (full - top_k) / span if abs(span) > 1e-9 else float("nan")
    random_drop = sum((full - r) / span for r in random_k) / len(random_k) if random_k and abs(span) > 1e-9 else float("nan")
    answer_top1 = int(logits[2].argmax()) == g.answer
    survives = share == share and share >= min_share
    fill = ablation_reference(ablation)
    how = f"{ablation}-ablated" + (f" ({fill})" if ablation == "mean" else "")
    if survives:
        verdict = f"the graph keeps {share:.0%} of the metric with everything outside it {how}"
    else:
        verdict = (
            f"the graph does NOT survive its own check: with everything outside it {how} only {share:.0%} of "
            f"the metric is left (below {min_share:.0%}); lower the threshold to keep more of the model"
        )
    metric = "logit difference (answer − wrong)" if g.contrastive else "answer logit − mean logit"
    return Faithfulness(
        metric, ablation, fill, full, empty, kept, share, answer_top1, len(top), top_k, random_k, top_drop, random_drop, survives, verdict,
        backend=engine.backend(model).name,
    )  # fmt: skip


def ablation_reference(ablation: str) -> str:
    """What `ablation` puts in place of a removed part, in words: the graph's mean is over random-token runs (module doc: why),
    not the Intervene page's mean over held-out text (edit_values.mean_reference)."""
    if ablation == "mean":
        return f"mean over {REFERENCE_RUNS} random-token runs of the prompt's length"
    return "zero"


def quick_check(model: LoadedModel, n_tokens: int) -> bool:
    """Whether a faithfulness check (~20 forward passes) is cheap enough to run without being asked: a fraction of a second here."""
    return model.info.d_model * model.info.n_layers * n_tokens <= 2**18


def faithfulness_of(
    model: LoadedModel, prompt: str, position: int = -1, threshold: float = THRESHOLD, answer: int | None = None, wrong: int | None = None,
    ablation: str = "mean", k: int = 5, truncate: bool = False, progress=None,
) -> Faithfulness:  # fmt: skip
    """The faithfulness of the graph `build` makes with these arguments (plain values: a page can cache it by them)."""
    return faithfulness(model, build(model, prompt, position, threshold, answer, wrong, truncate), ablation, k, progress=progress)
