"""The engine's map functions of an intervention (engine.Edit("map", ..., fn=...)): data, so that an edit set's
compiled edits can be shown and compared. Each takes the slice of one site, (batch, pos, ...), and returns it edited:
`SetTo` sets a unit (ablate or clamp a head, an MLP's output, a neuron), `FeatureTo` sets an SAE feature, `AddAt` adds
a vector (steer), `Rescale` scales it (the information-flow graph's ablations, graph_faithfulness.py), `ZeroAblate` zeroes the stream
but BOS (sae_quality's loss recovered). The SAE's own (sae.FeatureClamp, sae_quality.Splice) stay with the SAE: they
call its encoder and decoder, and this module reads sae.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import sae


def _pick(n: int, positions: tuple[int, ...] | None, limit: int | None = None) -> torch.Tensor:
    """(k,) the positions of a run of n that an edit touches (chosen ones that exist, up to `limit`)."""
    top = n if limit is None else min(n, limit)
    chosen = range(top) if positions is None else sorted(p for p in set(positions) if p < top)
    return torch.tensor(list(chosen), dtype=torch.long)


def _values_at(x: torch.Tensor, positions, values: torch.Tensor, per_position: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos (k,), the value there): a per-position value (one per position of a resampled run) read at the chosen ones."""
    pos = _pick(x.shape[1], positions, len(values) if per_position else None).to(x.device)
    return pos, (values[pos.cpu()] if per_position else values).to(x)


@dataclass(frozen=True, eq=False)
class SetTo:
    """slice (batch, pos, ...) -> the same with unit `index` of its last axis (None: all of it) set to `values`.

    `values`: one value for every position (shape of the unit), or one per position (pos, ...) when
    `per_position` (resample: positions past its end are left as they are).
    """

    values: torch.Tensor
    per_position: bool = False
    index: int | None = None
    positions: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        pos, v = _values_at(x, self.positions, self.values, self.per_position)
        if self.index is None:
            x[:, pos] = v  # (batch, k, ...) <- (k, ...) or (...)
        else:
            x[:, pos, self.index] = v  # (batch, k) <- (k,) or ()
        return x

    def __repr__(self) -> str:
        return f"SetTo(index={self.index}, per_position={self.per_position}, positions={self.positions})"


@dataclass(frozen=True, eq=False)
class FeatureTo:
    """slice (batch, pos, d_in) -> the same with SAE feature `feature` set to `values`: x + (v − a_f(x)) W_dec[f].

    As sae.FeatureClamp, with a value per position when `per_position` (a resampled feature).
    """

    sae: sae.SAE
    feature: int
    values: torch.Tensor  # () or (pos,)
    per_position: bool = False
    positions: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        pos, value = _values_at(x, self.positions, self.values, self.per_position)  # value: () or (k,)
        x[:, pos] = sae.FeatureClamp(self.sae, self.feature, value)(x[:, pos])  # (batch, k, d_in)
        return x

    def __repr__(self) -> str:
        return f"FeatureTo(feature={self.feature}, sae={self.sae.hook_name}, per_position={self.per_position})"


@dataclass(frozen=True, eq=False)
class AddAt:
    """slice (batch, pos, d_model) -> the same plus `vector` ((d_model,), or (batch, d_model): one per row) at `positions`."""

    vector: torch.Tensor
    positions: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vector.to(x)
        v = v[:, None] if v.ndim == x.ndim - 1 else v  # per row: (batch, 1, d_model); a hook_z row (head, d_head) broadcasts
        if self.positions is None:
            return x + v
        # a 0/1 weight per position rather than an indexed write: one expression, and a position named twice adds once
        at = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)  # (pos,)
        at[_pick(x.shape[1], self.positions).to(x.device)] = 1
        return x + at.view(1, -1, *[1] * (x.ndim - 2)) * v

    def __repr__(self) -> str:
        return f"AddAt(norm={float(self.vector.norm()):.3g}, positions={self.positions})"


@dataclass(frozen=True, eq=False)
class Rescale:
    """A map edit's function: the slice times `keep` plus `fill` (broadcast); data, so an edit set can be shown."""

    keep: torch.Tensor
    fill: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.keep.to(x.device, x.dtype)
        return x if self.fill is None else x + self.fill.to(x.device, x.dtype)


@dataclass(frozen=True)
class ZeroAblate:
    """An engine `map` function: the stream set to zero, BOS (position 0) kept: loss recovered's 0."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (batch, pos, d_in)
        out = x.clone()
        out[:, 1:] = 0.0
        return out
