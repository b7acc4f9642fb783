"""Which estimate to trust on this model and task: each method's ranking against exact patching.

For a task (prompt pairs), every method ranks the nodes (AtP, AtP*) or the edges (EAP, EAP-IG) by
the size of their effect, and exact patching (methods.exact_nodes, edges.exact_edges) gives the
true ranking. Per method:

- **Spearman**: rank correlation of the method's magnitudes with the exact magnitudes;
- **recall@10**: the share of the exact top 10 that the method's top 10 holds (top k, when only
  k < 10 components have any effect); effects below a millionth of the full restoration count as
  zero (float noise) in both measures;
- **faithfulness** of circuits of growing size, after the MIB benchmark's circuit-performance
  curves: the method's top-k nodes patched together (nodes), or its top-k edges kept as a circuit
  (edges.circuit_faithfulness), the metric normalised so that 0 is the base run and 1 the full
  restoration; `area` is the area under that curve over the circuit's share of all nodes or edges;
- **time**, and the forward and backward passes per prompt pair.

The exact ranking's own curve is the reference: a method near it builds circuits as good as the
exact ranking's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import cost, edges, engine, methods, tasks
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import encode
from workbench.tasks import Pair, check_pair

TASKS = ("induction pairs", "typed pairs")
K = 10  # recall@K
# Effects below this share of the full restoration are float noise: ranked as ties at zero, so that the many components
# that do nothing (the answer-key model: one node does everything) do not turn the rank correlation into noise
FLOOR = 1e-6
MIB_SHARES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # the benchmark's circuit sizes, as shares of all edges


def task_pairs(model: LoadedModel, task: str, n_pairs: int = 8, text: str = "", seed: int = 0) -> list[Pair]:
    """The task's prompt pairs: generated copying pairs (tasks.induction_pairs), typed ones (tasks.parse_pairs), or a
    task dataset shipped beside the model (tasks.dataset_pairs)."""
    if task == "induction pairs":
        pairs = tasks.induction_pairs(model, n_pairs, seed=seed)
        try:
            for p in pairs:
                check_pair(model, p)
        except InputError as err:  # random tokens of a byte-level vocabulary: control bytes, merges at the seams
            raise InputError(
                f"generated copying pairs need a vocabulary of whole words, as the circuits and answer-key models have ({err}); "
                "on this model, type the pairs instead"
            ) from err
        return pairs
    if task == "typed pairs":
        return tasks.parse_pairs(model, text)
    if task in tasks.available(Path(model.info.source)):
        return tasks.dataset_pairs(model, task, n_pairs)
    raise InputError(f"unknown task '{task}': use one of {', '.join(tasks_of(model))}")


def tasks_of(model: LoadedModel) -> tuple[str, ...]:
    """The tasks the scoreboard can score on this model: generated copying pairs, typed pairs, and the task
    datasets shipped beside its weights (the stories model's ioi, pronoun, ...)."""
    return (*TASKS, *tasks.available(Path(model.info.source)))


def ranks(x: torch.Tensor) -> torch.Tensor:
    """(n,) ranks from 1, ties sharing their mean rank (as scipy.stats.rankdata)."""
    order = x.argsort()
    r = torch.empty(len(x), dtype=torch.float64)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in x.unique():
        same = x == v
        if same.sum() > 1:
            r[same] = r[same].mean()
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two (n,) score vectors."""
    x, y = ranks(a), ranks(b)
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else float("nan")


def recall_at(k: int, estimate: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the k largest `exact` magnitudes among the k largest `estimate` ones; k at most the count of non-zero exact entries."""
    k = min(k, max(1, int((exact != 0).sum())))
    return len(set(estimate.argsort(descending=True)[:k].tolist()) & set(exact.argsort(descending=True)[:k].tolist())) / k


def edge_sizes(n: int) -> list[int]:
    """Circuit sizes for n edges: 0, the first ten, and the MIB shares."""
    return sorted({0, *range(1, min(n, 10) + 1), *(max(1, round(n * s)) for s in MIB_SHARES)})


def floored(magnitude: torch.Tensor) -> torch.Tensor:
    """(n,) magnitudes with float noise (below FLOOR) set to zero."""
    return magnitude.masked_fill(magnitude.abs() < FLOOR, 0.0)


def area(sizes: torch.Tensor, faithfulness: torch.Tensor, n: int) -> float:
    """Area under faithfulness over the circuit's share of all n nodes or edges (trapezoids)."""
    return float(torch.trapezoid(faithfulness, sizes.double() / n))


def node_faithfulness(pair: methods.PreparedPair, nodes: list[methods.Node], order: list[int], sizes: list[int]) -> torch.Tensor:
    """(size,) normalised metric with the top-k nodes of `order` patched together, for each k in `sizes`: one engine pass."""
    w = pair.weights
    with torch.no_grad():
        source = pair.run("source", capture=methods.site_names(w, "q", "k", "v", "mlp_out")).captured
        edits = []
        for rank, i in enumerate(order):
            rows = torch.tensor([j for j, s in enumerate(sizes) if rank < s], dtype=torch.long)
            if len(rows):
                edits.append(methods.node_edit(nodes[i], source, rows))
        value = pair.metric(pair.run("base", edits, batch=len(sizes)).logits).cpu()
    return (value - pair.base_value) / pair.span


@dataclass(frozen=True)
class Curve:
    method: str
    level: str  # "nodes" or "edges"
    sizes: torch.Tensor  # (size,) circuit sizes
    faithfulness: torch.Tensor  # (size,) mean over pairs; 0 base run, 1 full restoration
    total: int  # nodes or edges in all


@dataclass(frozen=True)
class Scoreboard:
    task: str
    n_pairs: int
    direction: str
    rows: tuple[dict, ...]  # per method: level, method, spearman, recall@10, area, seconds, forward, backward
    curves: tuple[Curve, ...]
    nodes: dict[str, methods.NodeEffects] = field(repr=False)
    edges: dict[str, edges.EdgeEffects] = field(repr=False)
    seconds: float = 0.0  # the whole scoreboard
    provenance: dict = field(default_factory=dict, repr=False)

    def table(self) -> list[dict]:
        return [dict(r) for r in self.rows]


def estimate(model: LoadedModel, pairs: list[Pair], steps: int = 5) -> cost.Estimate:
    """What `run` will cost, before it runs: every method's passes plus exact patching of every node and edge.

    Per pair of n tokens: each method's own forward and backward passes (AtP 2 + 1, AtP* 2 + L + 1,
    EAP 2 + 1, EAP-IG 2 + steps forward and steps backward), one patched row per node and per edge,
    and the faithfulness curves (3 methods × (nodes + 1) rows, 3 × (2L + 2) passes per edge size).
    """
    w = engine.weights_of(model)
    n_nodes, n_edges, layers = len(methods.nodes_of(w)), len(edges.edges_of(w)), model.info.n_layers
    sizes = len(edge_sizes(n_edges))
    forward = 2 + n_nodes + 2 + 2 + (2 + n_edges) + 2 + (2 + steps) + 3 * (1 + n_nodes + 1) + 3 * (2 + (2 * layers + 2) * sizes)
    backward = 1 + (layers + 1) + 1 + steps
    n = max(len(encode(model, p.clean)[0]) for p in pairs)
    calls = len(pairs) * (20 + n_nodes // methods.ROWS + n_edges // edges.ROWS + 6 * (2 * layers + 2))
    return cost.estimate(model, "the methods scoreboard", n, passes=len(pairs) * forward, backward=len(pairs) * backward, calls=calls)


def run(
    model: LoadedModel,
    prompt_pairs: list[Pair],
    task: str = "prompt pairs",
    direction: str = "denoising",
    steps: int = 5,
    progress: Callable[[int, int], bool | None] | None = None,
    *,
    metric: str = "logit difference",
) -> Scoreboard:
    """Every method on the task's pairs, reading the metric of kind `metric`, scored against exact patching (module
    docstring).

    `progress(done, total)` is called after every engine pass of the exact sweeps and after each
    method; returning False cancels (an InputError saying so).
    """
    t = time.perf_counter()
    pairs = methods.prepare_all(model, prompt_pairs, direction, metric=metric)
    w = pairs[0].weights
    total = (
        len(pairs) * (-(-len(methods.nodes_of(w)) // methods.ROWS) + -(-len(edges.edges_of(w)) // edges.ROWS)) + 6 + 6
    )  # the sweeps' passes, the six methods, the six curves
    done_units = 0

    def tick() -> None:
        nonlocal done_units
        done_units += 1
        if progress is not None and progress(min(done_units, total), total) is False:
            raise InputError("the methods scoreboard was cancelled")

    jobs: list[tuple[str, Callable]] = [
        ("exact", lambda: methods.exact_nodes(model, pairs, tick=tick)),
        ("AtP", lambda: methods.atp(model, pairs)),
        ("AtP*", lambda: methods.atp_star(model, pairs)),
        ("exact edges", lambda: edges.exact_edges(model, pairs, tick=tick)),
        ("EAP", lambda: edges.eap(model, pairs)),
        ("EAP-IG", lambda: edges.eap_ig(model, pairs, steps)),
    ]
    done: dict[str, object] = {}
    for name, job in jobs:
        done[name] = job()
        tick()
    node_results = {m: done[m] for m in ("exact", "AtP", "AtP*")}
    edge_results = {"exact": done["exact edges"], "EAP": done["EAP"], "EAP-IG": done["EAP-IG"]}
    rows, curves = [], []
    for level, results in (("nodes", node_results), ("edges", edge_results)):
        truth = floored(results["exact"].magnitude)
        items = list(results["exact"].nodes if level == "nodes" else results["exact"].edges)
        n = len(items)
        sizes = list(range(n + 1)) if level == "nodes" else edge_sizes(n)
        for method, r in results.items():
            order = r.magnitude.argsort(descending=True).tolist()
            if level == "nodes":
                curve = torch.stack([node_faithfulness(p, items, order, sizes) for p in pairs]).mean(0)
            else:
                keep = torch.zeros(len(sizes), n, dtype=torch.bool)
                for j, s in enumerate(sizes):
                    keep[j, order[:s]] = True
                curve = torch.stack([edges.circuit_faithfulness(p, items, keep) for p in pairs]).mean(0)
            tick()
            size_t = torch.tensor(sizes)
            curves.append(Curve(method, level, size_t, curve, n))
            rows.append(
                dict(
                    level=level, method=method, spearman=spearman(floored(r.magnitude), truth), **{f"recall@{K}": recall_at(K, floored(r.magnitude), truth)},
                    area=area(size_t, curve, n), seconds=r.seconds, forward=r.forward, backward=r.backward,
                )
            )  # fmt: skip
    return Scoreboard(
        task, len(pairs), direction, tuple(rows), tuple(curves), node_results, edge_results, time.perf_counter() - t,
        methods.pairs_provenance(model, pairs, "scoreboard", task=task, steps=steps),
    )  # fmt: skip
