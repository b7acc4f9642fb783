"""Pruning an attribution graph, as the paper and circuit-tracer do, and the graph's two scores.

The adjacency's absolute values are normalised per target (each row sums to 1), a node's influence
is the sum over paths to the logits weighted by the logits' probabilities (A + A² + ..., which
ends: the graph has no cycles), and the most influential feature nodes up to `node_threshold` (0.8)
of the total are kept, then edges up to `edge_threshold` (0.98) of the edge influence. Replacement
score: the share of the tokens' and errors' influence that is the tokens'; completeness: the
influence-weighted share of every node's input that does not come from error nodes.
"""

from __future__ import annotations

import torch

from workbench.errors import InputError


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


def spread(R: torch.Tensor, row_abs: torch.Tensor, prod: torch.Tensor, block: int = 64) -> torch.Tensor:
    """(columns,) prod @ normalize(R), read a block of rows at a time (no normalised copy of R)."""
    out = torch.zeros(R.shape[1])
    scale = prod / row_abs.clamp(min=1e-10)  # (rows,)
    for s in range(0, len(R), block):
        p = scale[s : s + block]
        live = p != 0
        if live.any():
            out += p[live] @ R[s : s + block][live].abs()
    return out
