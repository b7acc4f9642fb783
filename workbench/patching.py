"""Activation patching: run the model on one prompt with one activation taken from another.

Two prompts of the same length: the *clean* one, on which the model gives the answer (" Mary"),
and the *corrupted* one, changed so that it does not (" John"). A *metric* reads the final
position's logits: the logit difference answer − wrong, the answer's probability, or its
log-probability. Denoising copies one clean activation into the corrupted run: if the metric
comes back, that activation carries what the corruption destroyed. Noising copies a corrupted
activation into the clean run: if the metric falls, the clean run needed it. Either way a sweep
patches every cell of a site (a layer × position grid for the residual stream, a layer × head
grid for heads) and reports the metric normalised so that the corrupted run is 0 and the clean
run is 1.

A sweep takes a prompt pair (tasks.Pair: strings or token ids) and the metric's kind; the pair's
one check (tasks.check_pair) makes the metric it reads. The sites are one table
(patch_sites.SITES): each knows its hook, its cells, the edit that patches a batch of cells, and
how attribution patching reduces a gradient to its cells. The exact sweep and attribution
patching both read it.

Speed, and never silently wrong. transformer-lens's `patching` module (the reference our sweeps
are tested against) runs one full forward pass per cell. Here the forward engine (engine.py)
runs many patched runs in one batched pass, each joining the batch at its patched layer from
the base run's residual stream (the layers before it cannot change) and, for a patched position,
starting at that position with the base run's keys and values before it (nothing earlier can
change either), unembedding only the last position and only the logits the metric reads. Which one runs is `engine.backend`'s
choice (the engine's logits checked against the model's once per set of weights); on a mismatch, or a model the
engine does not know, the sweep runs through the bridge's own hooks instead (batched, slower, exact) and the result
says so (`PatchResult.backend`, `PatchResult.note`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.metrics import Metric
from workbench.model import LoadedModel
from workbench.patch_sites import Site, batch_size, plan_passes, site_named, window_cells
from workbench.runs import provenance, run_prompt, run_tokens
from workbench.tasks import Pair, check_pair
from workbench.tokens import token_labels

DIRECTIONS = ("denoising", "noising")
METHODS = ("exact", "attribution patching")
# A clean − corrupted span below this share of the logits' size is float noise (float32 keeps ~7 digits,
# and a patched run's arithmetic differs in order from the clean run's): dividing by it would show noise
SPAN_FLOOR = 1e-5


# ---- sweeps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchResult:
    """A sweep: the normalised metric for every cell of one site (0 = corrupted run, 1 = clean run)."""

    site: str  # a key of patch_sites.SITES
    direction: str
    metric: str
    method: str  # "exact", or an estimate: "attribution patching", "AtP" or "AtP*" (preview.py; ranks cells, misjudges sizes)
    axes: tuple[str, ...]  # e.g. ("layer", "position") or ("layer", "head")
    values: torch.Tensor  # normalised, shape by axes; NaN when the clean and corrupted metrics are too close (see note)
    raw: torch.Tensor  # the metric itself, same shape
    clean_value: float
    corrupted_value: float
    labels: list[str]  # position labels of the clean prompt
    pair: Pair = field(repr=False)  # the prompt pair as given (answer and wrong as strings or ids; provenance: the ids)
    backend: str = "engine"  # how the patched runs were computed (engine.backend): "engine", "bridge hooks" or "nnsight"
    note: str = ""  # why the bridge's hooks were used, or why values are NaN; shown with the result
    provenance: dict = field(default_factory=dict, repr=False)
    # an estimate's own ranking (AtP*: GradDrop-aware size of each cell's change, normalised; preview.py); None: |values|
    magnitude: torch.Tensor | None = None
    forward: int = 0  # forward and backward passes an estimate took (exact sweeps: 0, their runs are batched)
    backward: int = 0

    def ranked(self, k: int = 10) -> list[dict]:
        """The k cells that move the metric most (by the estimate's magnitude when it has one, else by |normalised
        effect|, by |metric change| when not normalisable)."""
        flat = self.values.flatten()
        key = flat.abs() if torch.isfinite(flat).any() else (self.raw.flatten() - self.corrupted_value).abs()
        if self.magnitude is not None:
            key = self.magnitude.flatten()
        order = key.nan_to_num(-1.0).argsort(descending=True)[:k]
        rows = []
        for i in order.tolist():
            index = torch.unravel_index(torch.tensor(i), self.values.shape)
            cell = {axis: int(v) for axis, v in zip(self.axes, index, strict=True)}
            if "position" in cell:
                cell["token"] = self.labels[cell["position"]]
            rows.append(cell | dict(normalised=float(flat[i]), metric=float(self.raw.flatten()[i])))
            if self.magnitude is not None:
                rows[-1]["magnitude"] = float(key[i])
        return rows

    def rows(self) -> list[dict]:
        return self.ranked(self.values.numel())


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction '{direction}': use denoising or noising")


def normalise(raw: torch.Tensor, clean_value: float, corrupted_value: float, logits: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(normalised values, note). A span within float noise of the logits' scale is not divided by."""
    span = clean_value - corrupted_value
    noise = SPAN_FLOOR * float(logits.abs().max())
    if abs(span) <= noise:
        return torch.full_like(raw, float("nan")), (
            f"the clean and corrupted runs give the same metric within float noise ({span:.2g}, logits of size "
            f"{float(logits.abs().max()):.3g}): nothing to restore, so the values are not normalised; pick prompts "
            "or answer tokens that the two runs treat differently"
        )
    return (raw - corrupted_value) / span, ""


