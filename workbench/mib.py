"""Circuits in MIB's JSON: the format of the MIB circuit-localization track and of its EAP-IG library.

A circuit there is a set of edges of the model's graph (MIB's `eap.graph.Graph.to_json` /
`from_json`):

    {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 128},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": true}, "m0": {...}, ..., "logits": {...}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": true}, "a0.h0->m0": {...}, "m1->logits": {...}}}

Nodes are the input (the embeddings), each head `a{L}.h{H}` (its output), each MLP `m{L}` and the
logits. An edge into a head names the head's input it feeds, `<q>`, `<k>` or `<v>`. The graph is
the workbench's own (edges.py): a sender writes before its receiver reads, and in a parallel block
a head does not feed its own layer's MLP, as in MIB. Scores written here are the workbench's
normalised edge effects (1 = the whole clean − corrupted restoration); MIB reads any scores.

`export` takes edge effects (the Methods page's EAP, EAP-IG or exact edge scores) or a set of
edges (the Patching page's path-patching circuit); `read` turns a file back into edges and the
circuit's mask, which `edges.circuit_faithfulness` scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import engine
from workbench.edges import Edge, EdgeEffects, Receiver, Sender, edges_of
from workbench.errors import InputError


def node_name(unit: Sender | Receiver) -> str:
    """MIB's name of a sender or a receiver's node: input, a{L}.h{H}, m{L}, logits."""
    if unit.kind == "embed":
        return "input"
    if unit.kind == "logits":
        return "logits"
    if unit.kind == "mlp":
        return f"m{unit.layer}"
    return f"a{unit.layer}.h{unit.head}"


def edge_name(e: Edge) -> str:
    """MIB's name of an edge: "a0.h1->m1", or "input->a1.h0<q>" into a head's queries, keys or values."""
    into = f"<{e.receiver.kind}>" if e.receiver.kind in ("q", "k", "v") else ""
    return f"{node_name(e.sender)}->{node_name(e.receiver)}{into}"


def graph_cfg(w: engine.Weights) -> dict:
    """MIB's graph config of the model: what its Graph.from_model needs."""
    return {"n_layers": w.n_layers, "n_heads": w.n_heads, "parallel_attn_mlp": bool(w.parallel), "d_model": int(w.W_E.shape[1])}


def _check_heads(w: engine.Weights) -> None:
    if w.n_kv_heads != w.n_heads:
        raise InputError(
            f"MIB's graph gives every query head its own key and value input; this model groups {w.n_heads} query heads over "
            f"{w.n_kv_heads} key/value heads, so its circuits cannot be written in MIB's format"
        )


@dataclass(frozen=True)
class Circuit:
    """Every edge of the model's graph with a score, and which edges are in the circuit."""

    cfg: dict
    edges: tuple[Edge, ...]  # edges.edges_of's order
    scores: torch.Tensor  # (edge,) float
    in_graph: torch.Tensor  # (edge,) bool
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def keep(self) -> torch.Tensor:
        """(1, edge) the mask edges.circuit_faithfulness reads."""
        return self.in_graph[None]

    @property
    def size(self) -> int:
        return int(self.in_graph.sum())

    def document(self) -> dict:
        """The circuit as MIB's JSON (a mapping)."""
        nodes: dict[str, dict] = {"input": {"in_graph": False}}
        for e in self.edges:
            for unit in (e.sender, e.receiver):
                nodes.setdefault(node_name(unit), {"in_graph": False})
        for e, kept in zip(self.edges, self.in_graph.tolist(), strict=True):
            if kept:
                nodes[node_name(e.sender)]["in_graph"] = nodes[node_name(e.receiver)]["in_graph"] = True
        nodes["logits"] = {"in_graph": True}  # MIB: the logits node is always in the graph
        edges = {
            edge_name(e): {"score": float(s), "in_graph": bool(k)} for e, s, k in zip(self.edges, self.scores, self.in_graph, strict=True)
        }
        return {"cfg": dict(self.cfg), "nodes": nodes, "edges": edges}

    def to_json(self) -> str:
        return json.dumps(self.document())

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path


def from_effects(w: engine.Weights, effects: EdgeEffects, top: int) -> Circuit:
    """The circuit of the `top` edges by |effect| (as the scoreboard's curves build them), every edge scored."""
    _check_heads(w)
    if list(effects.edges) != edges_of(w):
        raise InputError("these edge effects belong to another model (their edges differ from this model's graph)")
    if not 0 <= top <= len(effects.edges):
        raise InputError(f"a circuit keeps 0 to {len(effects.edges)} edges, got {top}")
    keep = torch.zeros(len(effects.edges), dtype=torch.bool)
    keep[effects.magnitude.argsort(descending=True)[:top]] = True
    return Circuit(graph_cfg(w), effects.edges, effects.effect.float().cpu(), keep, {"method": effects.method, "top": top})


def from_edges(w: engine.Weights, chosen: list[Edge], scores: dict[Edge, float] | None = None) -> Circuit:
    """The circuit of the `chosen` edges (scores 1 where not given, 0 for the rest)."""
    _check_heads(w)
    every = edges_of(w)
    unknown = [e.label for e in chosen if e not in set(every)]
    if unknown:
        raise InputError(f"not edges of this model's graph: {', '.join(unknown[:4])}")
    chosen_set = set(chosen)
    keep = torch.tensor([e in chosen_set for e in every], dtype=torch.bool)
    given = scores or {}
    values = torch.tensor([float(given.get(e, 1.0 if e in chosen_set else 0.0)) for e in every])
    return Circuit(graph_cfg(w), tuple(every), values, keep)


def read(source: str | Path | dict, w: engine.Weights) -> Circuit:
    """The circuit in MIB's JSON (a file, its text's mapping) on this model's graph; an InputError naming what does not fit.

    Edges the file leaves out are not in the circuit (score 0); an edge name this model's graph
    does not have is refused, as is a config of another shape.
    """
    _check_heads(w)
    if isinstance(source, dict):
        doc = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"no circuit file at {path}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path.name} is not MIB circuit JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("cfg", "nodes", "edges")):
        raise InputError("a MIB circuit is a JSON object with 'cfg', 'nodes' and 'edges'")
    cfg, ours = doc["cfg"], graph_cfg(w)
    for key in ("n_layers", "n_heads", "parallel_attn_mlp"):
        if key in cfg and cfg[key] != ours[key]:
            raise InputError(f"the circuit is for a model with {key} = {cfg[key]}, this model has {ours[key]}")
    every = edges_of(w)
    index = {edge_name(e): i for i, e in enumerate(every)}
    if not isinstance(doc["edges"], dict):
        raise InputError("a MIB circuit's 'edges' maps edge names ('a0.h0->m1') to {score, in_graph}")
    unknown = [name for name in doc["edges"] if name not in index]
    if unknown:
        raise InputError(f"the circuit names {len(unknown)} edge(s) this model's graph does not have, e.g. {unknown[0]!r}")
    scores, keep = torch.zeros(len(every)), torch.zeros(len(every), dtype=torch.bool)
    for name, item in doc["edges"].items():
        i = index[name]
        if isinstance(item, dict):
            score = item.get("score")
            scores[i] = float("nan") if score is None else float(score)
            keep[i] = bool(item.get("in_graph", False))
        else:  # some MIB tools write a bare in_graph boolean
            keep[i] = bool(item)
    return Circuit(dict(cfg), tuple(every), scores, keep)
