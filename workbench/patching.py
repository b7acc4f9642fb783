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

Sites are one table (`SITES`): each knows its hook, its cells, the edit that patches a batch of
cells, and how attribution patching reduces a gradient to its cells. The exact sweep and
attribution patching both read it.

Speed, and never silently wrong. transformer-lens's `patching` module (the reference our sweeps
are tested against) runs one full forward pass per cell. Here the forward engine (engine.py)
runs many patched runs in one batched pass, each joining the batch at its patched layer from
the base run's residual stream (the layers before it cannot change) and, for a patched position,
starting at that position with the base run's keys and values before it (nothing earlier can
change either), unembedding only the last position and only the logits the metric reads. Which one runs is `engine.backend`'s
choice (the engine's logits checked against the model's once per set of weights); on a mismatch, or a model the
engine does not know, the sweep runs through the bridge's own hooks instead (batched, slower, exact) and the result
says so (`PatchResult.backend`, `PatchResult.note`).

Above 500 lines for now: the sites table and the dataset sweep are the next rooms to split out (issue #25).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.metrics import METRICS, Metric
from workbench.model import LoadedModel
from workbench.runs import check_token_ids, encode, memory_budget, next_token_topk, provenance, run_prompt, run_tokens
from workbench.tokens import Alignment, align, token_labels

DIRECTIONS = ("denoising", "noising")
METHODS = ("exact", "attribution patching")
# position-site batches each span 1/SPLIT of the prompt: shorter runs (causality), smaller matmuls
SPLIT = 8
BATCH = 64  # patched runs per pass, at most (fewer when one run's intermediates are large: see batch_size)
# A clean − corrupted span below this share of the logits' size is float noise (float32 keeps ~7 digits,
# and a patched run's arithmetic differs in order from the clean run's): dividing by it would show noise
SPAN_FLOOR = 1e-5


def batch_size(model: LoadedModel, n_tokens: int) -> int:
    """Patched runs per pass that keep one block's intermediates within the memory budget."""
    i = model.info
    per_run = 4 * n_tokens * (6 * i.d_model + 3 * i.d_mlp + 3 * i.n_heads * n_tokens)  # float32 bytes alive in one block
    return max(1, min(BATCH, memory_budget() // max(1, per_run)))


# ---- the site table -------------------------------------------------------------------------------


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


# ---- prompts, metric, baselines -----------------------------------------------------------------


@dataclass(frozen=True)
class PatchingSetup:
    """Two prompts of one length and what the metric reads."""

    clean: str
    corrupted: str
    answer: int  # token id the clean prompt should produce
    wrong: int  # token id the corrupted prompt points to (for the logit difference)
    metric: str = "logit difference"

    @property
    def measure(self) -> Metric:
        """The metric this setup reads (metrics.Metric): its kind, answer and wrong token."""
        return Metric(self.metric, self.answer, self.wrong)

    def columns(self) -> list[int] | None:
        """The only logits the metric reads, when it reads only some (the logit difference)."""
        return self.measure.columns()

    def value_of_columns(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) metric from logits restricted to self.columns() (engine.forward(..., columns=...)) or full logits."""
        return self.measure.value_of_columns(logits)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) metric of next-token logits (batch, d_vocab)."""
        return self.measure.value(logits)

    @classmethod
    def of(cls, pair, tokenizer, metric: str = "logit difference") -> PatchingSetup:
        """A task's prompt pair (tasks.Pair: strings) with its answer and wrong tokens resolved to ids (tasks.Pair.ids)."""
        return cls(pair.clean, pair.corrupted, *pair.ids(tokenizer), metric)


def as_setup(model: LoadedModel, pair, metric: str = "logit difference") -> PatchingSetup:
    """A PatchingSetup as it is, or a tasks.Pair (strings) with its answer and wrong tokens resolved for the model."""
    return pair if isinstance(pair, PatchingSetup) else PatchingSetup.of(pair, model.tokenizer, metric)


def compare_tokens(model: LoadedModel, clean: str, corrupted: str) -> Alignment:
    """Both prompts' tokens side by side (`labels_a` clean, `labels_b` corrupted), and where they differ."""
    return align(model.tokenizer, encode(model, clean)[0], encode(model, corrupted)[0])


def candidate_answers(model: LoadedModel, clean: str, corrupted: str, k: int = 8) -> tuple[dict[str, int], dict[str, int]]:
    """({label: id} answers, {label: id} wrongs) to offer, best guesses first.

    Where the prompts differ in one token, that token of each prompt comes first (the usual
    copying or fact pair: the clean prompt's word is the answer); then each run's top predictions.
    """
    clean_ids, corrupted_ids = encode(model, clean)[0], encode(model, corrupted)[0]
    answers: dict[str, int] = {}
    wrongs: dict[str, int] = {}
    if len(clean_ids) == len(corrupted_ids):
        differ = (clean_ids != corrupted_ids).nonzero().flatten().tolist()
        if len(differ) == 1:
            a, w = int(clean_ids[differ[0]]), int(corrupted_ids[differ[0]])
            answers[token_labels(model.tokenizer, [a])[0]] = a
            wrongs[token_labels(model.tokenizer, [w])[0]] = w
    for prompt, out in ((clean, answers), (corrupted, wrongs)):
        top = next_token_topk(model, run_prompt(model, prompt), k=k)
        for label, i in zip(top.labels, top.ids, strict=True):
            out.setdefault(label, i)
    return answers, wrongs


def check_setup(model: LoadedModel, s: PatchingSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """((pos,), (pos,)) clean and corrupted ids, or InputError saying what to change."""
    if s.metric not in METRICS:
        raise InputError(f"unknown metric '{s.metric}': use one of {', '.join(METRICS)}")
    check_token_ids(model, [s.answer], "the answer token")
    check_token_ids(model, [s.wrong], "the wrong token")
    clean, _ = encode(model, s.clean)
    corrupted, _ = encode(model, s.corrupted)
    if len(clean) != len(corrupted):
        cmp = compare_tokens(model, s.clean, s.corrupted)
        raise InputError(
            f"clean and corrupted prompts must have the same number of tokens ({len(clean)} vs {len(corrupted)}): "
            f"change words for words of the same token count (first difference at position {cmp.differ[0] if cmp.differ else min(len(clean), len(corrupted))})"
        )
    return clean, corrupted


def corrupt_word(model: LoadedModel, clean: str, word: str, replacement: str) -> str:
    """The clean prompt with every `word` replaced by `replacement`; InputError unless the token count stays the same."""
    if not word or word not in clean:
        raise InputError(f"'{word}' does not occur in the clean prompt")
    corrupted = clean.replace(word, replacement)
    a, b = encode(model, clean)[0], encode(model, corrupted)[0]
    if len(a) != len(b):
        n_word = len(model.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"])
        n_rep = len(model.tokenizer(" " + replacement.strip(), add_special_tokens=False)["input_ids"])
        raise InputError(
            f"'{word}' is {n_word} token(s) but '{replacement}' is {n_rep}: the prompts would differ in length ({len(a)} vs {len(b)}); pick a replacement of the same token count"
        )
    return corrupted


# ---- sweeps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchResult:
    """A sweep: the normalised metric for every cell of one site (0 = corrupted run, 1 = clean run)."""

    site: str  # a key of SITES
    direction: str
    metric: str
    method: str  # "exact", or an estimate: "attribution patching", "AtP" or "AtP*" (preview.py; ranks cells, misjudges sizes)
    axes: tuple[str, ...]  # e.g. ("layer", "position") or ("layer", "head")
    values: torch.Tensor  # normalised, shape by axes; NaN when the clean and corrupted metrics are too close (see note)
    raw: torch.Tensor  # the metric itself, same shape
    clean_value: float
    corrupted_value: float
    labels: list[str]  # position labels of the clean prompt
    setup: PatchingSetup = field(repr=False)
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


def site_named(site: str) -> Site:
    if site not in SITES:
        raise InputError(f"unknown site '{site}': use one of {', '.join(SITES)}")
    return SITES[site]


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
    weights: engine.Weights | None = None


def _prepare(model: LoadedModel, setup: PatchingSetup, site: Site, direction: str) -> _Runs:
    """Both runs, with the activations the site's patching reads, by the engine when it checks out."""
    clean_ids, corrupted_ids = check_setup(model, setup)
    layers = range(model.info.n_layers)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers] + [site.hook(layer) for layer in layers]
    names = list(dict.fromkeys(names))
    # keys and values of every layer: a patched run that starts at position p takes the earlier ones from here
    past_names = [f"blocks.{layer}.attn.hook_{kv}" for layer in layers for kv in "kv"]
    clean = run_prompt(model, setup.clean, names)  # the bridge's run: the reference and the reported baselines
    corrupted = run_prompt(model, setup.corrupted, names)
    chosen = engine.backend(model)  # checked against the model's logits once per set of weights
    w, note = chosen.weights, chosen.note()
    base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    base_ids = corrupted_ids if direction == "denoising" else clean_ids
    if chosen.name == "nnsight":  # every site it exposes for editing reaches the output
        return _Runs(clean.logits, corrupted.logits, clean.labels, base.cache, source.cache, base_ids, "nnsight", "")
    if w is None:
        _check_hook_reaches_output(model, site, base_ids)
        return _Runs(clean.logits, corrupted.logits, clean.labels, base.cache, source.cache, base_ids, "bridge hooks", note)
    # the engine's own activations: the patched runs continue from exactly what it computes
    device = w.W_U.device
    with torch.no_grad():
        src_ids = clean_ids if direction == "denoising" else corrupted_ids
        base_out = engine.forward(w, base_ids[None].to(device), capture=names + past_names).captured
        source_out = engine.forward(w, src_ids[None].to(device), capture=names).captured
    return _Runs(
        clean.logits, corrupted.logits, clean.labels,
        {n: a[0] for n, a in base_out.items()}, {n: a[0] for n, a in source_out.items()}, base_ids, "engine", note, w,
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
    setup: PatchingSetup,
    site: str = "resid_pre",
    direction: str = "denoising",
    progress: Callable[[int, int], bool | None] | None = None,
    window: tuple[int, int] | None = None,
) -> PatchResult:
    """Patches every cell of `site`; `progress(done, total)` is called after each batch and may return False to cancel.

    `window` (start, stop): patch only positions start <= position < stop (a long prompt's
    region of interest); the other positions' values are NaN.
    """
    s = site_named(site)
    _check_direction(direction)
    if model.backend is not None:  # nnsight: the clean, corrupted and patched runs in one trace (one request to a server)
        return _backend_sweep(model, setup, s, direction, progress, window)
    runs = _prepare(model, setup, s, direction)
    pos = len(runs.labels)
    cells = s.cells(model, pos)
    keep = window_cells(s, cells, window, pos)
    raw = torch.full((len(cells),), float("nan"))
    done = 0
    per_batch = batch_size(model, pos)
    w = runs.weights
    device = w.W_U.device if w is not None else model.device
    columns = None if setup.columns() is None else torch.tensor(setup.columns(), device=device)
    if w is not None:
        for chunk in plan_passes(s, cells, per_batch, pos, keep):
            chunk = sorted(chunk, key=lambda i: cells[i][0])  # the rows' order in the pass: by layer
            raw[chunk] = setup.value_of_columns(_engine_pass(s, cells, chunk, runs, columns)).float().cpu()
            done += len(chunk)
            if progress is not None and progress(done, len(keep)) is False:
                raise InputError(f"the sweep was cancelled after {done} of {len(keep)} cells")
        return _result(model, setup, s, direction, "exact", raw.reshape(s.shape(model, pos)), runs)
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
            raw[chunk] = setup.value(logits[:, -1].float()).cpu()
            done += len(chunk)
            if progress is not None and progress(done, len(keep)) is False:
                raise InputError(f"the sweep was cancelled after {done} of {len(keep)} cells")
    return _result(model, setup, s, direction, "exact", raw.reshape(s.shape(model, pos)), runs)


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
    model: LoadedModel, setup: PatchingSetup, s: Site, direction: str, progress: Callable | None, window: tuple[int, int] | None
) -> PatchResult:
    """sweep() on the nnsight backend: each trace runs the source, the base and the patched runs (nnsight_backend.patch_sweep)."""
    clean_ids, corrupted_ids = check_setup(model, setup)
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
                source.to(model.device), base.to(model.device), s.hook, _LayerEdits(s, rows), layers, len(chunk), setup.value
            )
        raw[chunk] = values.float().cpu()
        done += len(chunk)
        if progress is not None and progress(done, len(keep)) is False:
            raise InputError(f"the sweep was cancelled after {done} of {len(keep)} cells")
    clean_last, corrupted_last = (source_last, base_last) if direction == "denoising" else (base_last, source_last)
    labels = token_labels(model.tokenizer, clean_ids.tolist())
    runs = _Runs(clean_last.float().cpu()[None], corrupted_last.float().cpu()[None], labels, {}, {}, base, "nnsight", "")
    return _result(model, setup, s, direction, "exact", raw.reshape(s.shape(model, pos)), runs)


def _result(model: LoadedModel, setup: PatchingSetup, s: Site, direction: str, method: str, raw: torch.Tensor, runs: _Runs) -> PatchResult:
    clean_value = float(setup.value(runs.clean_logits[-1:]))
    corrupted_value = float(setup.value(runs.corrupted_logits[-1:]))
    normalised, why = normalise(raw, clean_value, corrupted_value, runs.clean_logits[-1])
    return PatchResult(
        site=s.name,
        direction=direction,
        metric=setup.metric,
        method=method,
        axes=s.axes,
        values=normalised,
        raw=raw,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        labels=runs.labels,
        setup=setup,
        backend=runs.backend,
        note="; ".join(n for n in (runs.note, why) if n),
        provenance=provenance(
            model, [setup.clean, setup.corrupted], site=s.name, direction=direction, metric=setup.metric, method=method,
            answer=setup.answer, wrong=setup.wrong, backend=runs.backend,
        ),
    )  # fmt: skip


# ---- attribution patching: the linear estimate, one forward and one backward pass ------------------


def attribution_sweep(model: LoadedModel, setup: PatchingSetup, site: str = "resid_pre", direction: str = "denoising") -> PatchResult:
    """Estimates every cell's patching effect as (source − base activation) · ∂metric/∂activation.

    The gradient is taken once, on the base run (the one being patched: corrupted for denoising). It ranks cells well
    but misjudges sizes (measured here: rank correlation ~0.99, sizes off by up to 5×), so it is a
    preview: check the top cells exactly. Runs through the engine, or the bridge's hooks when the
    engine does not check out.
    """
    s = site_named(site)
    _check_direction(direction)
    runs = _prepare(model, setup, s, direction)
    names = [s.hook(layer) for layer in range(model.info.n_layers)]
    w = runs.weights
    if w is not None:
        with torch.enable_grad():
            out = engine.forward(w, runs.base_tokens[None].to(w.W_U.device), capture=names, last_only=True)
            acts = [out.captured[n] for n in names]
            for a in acts:
                a.retain_grad()
            setup.value(out.logits.float()).sum().backward()
        grads = [a.grad for a in acts]
    else:
        # the gradient read as that of a zero added at each hook: the tensor the bridge hands a hook gets none for
        # the heads' q, k, v and z (measured on transformer-lens 4), while what the hook returns flows on
        zeros = [torch.zeros_like(runs.base[n][None], requires_grad=True) for n in names]
        hooks = [(n, lambda act, hook, z=z: act + z) for n, z in zip(names, zeros, strict=True)]
        logits, _ = run_tokens(model, runs.base_tokens[None], hooks=hooks, last_only=True, grad=True)
        grads = torch.autograd.grad(setup.value(logits[:, -1].float()).sum(), zeros)
    effects = []
    for name, g in zip(names, grads, strict=True):
        grad = g[0].detach().float().cpu()  # activation-shaped, no batch dim
        effects.append(s.reduce((runs.source[name].float().cpu() - runs.base[name].float().cpu()) * grad))
    clean_value = float(setup.value(runs.clean_logits[-1:]))
    corrupted_value = float(setup.value(runs.corrupted_logits[-1:]))
    base_value = corrupted_value if direction == "denoising" else clean_value
    raw = torch.stack(effects) + base_value  # the estimated patched metric
    return _result(model, setup, s, direction, "attribution patching", raw, runs)


def correlation(a: PatchResult, b: PatchResult) -> float:
    """Pearson correlation of two sweeps' normalised values (NaN-free cells)."""
    x, y = a.values.flatten(), b.values.flatten()
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else float("nan")


def exact_cells(model: LoadedModel, result: PatchResult, k: int = 5) -> list[dict]:
    """The exact normalised effect of the top k cells of a sweep (typically an estimate), by patching each."""
    exact = sweep(model, result.setup, result.site, result.direction)
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
    model: LoadedModel, setups: list, site: str = "resid_pre", direction: str = "denoising", progress=None, metric: str = "logit difference"
) -> DatasetPatchResult:
    """The exact sweep of every pair (PatchingSetups, or tasks.Pairs read with `metric`), their mean and spread."""
    if not setups:
        raise InputError("the dataset has no prompt pairs")
    setups = [as_setup(model, s, metric) for s in setups]
    results = []
    for i, s in enumerate(setups):
        results.append(sweep(model, s, site, direction))
        if progress is not None and progress(i + 1, len(setups)) is False:
            raise InputError(f"the dataset sweep was cancelled after {i + 1} of {len(setups)} pairs")
    shapes = {r.values.shape for r in results}
    if len(shapes) > 1:
        raise InputError("every prompt pair of a dataset must have the same number of tokens, so that positions line up")
    stack = torch.stack([r.values for r in results])  # (pair, ...)
    notes = list(dict.fromkeys(r.note for r in results if r.note))
    return DatasetPatchResult(
        site,
        direction,
        setups[0].metric,
        results[0].axes,
        stack.mean(0),
        stack.std(0) if len(results) > 1 else torch.zeros_like(stack[0]),
        len(results),
        results[0].labels,
        backend=next((r.backend for r in results if r.backend != "engine"), "engine"),
        note="; ".join(notes),
        provenance=provenance(
            model, [p for s in setups for p in (s.clean, s.corrupted)], site=site, direction=direction, metric=setups[0].metric,
            method="exact", answers=[s.answer for s in setups], wrongs=[s.wrong for s in setups],
        ),
    )  # fmt: skip