@dataclass(frozen=True)
class _Runs:
    """The clean and corrupted runs a sweep starts from, by the engine or the bridge.

    The base run is the one being patched (corrupted for denoising, clean for noising); the source
    run is the one the patched values come from.
    """

    clean_logits: torch.Tensor  # (pos, d_vocab) from the bridge: the numbers the result reports against
    corrupted_logits: torch.Tensor
    labels: list[str]
    base: dict[str, torch.Tensor]  # hook name -> activation (no batch dim) of the base run: the one being patched
    source: dict[str, torch.Tensor]  # ... of the run the patched values come from
    base_tokens: torch.Tensor  # (pos,)
    backend: str  # engine.BACKENDS
    note: str
    measure: Metric  # the metric the sweep reads (tasks.check_pair: the pair's answer and wrong ids)
    weights: engine.Weights | None = None


def _prepare(model: LoadedModel, pair: Pair, metric: str, site: Site, direction: str) -> _Runs:
    """Both runs, with the activations the site's patching reads, by the engine when it checks out."""
    clean_ids, corrupted_ids, measure = check_pair(model, pair, metric)
    layers = range(model.info.n_layers)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers] + [site.hook(layer) for layer in layers]
    names = list(dict.fromkeys(names))
    # keys and values of every layer: a patched run that starts at position p takes the earlier ones from here
    past_names = [f"blocks.{layer}.attn.hook_{kv}" for layer in layers for kv in "kv"]
    clean = run_prompt(model, pair.clean, names)  # the bridge's run: the reference and the reported baselines
    corrupted = run_prompt(model, pair.corrupted, names)
    chosen = engine.backend(model)  # checked against the model's logits once per set of weights
    w, note = chosen.weights, chosen.note()
    base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    base_ids = corrupted_ids if direction == "denoising" else clean_ids
    if chosen.name == "nnsight":  # every site it exposes for editing reaches the output
        return _Runs(clean.logits, corrupted.logits, clean.labels, base.cache, source.cache, base_ids, "nnsight", "", measure)
    if w is None:
        _check_hook_reaches_output(model, site, base_ids)
        return _Runs(clean.logits, corrupted.logits, clean.labels, base.cache, source.cache, base_ids, "bridge hooks", note, measure)
    # the engine's own activations: the patched runs continue from exactly what it computes
    device = w.W_U.device
    with torch.no_grad():
        src_ids = clean_ids if direction == "denoising" else corrupted_ids
        base_out = engine.forward(w, base_ids[None].to(device), capture=names + past_names).captured
        source_out = engine.forward(w, src_ids[None].to(device), capture=names).captured
    return _Runs(
        clean.logits, corrupted.logits, clean.labels,
        {n: a[0] for n, a in base_out.items()}, {n: a[0] for n, a in source_out.items()}, base_ids, "engine", note, measure, w,
    )  # fmt: skip


def _check_hook_reaches_output(model: LoadedModel, site: Site, ids: torch.Tensor) -> None:
    """InputError when editing the site's hook does not change the output (measured: transformer-lens 4.3's
    OPT and GPT-J attention bridges compute their output without reading an edited hook_pattern)."""
    edit = engine.Edit("ablate", site.engine_site, model.info.n_layers - 1)
    plain, _ = run_tokens(model, ids[None], last_only=True)
    edited, _ = run_tokens(model, ids[None], hooks=[(edit.hook, lambda act, hook: engine.apply(edit, act))], last_only=True)
    if torch.equal(plain, edited):
        raise InputError(
            f"the '{site.name}' site cannot be patched on this model: the forward engine does not run it, and editing "
            f"transformer-lens's {edit.hook} does not change its output; patch another site (z is the heads' output)"
        )


