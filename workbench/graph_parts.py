"""The information-flow graph's decomposition (Ferrando & Voita 2024): each step of the residual stream as a sum of
parts, and each part's importance for the whole.

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

The weights (W_O, b_O) come from engine.block_weights. The routes these importances make are followed in
graph.py; graph_nodes.py reads one node; graph_faithfulness.py checks a graph by ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import engine, lens
from workbench.model import LoadedModel
from workbench.runs import Run, has_hook, hook_names, run_prompt

CHUNK_ELEMENTS = 2**24  # floats per chunk of (query, key, head, d_model) parts: 64 MB
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
