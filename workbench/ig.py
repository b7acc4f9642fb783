"""Integrated gradients that stop as soon as they add up: Gauss-Legendre rules of growing size.

Integrated gradients attribute f(x) − f(b) to the inputs as (x − b) · ∫₀¹ ∇f(b + α(x − b)) dα;
the attributions add up to f(x) − f(b) exactly only when the integral is exact (completeness),
and the gap is the quadrature's error. captum evaluates the gradient at a fixed number of points
(50 Gauss-Legendre nodes by default), whatever the model and prompt need.

Here f(x) and f(b) are computed first (one forward pass of two rows, no gradient), then the
integral with an n-point Gauss-Legendre rule, n = 8, 16, 32, ...: the first rule whose
completeness error |Σ attributions − (f(x) − f(b))| is at most `tolerance` × |f(x) − f(b)| is
kept. Gauss-Legendre is exact for polynomials of degree 2n − 1; on the shipped English model 8
nodes reach 1% on most prompts and 16 on every one we tried (a nested Clenshaw-Curtis rule needed
17 nodes on most, so it was not faster). Gradients are computed `batch` points at a time (long
prompts: as many as the memory budget allows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nodes (n,) in (0, 1), weights (n,) summing to 1) of the n-point Gauss-Legendre rule on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1]
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)


@dataclass(frozen=True)
class Integral:
    """Integrated gradients of one input, and how the quadrature got there."""

    attributions: torch.Tensor  # same shape as the input: (x − b) ⊙ ∫ ∇f
    f_input: float  # f(x)
    f_baseline: float  # f(b)
    error: float  # |Σ attributions − (f(x) − f(b))|, the completeness error
    points: int  # gradient evaluations, every rule tried together
    levels: list[tuple[int, float]]  # (nodes, relative completeness error) of each rule tried

    @property
    def relative_error(self) -> float:
        return self.error / max(abs(self.f_input - self.f_baseline), 1e-12)


def integrated_gradients(
    f: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    tolerance: float = 0.01,
    max_points: int = 256,
    batch: int = 64,
    first: int = 8,
) -> Integral:
    """Integrated gradients of f (batch of inputs (b, ...) -> (b,)) at `inputs` (1, ...) from `baseline` (1, ...).

    Doubles the Gauss-Legendre rule from `first` nodes until the relative completeness error is
    at most `tolerance` or the next rule would use more than `max_points` nodes.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be between 0 and 1, got {tolerance}")
    diff = (inputs - baseline).detach()  # (1, ...)
    with torch.no_grad():
        f_input, f_base = f(torch.cat([inputs.detach(), baseline.detach()])).double().cpu().tolist()
    gap = f_input - f_base
    shape = (-1,) + (1,) * (inputs.ndim - 1)
    n, levels, used = min(first, max_points), [], 0
    while True:
        nodes, weights = gauss_legendre(n)
        total = torch.zeros(inputs.shape[1:], dtype=torch.float64)  # Σ w ∇f · (x − b), per input element
        for start in range(0, n, batch):
            a = nodes[start : start + batch].to(inputs.dtype).to(inputs.device)  # (b,)
            points = (baseline.detach() + a.view(shape) * diff).requires_grad_(True)  # (b, ...)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(f(points).sum(), points)
            w = weights[start : start + batch].view(shape)
            total += (w * (grad * diff).double().cpu()).sum(0)
        used += n
        error = abs(float(total.sum()) - gap)
        relative = error / max(abs(gap), 1e-12)
        levels.append((n, relative))
        if relative <= tolerance or 2 * n > max_points:
            return Integral(total.to(inputs.dtype)[None], f_input, f_base, error, used, levels)
        n *= 2