def _engine_pass(s: Site, cells: list[tuple[int, ...]], chunk: list[int], runs: _Runs, columns: torch.Tensor | None) -> torch.Tensor:
    """(len(chunk), d_vocab or columns) next-token logits of the chunk's patched runs, in one engine call."""
    w = runs.weights
    device = w.W_U.device
    n_layers = w.n_layers
    first = min(cells[i][s.axes.index("position")] for i in chunk) if "position" in s.axes else 0
    enter, edits, row = {}, [], 0
    for layer in sorted({cells[i][0] for i in chunk}):
        mine = [cells[i] for i in chunk if cells[i][0] == layer]
        resid = runs.base[f"blocks.{layer}.hook_resid_pre"].float().to(device)[first:]  # (pos - first, d_model)
        enter[layer] = resid[None].expand(len(mine), -1, -1)  # (rows, pos - first, d_model)
        edit = s.edit(layer, mine, runs.source[s.hook(layer)].float().to(device), offset=first)
        edits.append(dataclasses.replace(edit, rows=torch.arange(row, row + len(mine), device=device)))
        row += len(mine)
    past = None
    if first:  # keys and values of the positions before `first`, from the base run
        start = min(enter)
        past = {
            later: (runs.base[f"blocks.{later}.attn.hook_k"][None, :first], runs.base[f"blocks.{later}.attn.hook_v"][None, :first])
            for later in range(start, n_layers)
        }
    with torch.no_grad():
        return engine.forward(w, enter=enter, edits=edits, last_only=True, columns=columns, past=past).logits


def sweep(
    model: LoadedModel,
    pair: Pair,
    site: str = "resid_pre",
    direction: str = "denoising",
    *,
    metric: str = "logit difference",
    progress: Callable[[int, int], bool | None] | None = None,
    window: tuple[int, int] | None = None,
) -> PatchResult:
    """Patches every cell of `site`, reading the metric of kind `metric` (metrics.METRICS); `progress(done, total)` is
    called after each batch and may return False to cancel.

    `window` (start, stop): patch only positions start <= position < stop (a long prompt's
    region of interest); the other positions' values are NaN.
    """
    s = site_named(site)
    _check_direction(direction)
    if model.backend is not None:  # nnsight: the clean, corrupted and patched runs in one trace (one request to a server)
        return _backend_sweep(model, pair, metric, s, direction, progress, window)
    runs = _prepare(model, pair, metric, s, direction)
    measure = runs.measure
    pos = len(runs.labels)
    cells = s.cells(model, pos)
    keep = window_cells(s, cells, window, pos)
    raw = torch.full((len(cells),), float("nan"))
    done = 0
    per_batch = batch_size(model, pos)
    w = runs.weights
    device = w.W_U.device if w is not None else model.device
    columns = None if measure.columns() is None else torch.tensor(measure.columns(), device=device)
    if w is not None:
        for chunk in plan_passes(s, cells, per_batch, pos, keep):
            chunk = sorted(chunk, key=lambda i: cells[i][0])  # the rows' order in the pass: by layer
            raw[chunk] = measure.value_of_columns(_engine_pass(s, cells, chunk, runs, columns)).float().cpu()
            done += len(chunk)
            if progress is not None and progress(done, len(keep)) is False:
                raise InputError(f"the sweep was cancelled after {done} of {len(keep)} cells")
        return _result(model, pair, s, direction, "exact", raw.reshape(s.shape(model, pos)), runs)
    for layer in range(model.info.n_layers):
        in_layer = [i for i in keep if cells[i][0] == layer]
        source = runs.source[s.hook(layer)].float().to(device)
        for start in range(0, len(in_layer), per_batch):
            chunk = in_layer[start : start + per_batch]
            edit = s.edit(layer, [cells[i] for i in chunk], source)
            tokens = runs.base_tokens[None].expand(len(chunk), -1)  # (batch, pos)

            def patch(act: torch.Tensor, hook, edit=edit) -> torch.Tensor:
                return engine.apply(edit, act)

            logits, _ = run_tokens(model, tokens, hooks=[(edit.hook, patch)], last_only=True)
            raw[chunk] = measure.value(logits[:, -1].float()).cpu()
            done += len(chunk)
            if progress is not None and progress(done, len(keep)) is False:
                raise InputError(f"the sweep was cancelled after {done} of {len(keep)} cells")
    return _result(model, pair, s, direction, "exact", raw.reshape(s.shape(model, pos)), runs)


