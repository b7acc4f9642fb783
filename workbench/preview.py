"""AtP* as the Patching page's preview: every cell of a site estimated in a fixed number of passes.

An exact sweep (patching.sweep) patches each cell of a site in its own run. The preview estimates
them all at once from the base run's gradient (the run being patched: corrupted for denoising):
plain attribution patching (AtP) takes effect ≈ (source − base activation) · ∂metric/∂activation.
AtP* (Kramár et al. 2024, arXiv 2403.00745; methods.py explains both fixes on nodes) adds, per cell:

- the **QK fix** for query and key cells: a head's queries (or a key/value head's keys) from the
  source run change its attention pattern, which a saturated softmax's gradient hides. The head's
  pattern is recomputed exactly with them (methods.attention_pattern), and the pattern's change is
  multiplied by ∂metric/∂pattern: exact up to the pattern, linear only after it. Per position
  (q_pos, k_pos), a query at one position changes one row of the pattern, a key one column of the
  scores (every row's softmax then renormalises);
- **GradDrop** for every site: L more backward passes, the ℓ-th with no gradient through layer ℓ's
  attention and MLP outputs; a cell is ranked by max(|AtP|, Σ_ℓ |AtP_ℓ| / (L − 1)), so that a cell
  whose direct and indirect effects cancel still shows up. The signed estimate (`values`) is the
  QK-fixed one; GradDrop only changes the ranking (`PatchResult.magnitude`).

Cost per sweep, whatever the number of cells: the source run's forward, the base run's forward and
1 (AtP) or L + 1 (AtP*) backward passes through it (`PatchResult.forward` / `backward` count them).
Both run on the forward engine, checked against the model's own logits first; where the engine
cannot run the model, the preview is plain attribution patching through the model's hooks, and
its note says so. `recall` scores a preview against the exact sweep: the share of the exact top k
cells among the preview's top k.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from workbench import engine, methods, patching, scoreboard
from workbench.errors import InputError
from workbench.long import LONG_TOKENS
from workbench.model import LoadedModel
from workbench.patch_sites import Site, site_named
from workbench.runs import provenance, run_prompt
from workbench.tasks import Pair, check_pair

PREVIEW_METHODS = ("AtP*", "AtP")  # the first is the default; preview_sweep's `method` annotation names them too
K = 5  # recall@K: the page exact-checks the preview's top 5 cells


def fixed_patterns(pair: methods.PreparedPair, kind: str, base: dict, source: dict) -> dict[int, torch.Tensor]:
    """{layer: (head, query, key)} every head's pattern with its queries (kind "q") or keys ("k") from the source run.

    `base`, `source`: hook name -> activation without the batch dim. A head's pattern reads only its
    own queries and its key/value head's keys, so row h is exactly head h's pattern when its query
    cell (or its key/value head's key cell) is patched: the QK fix's exact softmax.
    """
    w = pair.weights
    out = {}
    for layer in range(w.n_layers):
        q, k = (f"blocks.{layer}.attn.hook_{x}" for x in "qk")
        queries, keys = (source[q], base[k]) if kind == "q" else (base[q], source[k])
        out[layer] = methods.attention_pattern(w, layer, queries.float(), keys.float())
    return out


def key_patterns_changes(pair: methods.PreparedPair, layer: int, base: dict, source: dict, grads: torch.Tensor) -> torch.Tensor:
    """(gradient, head, position) Σ ∂metric/∂pattern · Δpattern with the key at one position from the source run.

    `grads`: [(head, query, key)] ∂metric/∂pattern of this layer, one per backward pass (or stacked). A key
    at position p changes column p of every query head's scores (of the heads sharing its key/value
    head); the softmax is recomputed exactly (methods.attention_pattern), so every row it normalises
    changes. A key the two runs share changes nothing (every position before the first difference):
    those are skipped.
    """
    w = pair.weights
    q, k, pattern = (f"blocks.{layer}.attn.hook_{x}" for x in ("q", "k", "pattern"))
    queries, keys, before = (
        base[q].float(),
        base[k].float(),
        base[pattern].float(),
    )  # (pos, head, d_head), (pos, kv_head, d_head), (head, pos, pos)
    out = torch.zeros(len(grads), w.n_heads, keys.shape[0])
    for p in (source[k] != base[k]).flatten(1).any(1).nonzero().flatten().tolist():
        mixed = keys.clone()
        mixed[p] = source[k][p].float()
        change = methods.attention_pattern(w, layer, queries, mixed) - before  # (head, query, key)
        out[:, :, p] = torch.stack([(x * change).sum((-1, -2)).cpu() for x in grads])
    return out


def _estimate(pair: methods.PreparedPair, s: Site, base: dict, source: dict, grads: list[dict], qk_fix: bool) -> torch.Tensor:
    """(gradient, layer, ...cells) linear estimates of each cell's change of the metric, one per gradient; QK-fixed if asked.

    QK fix: a head's queries (all positions) or one query change its pattern's rows, read off the
    pattern with the source run's queries (fixed_patterns); a key/value head's keys (all positions)
    change every column of its heads' patterns, the same way; one key changes one column
    (key_patterns_changes). A key/value head's cells sum over the query heads that share it.
    """
    return torch.stack([_estimate_layer(pair, s, layer, base, source, grads, qk_fix) for layer in range(pair.weights.n_layers)], 1)


def _estimate_layer(
    pair: methods.PreparedPair, s: Site, layer: int, base: dict, source: dict, grads: list[dict], qk_fix: bool
) -> torch.Tensor:
    """(gradient, ...cells) the estimates of one layer's cells (see _estimate); reads only this layer's activations."""
    w = pair.weights
    per_position = "position" in s.axes
    one_key = s.engine_site == "k" and per_position
    if not qk_fix:
        name = s.hook(layer)
        change = source[name].float() - base[name].float()
        return torch.stack([s.reduce(change * g[name].float()).cpu() for g in grads])
    pattern = f"blocks.{layer}.attn.hook_pattern"
    g = [x[pattern].float() for x in grads]  # [(head, query, key)] one per gradient, never stacked: a long prompt's are large
    if one_key:
        per_head = key_patterns_changes(pair, layer, base, source, g)  # (gradient, head, position)
    else:
        q, k = (f"blocks.{layer}.attn.hook_{x}" for x in "qk")
        queries, keys = (source[q], base[k]) if s.engine_site == "q" else (base[q], source[k])
        change = methods.attention_pattern(w, layer, queries.float(), keys.float()) - base[pattern].float()  # (head, query, key)
        summed = (-1,) if per_position else (-1, -2)  # a query at position p changes row p only, exactly as all the source run's do
        per_head = torch.stack([(change * x).sum(summed).cpu() for x in g])  # (gradient, head[, query])
    if s.kv:  # key/value heads: the query heads that share one are consecutive
        per_head = per_head.reshape(len(grads), w.n_kv_heads, -1, *per_head.shape[2:]).sum(2)  # (gradient, kv_head, ...)
    return per_head


def _estimate_by_block(pair: methods.PreparedPair, s: Site, names: list[str], source: dict, star: bool, qk_fix: bool) -> torch.Tensor:
    """As _estimate, with the gradients taken block by block and each layer reduced as soon as its block is done.

    For long prompts: every layer's patterns and their n_layers + 1 gradients are never held at once.
    """
    w = pair.weights
    by_layer: dict[int, torch.Tensor] = {}

    def reduce(layer: int, acts: dict, grads: list[dict]) -> None:
        base = {n: a[0] for n, a in acts.items()}
        by_layer[layer] = _estimate_layer(pair, s, layer, base, source, [{n: g[0] for n, g in x.items()} for x in grads], qk_fix)

    tokens = pair.base_tokens[None].to(w.W_U.device)
    engine.site_gradients(w, tokens, names, pair.metric, graddrop=star, on_block=reduce)
    return torch.stack([by_layer[layer] for layer in range(w.n_layers)], 1)


def preview_sweep(
    model: LoadedModel,
    pair: Pair,
    site: str = "resid_pre",
    *,
    method: Literal["AtP*", "AtP"] = "AtP*",  # one of PREVIEW_METHODS
    direction: str = "denoising",
    metric: str = "logit difference",
) -> patching.PatchResult:
    """Every cell of `site` estimated by `method`, AtP* or plain AtP, reading the metric of kind `metric`, as a
    PatchResult (values normalised as an exact sweep's). The method and direction by name: a call says which estimate
    it reads."""
    if method not in PREVIEW_METHODS:
        raise InputError(f"unknown preview '{method}': use one of {', '.join(PREVIEW_METHODS)}")
    s = site_named(site)
    if direction not in patching.DIRECTIONS:
        raise InputError(f"unknown direction '{direction}': use denoising or noising")
    _, _, measure = check_pair(model, pair, metric)  # bad prompts or tokens: their own message, before any fallback
    try:
        prepared = methods.prepare(model, pair, direction, metric=metric)
    except InputError as err:  # the engine cannot run this model, or disagrees with it
        plain = patching.attribution_sweep(model, pair, site, direction, metric=metric)
        note = f"{err}; the preview is plain attribution patching through the model's own hooks"
        return dataclasses.replace(plain, method="AtP", note="; ".join(n for n in (note, plain.note) if n), forward=2, backward=1)
    if method == "AtP" and len(prepared.base_tokens) <= LONG_TOKENS:  # plain AtP is patching's attribution sweep, on the same engine
        return _as_preview(patching.attribution_sweep(model, pair, site, direction, metric=metric))
    star = method == "AtP*"
    w = prepared.weights
    qk_fix = star and s.engine_site in ("q", "k")
    names = [s.hook(layer) for layer in range(w.n_layers)]
    names = list(dict.fromkeys(names + (methods.site_names(w, "q", "k", "pattern") if qk_fix else [])))
    long_prompt = len(prepared.base_tokens) > LONG_TOKENS
    # the source run's patterns are never read: a long prompt's would be every layer's (head, pos, pos)
    source_names = [n for n in names if not (long_prompt and n.endswith("hook_pattern"))]
    with torch.no_grad():
        source = {n: a[0] for n, a in prepared.run("source", capture=source_names).captured.items()}  # forward pass 1
    if long_prompt:  # gradients block by block, each layer reduced to its cells' estimates at once
        estimates = _estimate_by_block(prepared, s, names, source, star, qk_fix)  # (gradient, layer, ...cells)
        backward = w.n_layers + 1 if star else 1
    else:
        base, grads, backward = methods.metric_gradients(prepared, names, graddrop=star)  # forward pass 2, then `backward` passes
        estimates = _estimate(prepared, s, base, source, grads, qk_fix)  # (gradient, layer, ...cells): plain, then each layer dropped
    effect = estimates[0]  # (layer, ...cells)
    magnitude = effect.abs()
    if star and w.n_layers > 1:
        magnitude = torch.maximum(magnitude, estimates[1:].abs().sum(0) / (w.n_layers - 1))

    clean, corrupted = run_prompt(model, pair.clean), run_prompt(model, pair.corrupted)  # cached: the bridge's baselines
    clean_value, corrupted_value = float(measure.value(clean.logits[-1:])), float(measure.value(corrupted.logits[-1:]))
    raw = effect + (corrupted_value if direction == "denoising" else clean_value)  # the estimated patched metric
    values, why = patching.normalise(raw, clean_value, corrupted_value, clean.logits[-1])
    if torch.isfinite(values).any():
        magnitude = magnitude / abs(clean_value - corrupted_value)  # on the normalised scale: 1 is the full restoration
    return patching.PatchResult(
        site=s.name, direction=direction, metric=measure.kind, method=method, axes=s.axes, values=values, raw=raw,
        clean_value=clean_value, corrupted_value=corrupted_value, labels=clean.labels, pair=pair, backend="engine", note=why,
        provenance=provenance(
            model, [pair.clean, pair.corrupted], site=s.name, direction=direction, metric=measure.kind, method=method,
            answer=measure.answer, wrong=measure.wrong, backend="engine", qk_fix=qk_fix, graddrop=star,
        ),
        magnitude=magnitude, forward=2, backward=backward,
    )  # fmt: skip


def _as_preview(plain: patching.PatchResult) -> patching.PatchResult:
    """patching.attribution_sweep's result as the preview's plain AtP: its magnitude (on the normalised scale) and passes."""
    base_value = plain.corrupted_value if plain.direction == "denoising" else plain.clean_value
    magnitude = (plain.raw - base_value).abs()
    if torch.isfinite(plain.values).any():
        magnitude = magnitude / abs(plain.clean_value - plain.corrupted_value)
    how = plain.provenance | {"settings": plain.provenance["settings"] | {"method": "AtP", "qk_fix": False, "graddrop": False}}
    return dataclasses.replace(plain, method="AtP", provenance=how, magnitude=magnitude, forward=2, backward=1)


def change(r: patching.PatchResult) -> torch.Tensor:
    """(cells,) how far each cell moves the metric from the base run: an estimate's magnitude, else |value − base value|."""
    if r.magnitude is not None:
        return r.magnitude.flatten()
    values = r.values.flatten()
    if torch.isfinite(values).any():
        return (values - (0.0 if r.direction == "denoising" else 1.0)).abs().nan_to_num(0.0)
    base = r.corrupted_value if r.direction == "denoising" else r.clean_value
    return (r.raw.flatten() - base).abs()


def recall(estimate: patching.PatchResult, exact: patching.PatchResult, k: int = K) -> float:
    """Share of the exact sweep's top k cells (by the size of their change) among the estimate's top k.

    k is at most the number of cells the exact sweep moves at all (scoreboard.recall_at); changes
    below a millionth of the full restoration count as zero (float noise). Only the cells the exact
    sweep patched count (a window of positions leaves the others NaN).
    """
    if (estimate.site, estimate.direction, estimate.values.shape) != (exact.site, exact.direction, exact.values.shape):
        raise InputError("recall compares a preview with the exact sweep of the same site, direction and prompts")
    patched = torch.isfinite(exact.raw.flatten())  # (cells,)
    return scoreboard.recall_at(k, scoreboard.floored(change(estimate)[patched]), scoreboard.floored(change(exact)[patched]))
