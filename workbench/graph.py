"""The information-flow graph: which routes through the model made one prediction (Ferrando & Voita 2024).

Each step of the residual stream is a sum of parts, each part with its importance for the step's
update (graph_parts.py: the decomposition, exact and checked). The graph keeps the incoming edges of
a node above a threshold (0.04, the llm-transparency-tool's default), renormalises them and follows
them back from the chosen position's output to the embeddings, one step at a time: only the nodes on
the route are decomposed, a chunk of query positions at a time, so positions × positions × heads ×
d_model is never held for more than one chunk of one layer.

Contrastive mode (answer vs wrong, the paper's contrastive variant as read here): every whole and
part is measured along the direction that separates the two tokens' logits (the final norm's gain
times W_U[:, answer] − W_U[:, wrong]), so the route is the one that carries the logit difference.

The rooms beside this one: graph_parts.py (the decomposition), graph_nodes.py (what a node holds:
the lens there, its update's direct effect, an MLP's neurons), graph_faithfulness.py (the graph
checked by ablation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench import engine, lens
from workbench.errors import InputError
from workbench.graph_parts import graph_run, incoming, steps
from workbench.model import LoadedModel
from workbench.runs import check_position, check_token_ids, provenance
from workbench.tokens import token_labels

THRESHOLD = 0.04  # the llm-transparency-tool's default


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