def _traces(model: LoadedModel, keep: list[int], per_batch: int) -> list[list[int]]:
    """The cells of each trace: all of them for a server (one request), else `per_batch` × layers at a time."""
    size = len(keep) if model.backend.mode != "local" else per_batch * model.info.n_layers
    return [keep[i : i + size] for i in range(0, len(keep), max(1, size))]


@dataclass(frozen=True)
class _LayerEdits:
    """The edit of each layer's rows in one traced sweep, built from the source run's activation where the model runs."""

    site: Site
    rows: dict[int, tuple[list[int], list[tuple[int, ...]]]]  # layer -> (batch rows, their cells)

    def __call__(self, layer: int, source: torch.Tensor) -> engine.Edit:
        rows, cells = self.rows[layer]
        return dataclasses.replace(self.site.edit(layer, cells, source), rows=torch.tensor(rows, device=source.device))


def _backend_sweep(
    model: LoadedModel,
    pair: Pair,
    metric: str,
    s: Site,
    direction: str,
    progress: Callable | None,
    window: tuple[int, int] | None,
) -> PatchResult:
    """sweep() on the nnsight backend: each trace runs the source, the base and the patched runs (nnsight_backend.patch_sweep)."""
    clean_ids, corrupted_ids, measure = check_pair(model, pair, metric)
    source, base = (clean_ids, corrupted_ids) if direction == "denoising" else (corrupted_ids, clean_ids)
    pos = len(clean_ids)
    cells = s.cells(model, pos)
    keep = window_cells(s, cells, window, pos)
    raw = torch.full((len(cells),), float("nan"))
    done = 0
    for chunk in _traces(model, keep, batch_size(model, pos)):
        chunk = sorted(chunk, key=lambda i: cells[i][0])
        layers = sorted({cells[i][0] for i in chunk})
        rows = {
            layer: ([r for r, i in enumerate(chunk) if cells[i][0] == layer], [cells[i] for i in chunk if cells[i][0] == layer])
            for layer in layers
        }
        with model.lock:
            values, source_last, base_last = model.backend.patch_sweep(
                source.to(model.device), base.to(model.device), s.hook, _LayerEdits(s, rows), layers, len(chunk), measure.value
            )
        raw[chunk] = values.float().cpu()
        done += len(chunk)
        if progress is not None and progress(done, len(keep)) is False:
            raise InputError(f"the sweep was cancelled after {done} of {len(keep)} cells")
    clean_last, corrupted_last = (source_last, base_last) if direction == "denoising" else (base_last, source_last)
    labels = token_labels(model.tokenizer, clean_ids.tolist())
    runs = _Runs(clean_last.float().cpu()[None], corrupted_last.float().cpu()[None], labels, {}, {}, base, "nnsight", "", measure)
    return _result(model, pair, s, direction, "exact", raw.reshape(s.shape(model, pos)), runs)


def _result(model: LoadedModel, pair: Pair, s: Site, direction: str, method: str, raw: torch.Tensor, runs: _Runs) -> PatchResult:
    measure = runs.measure
    clean_value = float(measure.value(runs.clean_logits[-1:]))
    corrupted_value = float(measure.value(runs.corrupted_logits[-1:]))
    normalised, why = normalise(raw, clean_value, corrupted_value, runs.clean_logits[-1])
    return PatchResult(
        site=s.name,
        direction=direction,
        metric=measure.kind,
        method=method,
        axes=s.axes,
        values=normalised,
        raw=raw,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        labels=runs.labels,
        pair=pair,
        backend=runs.backend,
        note="; ".join(n for n in (runs.note, why) if n),
        provenance=provenance(
            model, [pair.clean, pair.corrupted], site=s.name, direction=direction, metric=measure.kind, method=method,
            answer=measure.answer, wrong=measure.wrong, backend=runs.backend,
        ),
    )  # fmt: skip


# ---- attribution patching: the linear estimate, one forward and one backward pass ------------------


