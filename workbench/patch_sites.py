"""The patching sites: which activations a sweep patches, their cells, and how the cells are planned into passes.

A *site* is a kind of activation (the residual stream before a block, a head's output, its queries,
its attention pattern...). Its *cells* are the grid a sweep fills: (layer, position) for the residual
stream, (layer, head) for a head at every position, (layer, head, position) for a head at one. Each
site knows its transformer-lens hook, the engine edit that patches a batch of cells at one layer, and
how attribution patching reduces a gradient to its cells, so that the exact sweep (patching.py), the
AtP/AtP* previews (preview.py) and the long-prompt plan (long.py) read one table.

Passes: the forward engine runs many patched runs in one batch, each joining at its own layer;
`plan_passes` groups the cells so, and `batch_size` keeps one pass within the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import memory_budget

# position-site batches each span 1/SPLIT of the prompt: shorter runs (causality), smaller matmuls
SPLIT = 8
BATCH = 64  # patched runs per pass, at most (fewer when one run's intermediates are large: see batch_size)


@dataclass(frozen=True)
class Site:
    """A kind of activation to patch: its hook, its cells, and how a batch of cells is patched.

    A cell is (layer, position), (layer, head) or (layer, head, position). Head sites without
    "position" in their axes patch the head at every position at once.
    """

    name: str
    description: str
    engine_site: str  # the engine's / transformer-lens's site (engine.SITE_HOOKS)
    axes: tuple[str, ...]  # the grid's axes, "layer" first
    kv: bool = False  # counts key/value heads (fewer under grouped-query attention)

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.{engine.SITE_HOOKS[self.engine_site]}"

    def shape(self, model: LoadedModel, n_tokens: int) -> tuple[int, ...]:
        i = model.info
        sizes = {"layer": i.n_layers, "head": i.n_kv_heads if self.kv else i.n_heads, "position": n_tokens}
        return tuple(sizes[a] for a in self.axes)

    def cells(self, model: LoadedModel, n_tokens: int) -> list[tuple[int, ...]]:
        """Every cell, in row-major order of the grid."""
        return [
            tuple(int(v) for v in index)
            for index in torch.cartesian_prod(*(torch.arange(n) for n in self.shape(model, n_tokens))).reshape(-1, len(self.axes))
        ]

    def edit(self, layer: int, cells: list[tuple[int, ...]], source: torch.Tensor, offset: int = 0) -> engine.Edit:
        """Batch row i gets cell i's slice of `source` (this layer's activation of the source run, no batch dim).

        `offset`: the patched runs start at this position (see engine.forward's `past`), so the
        edit's positions count from it.
        """
        pick = {a: torch.tensor([c[k] for c in cells], device=source.device) for k, a in enumerate(self.axes) if a != "layer"}
        position, head = pick.get("position"), pick.get("head")
        if self.engine_site == "pattern":  # source (head, query, key): the head's whole pattern
            value = source[head]
        elif head is None:  # residual-stream sites, source (pos, d_model)
            value = source[position]
        elif position is None:  # a head at every position, source (pos, head, d_head) -> (batch, pos, d_head)
            value = source[:, head].transpose(0, 1)
        else:
            value = source[position, head]
        position = None if position is None else position - offset
        return engine.Edit("replace", self.engine_site, layer, position=position, head=head, value=value)

    def reduce(self, effect: torch.Tensor) -> torch.Tensor:
        """One layer's attribution-patching effect (activation-shaped, no batch dim) summed to its cells."""
        if self.engine_site == "pattern":
            return effect.sum((-1, -2))  # (head, query, key) -> (head,)
        if "head" not in self.axes:
            return effect.sum(-1)  # (pos, d_model) -> (pos,)
        if "position" in self.axes:
            return effect.sum(-1).T  # (pos, head, d_head) -> (head, pos)
        return effect.sum((0, 2))  # (pos, head, d_head) -> (head,)


SITES = {
    s.name: s
    for s in (
        Site("resid_pre", "residual stream before each block, per layer × position", "resid_pre", ("layer", "position")),
        Site("attn_out", "attention output, per layer × position", "attn_out", ("layer", "position")),
        Site("mlp_out", "MLP output, per layer × position", "mlp_out", ("layer", "position")),
        Site("z", "each head's output, per layer × head (all positions)", "z", ("layer", "head")),
        Site("z_pos", "each head's output, per layer × head × position", "z", ("layer", "head", "position")),
        Site("q", "each head's queries, per layer × head", "q", ("layer", "head")),
        Site("q_pos", "each head's query, per layer × head × position", "q", ("layer", "head", "position")),
        Site("k", "each key/value head's keys, per layer × head", "k", ("layer", "head"), kv=True),
        Site("k_pos", "each key/value head's key, per layer × head × position", "k", ("layer", "head", "position"), kv=True),
        Site("v", "each key/value head's values, per layer × head", "v", ("layer", "head"), kv=True),
        Site("pattern", "each head's attention pattern, per layer × head", "pattern", ("layer", "head")),
    )
}


def site_named(site: str) -> Site:
    """The site of that name (a key of SITES), or InputError naming them."""
    if site not in SITES:
        raise InputError(f"unknown site '{site}': use one of {', '.join(SITES)}")
    return SITES[site]


def window_cells(s: Site, cells: list[tuple[int, ...]], window: tuple[int, int] | None, n_tokens: int) -> list[int]:
    """Indices of the cells to patch: all, or those whose position is in [start, stop) of `window`."""
    if window is None or "position" not in s.axes:
        return list(range(len(cells)))
    start, stop = window
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= n_tokens):
        raise InputError(f"the window of positions must satisfy 0 <= start < stop <= {n_tokens}, got {start}..{stop}")
    axis = s.axes.index("position")
    return [i for i, c in enumerate(cells) if start <= c[axis] < stop]


def plan_passes(s: Site, cells: list[tuple[int, ...]], per_batch: int, n_tokens: int, keep: list[int] | None = None) -> list[list[int]]:
    """Cells grouped into batched passes of at most `per_batch`, each sorted by layer.

    One pass holds the cells of every layer (each patched run joins the batch at its own layer);
    for sites with positions, a pass spans 1/SPLIT of the prompt, so that its runs can start at
    its first position (by causality nothing before it changes).
    """
    order = sorted(range(len(cells)) if keep is None else keep, key=lambda i: cells[i][0])  # by layer, stable
    groups = [order]
    if "position" in s.axes:
        axis, span = s.axes.index("position"), max(1, -(-n_tokens // SPLIT))
        groups = [[i for i in order if cells[i][axis] // span == g] for g in range(-(-n_tokens // span))]
    return [group[i : i + per_batch] for group in groups for i in range(0, len(group), per_batch) if group]


def batch_size(model: LoadedModel, n_tokens: int) -> int:
    """Patched runs per pass that keep one block's intermediates within the memory budget."""
    i = model.info
    per_run = 4 * n_tokens * (6 * i.d_model + 3 * i.d_mlp + 3 * i.n_heads * n_tokens)  # float32 bytes alive in one block
    return max(1, min(BATCH, memory_budget() // max(1, per_run)))
