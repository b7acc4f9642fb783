"""How an attribution graph is built (its config) and what it holds, planned before its rows are computed.

The rows of direct edges are the graph's largest part on a long prompt: (computed features +
logits) × (active features + errors + tokens) floats. `plan_graph` says before they are computed
how many feature rows fit the memory budget (runs.memory_budget), how many targets go into one
backward pass, and the peak it expects (long.py plans the other views).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench import engine
from workbench.runs import memory_budget


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
    grads = batch * per_target_bytes(w, P) + f * batch * n_cols * 2
    adjacency = f * n * n
    assembly = buffer + adjacency + 3 * f * ASSEMBLY_ROWS * n_cols
    prune_phase = adjacency + 2 * n * n + f * m * n * 8 + 8 * m * n
    return frozen + keep + max(buffer + grads, assembly, prune_phase)


ASSEMBLY_ROWS = 64  # rows of the buffer copied into the adjacency at a time


def per_target_bytes(w: engine.Weights, n_pos: int) -> int:
    """Bytes one target adds to a backward pass of the frozen model: (4 L + 6) floats of (pos, d_model) (measured with
    torch's profiler: 13 of them at 2 layers, 28 at 6: the L + 1 gradients, what each layer saves for the backward pass,
    the product with the error nodes)."""
    d = w.W_E.shape[1]
    return 4 * n_pos * d * (4 * w.n_layers + 6)


def batch_size(w: engine.Weights, n_pos: int, d_sae: int, cfg: GraphConfig, budget: int) -> int:
    """Targets per backward pass: cfg.batch, fewer where cfg.budget_bytes or a quarter of the memory budget asks."""
    return max(1, min(cfg.batch, min(cfg.budget_bytes, budget // 4) // max(1, per_target_bytes(w, n_pos))))


def plan_graph(
    w: engine.Weights, n_pos: int, n_active: int, d_sae: int, cfg: GraphConfig = CONFIG, budget: int | None = None, n_logit: int = 10
) -> GraphPlan:
    """The graph's plan at n_pos tokens: as many feature rows as cfg.max_features asks, fewer where the budget
    (runs.memory_budget, WORKBENCH_MEMORY_MB) would be exceeded; `fits` is False when not even no rows fit."""
    budget = memory_budget() if budget is None else budget
    batch = batch_size(w, n_pos, d_sae, cfg, budget)
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