def attribution_sweep(
    model: LoadedModel, pair: Pair, site: str = "resid_pre", direction: str = "denoising", *, metric: str = "logit difference"
) -> PatchResult:
    """Estimates every cell's patching effect as (source − base activation) · ∂metric/∂activation.

    The gradient is taken once, on the base run (the one being patched: corrupted for denoising). It ranks cells well
    but misjudges sizes (measured here: rank correlation ~0.99, sizes off by up to 5×), so it is a
    preview: check the top cells exactly. Runs through the engine, or the bridge's hooks when the
    engine does not check out.
    """
    s = site_named(site)
    _check_direction(direction)
    runs = _prepare(model, pair, metric, s, direction)
    measure = runs.measure
    names = [s.hook(layer) for layer in range(model.info.n_layers)]
    w = runs.weights
    if w is not None:
        with torch.enable_grad():
            out = engine.forward(w, runs.base_tokens[None].to(w.W_U.device), capture=names, last_only=True)
            acts = [out.captured[n] for n in names]
            for a in acts:
                a.retain_grad()
            measure.value(out.logits.float()).sum().backward()
        grads = [a.grad for a in acts]
    else:
        # the gradient read as that of a zero added at each hook: the tensor the bridge hands a hook gets none for
        # the heads' q, k, v and z (measured on transformer-lens 4), while what the hook returns flows on
        zeros = [torch.zeros_like(runs.base[n][None], requires_grad=True) for n in names]
        hooks = [(n, lambda act, hook, z=z: act + z) for n, z in zip(names, zeros, strict=True)]
        logits, _ = run_tokens(model, runs.base_tokens[None], hooks=hooks, last_only=True, grad=True)
        grads = torch.autograd.grad(measure.value(logits[:, -1].float()).sum(), zeros)
    effects = []
    for name, g in zip(names, grads, strict=True):
        grad = g[0].detach().float().cpu()  # activation-shaped, no batch dim
        effects.append(s.reduce((runs.source[name].float().cpu() - runs.base[name].float().cpu()) * grad))
    clean_value = float(measure.value(runs.clean_logits[-1:]))
    corrupted_value = float(measure.value(runs.corrupted_logits[-1:]))
    base_value = corrupted_value if direction == "denoising" else clean_value
    raw = torch.stack(effects) + base_value  # the estimated patched metric
    return _result(model, pair, s, direction, "attribution patching", raw, runs)


def correlation(a: PatchResult, b: PatchResult) -> float:
    """Pearson correlation of two sweeps' normalised values (NaN-free cells)."""
    x, y = a.values.flatten(), b.values.flatten()
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else float("nan")


def exact_cells(model: LoadedModel, result: PatchResult, k: int = 5) -> list[dict]:
    """The exact normalised effect of the top k cells of a sweep (typically an estimate), by patching each."""
    exact = sweep(model, result.pair, result.site, result.direction, metric=result.metric)
    rows = []
    for row in result.ranked(k):
        index = tuple(row[a] for a in result.axes)
        rows.append(row | dict(exact_normalised=float(exact.values[index])))
    return rows


# ---- a set of prompt pairs ------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPatchResult:
    """A sweep over several prompt pairs of one shape: the mean normalised effect and its spread."""

    site: str
    direction: str
    metric: str
    axes: tuple[str, ...]
    mean: torch.Tensor  # normalised, shape by axes
    std: torch.Tensor  # spread over the pairs
    n_pairs: int
    labels: list[str]  # position labels of the first pair
    backend: str = "engine"  # "engine", or another of engine.BACKENDS when any pair's sweep ran on it
    note: str = ""  # the pairs' notes, when any
    provenance: dict = field(default_factory=dict, repr=False)


def sweep_dataset(
    model: LoadedModel,
    pairs: list[Pair],
    site: str = "resid_pre",
    direction: str = "denoising",
    *,
    metric: str = "logit difference",
    progress: Callable[[int, int], bool | None] | None = None,
) -> DatasetPatchResult:
    """The exact sweep of every prompt pair, each reading the metric of kind `metric`: their mean and spread."""
    if not pairs:
        raise InputError("the dataset has no prompt pairs")
    results = []
    for i, pair in enumerate(pairs):
        results.append(sweep(model, pair, site, direction, metric=metric))
        if progress is not None and progress(i + 1, len(pairs)) is False:
            raise InputError(f"the dataset sweep was cancelled after {i + 1} of {len(pairs)} pairs")
    shapes = {r.values.shape for r in results}
    if len(shapes) > 1:
        raise InputError("every prompt pair of a dataset must have the same number of tokens, so that positions line up")
    stack = torch.stack([r.values for r in results])  # (pair, ...)
    notes = list(dict.fromkeys(r.note for r in results if r.note))
    ids = [r.provenance["settings"] for r in results]  # each sweep's answer and wrong ids
    return DatasetPatchResult(
        site,
        direction,
        metric,
        results[0].axes,
        stack.mean(0),
        stack.std(0) if len(results) > 1 else torch.zeros_like(stack[0]),
        len(results),
        results[0].labels,
        backend=next((r.backend for r in results if r.backend != "engine"), "engine"),
        note="; ".join(notes),
        provenance=provenance(
            model, [p for pair in pairs for p in (pair.clean, pair.corrupted)], site=site, direction=direction, metric=metric,
            method="exact", answers=[x["answer"] for x in ids], wrongs=[x["wrong"] for x in ids],
        ),
    )  # fmt: skip
