"""Response fidelity: how a transcoder's local response to a change of its input matches the real MLP's.

The attribution graph holds each error node fixed, so it predicts an intervention as if the real MLP reacted to a
change of its input as the transcoder does. It does not: the real MLP's Jacobian J_mlp(x) differs from the
transcoder's J_tc(x), which (its TopK set held, as the graph holds it) is the skip path plus the active features'
encoder → decoder:

    J_tc(x) v = v W_skip + ((v W_enc) ⊙ m(x)) W_dec        m(x): the features active at x, (d_sae,)
    J_mlp(x) v = (act'(x W_in + b_in) ⊙ (v W_in)) W_out      the engine's MLP, by forward-mode AD (torch.func.jvp)

Directions v are the data's own: v = x[perm] - x, the difference between two real MLP inputs, as an intervention
moves an MLP's input from one real state towards another. On held-out tokens,

    response explained = 1 - Σ|J_mlp v - J_tc v|² / Σ|J_mlp v - mean|²

is the card's measure (train/transcoders.quality), and λ · mean|J_mlp v - J_tc v|² / var(J_mlp v) on each training
batch is the Jacobian-matching term a recipe may add (TranscoderConfig.jacobian).
"""

from __future__ import annotations

import torch

from workbench import engine
from workbench.transcoder import Transcoder


def mlp(L: engine.Layer, x: torch.Tensor) -> torch.Tensor:
    """(..., d_model) MLP input (after its norm) -> (..., d_model) the MLP's output: the engine's own arithmetic."""
    return engine.mlp_output(L, engine.mlp_hidden(L, x))


def mlp_jvp(L: engine.Layer, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., d_model) J_mlp(x) v: the real MLP's response to the change v of its input x, exact (forward-mode AD)."""
    with torch.no_grad():
        return torch.func.jvp(lambda z: mlp(L, z), (x,), (v,))[1]


def active(tc: Transcoder, x: torch.Tensor) -> torch.Tensor:
    """(..., d_sae) bool: the features active at x, the set the graph holds."""
    return tc.encode(x) > 0


def tc_jvp(W_enc: torch.Tensor, W_dec: torch.Tensor, W_skip: torch.Tensor | None, mask: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(batch, d_out) J_tc v with the active set `mask` (batch, d_sae) held: the skip path plus the active features'
    encoder → decoder; differentiable in the weights (training) as well."""
    out = ((v @ W_enc) * mask) @ W_dec  # (batch, d_out)
    return out if W_skip is None else out + v @ W_skip


def directions(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(n, d) v = x[perm] - x: each input moved to another real input of the same batch."""
    return x[torch.randperm(len(x), generator=gen)] - x


class ResponseSums:
    """Running sums for `response explained` over held-out chunks of one layer."""

    def __init__(self):
        self.err, self.total, self.sq, self.n = 0.0, 0.0, 0.0, 0

    def add(self, j_mlp: torch.Tensor, j_tc: torch.Tensor) -> None:
        """j_mlp, j_tc: (n, d_out) the two responses to the same directions."""
        self.err += float(((j_mlp.double() - j_tc.double()) ** 2).sum())
        self.total = self.total + j_mlp.double().sum(0)
        self.sq += float((j_mlp.double() ** 2).sum())
        self.n += len(j_mlp)

    def explained(self) -> float:
        return 1 - self.err / (self.sq - float((self.total**2).sum()) / self.n)


def responses(L: engine.Layer, tc: Transcoder, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(J_mlp v, J_tc v), each (n, d_out), for held-out MLP inputs x (n, d_model) and v = `directions`(x)."""
    v = directions(x, gen)
    with torch.no_grad():
        return mlp_jvp(L, x, v), tc_jvp(tc.W_enc, tc.W_dec, tc.W_skip, active(tc, x), v)


def tc_jvp_topk(W_enc: torch.Tensor, W_dec: torch.Tensor, W_skip: torch.Tensor | None, top, v: torch.Tensor) -> torch.Tensor:
    """`tc_jvp` in training's terms: `top` (values, indices) (batch, k) the TopK pre-activations, the active set those
    with a positive value; reads only the k columns and rows in use, as training's decoding does (train/sae.topk_decode)."""
    on = (top.values > 0).to(v)  # (batch, k)
    along = torch.einsum("bd,bkd->bk", v, W_enc.T[top.indices])  # (batch, k): each active feature's pre-activation change
    out = ((along * on)[..., None] * W_dec[top.indices]).sum(1)  # (batch, d_out)
    return out if W_skip is None else out + v @ W_skip
