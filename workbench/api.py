"""The workbench as a library: one import, strings where a user has strings, results that show themselves.

    import workbench as wb

    m = wb.load("circuits")
    wb.attention(m, "apple river stone apple river", head="1.0")        # a head's pattern, inline in Jupyter
    wb.lens(m, "apple river stone apple river", track=[" stone"])        # the logit lens
    wb.patch(m, clean, corrupted, answer=" cloud", wrong=" lemon").figure()
    with wb.edits(m, "ablate head 1.0 mean"):                             # every call in the block runs edited
        wb.lens(m, "apple river stone apple river").to_pandas()

Thin by design: each function turns the user's strings into what the analysis takes (token ids of
an answer, a head's layer and index, an edit set) and returns that analysis's own frozen result,
computed by its module, wrapped in a `Result` (results.py): `figure()` draws it with the view's figure function,
`to_pandas()` is its table, `_repr_mimebundle_` shows the figure in a notebook (offline, through
notebook.py), and `to_json` / `from_json` write and read it, including what the probes write
(`out/<probe>/*.json`): a probe's data file reads back as the result that made it.

Edits are scoped, in nnsight's spirit: `with wb.edits(model, "ablate head 1.2 mean"):` registers
nothing on the model. It compiles the edit set once (interventions.compile_edits) and records it
in a context variable; the facade calls made inside the block for that model (`run`, `attention`,
`head_types`, `lens`, `intervene`, `features`) pass the edits as data into their one model call
(runs.run_edited), as every edit of the workbench is applied. Views whose analysis has no edited
run (patching, attribution, the graph) refuse to run inside the block rather than
silently ignore it. Leaving the block, by its end or by an exception, forgets the edits.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from workbench import attention as attention_analysis
from workbench import attribution as attribution_analysis
from workbench import features as features_analysis
from workbench import graph as graph_analysis
from workbench import interventions as iv
from workbench import lens as lens_analysis
from workbench import patching, preview, runs, tasks
from workbench import sae as sae_registry
from workbench.errors import InputError
from workbench.generate import Sampling
from workbench.model import LoadedModel, load_model
from workbench.results import Result, from_json, parse_head
from workbench.tokens import single_token_id, token_labels

__all__ = ["InputError", "Result", "attention", "attribute", "edits", "features", "from_json", "graph", "head_types", "intervene"]
__all__ += ["lens", "load", "patch", "run"]


def load(name_or_path: str | None = None, **options) -> LoadedModel:
    """A model to inspect: a shipped one by name ("english", "circuits", "answer-key", "stories"), a checkpoint
    ("circuits@800"), a local Hugging Face folder or a hub name. `options`: model.load_model's (device, dtype, ...)."""
    return load_model(name_or_path, **options)


# ---- what the user types, made into what the analyses take ------------------------------------------------


def _head(model: LoadedModel, head) -> tuple[int, int]:
    """(layer, head) of "1.2", "L1H2" or (1, 2); InputError naming the model's heads otherwise."""
    layer, index = parse_head(head)
    attention_analysis.check_head(model.info.n_layers, model.info.n_heads, layer, index)
    return layer, index


def _token(model: LoadedModel, token: str | int, what: str) -> int:
    """The id of one token typed as text (" cloud", with its space) or given as an id."""
    if isinstance(token, int) and not isinstance(token, bool):
        return runs.check_token_ids(model, [token], what)[0]
    return single_token_id(model.tokenizer, token, what)


def _model(model) -> LoadedModel:
    """The loaded model every view takes first; InputError for anything else (a model's name, typically)."""
    if not isinstance(model, LoadedModel):
        shown = repr(model) if isinstance(model, str) else type(model).__name__
        raise InputError(f'pass the loaded model first (m = wb.load("circuits"); wb.lens(m, prompt)), not {shown}')
    return model


def _names(model: LoadedModel, names: str | Iterable[str] | None) -> list[str]:
    """Hook names to record: full names, per-block suffixes ("attn.hook_pattern": every layer), or "all"."""
    if names is None or names == "all":
        return runs.all_hook_names(model)
    out = []
    for name in [names] if isinstance(names, str) else names:
        if name in runs.BLOCK_HOOKS or name in runs.MODEL_HOOKS:
            out += runs.hook_names(model, name)
        elif runs.has_hook(model, name):
            out.append(name)
        else:
            raise InputError(
                f"this model has no hook {name!r}: name one of runs.all_hook_names(model), or a suffix such as 'attn.hook_pattern'"
            )
    return list(dict.fromkeys(out))


# ---- edits: data in a context variable, never hooks on the model ------------------------------------------


@dataclass(frozen=True, eq=False)
class _Active:
    model: LoadedModel
    edit_set: iv.EditSet
    compiled: tuple  # engine.Edit, applied inside each call


_ACTIVE: contextvars.ContextVar[tuple[_Active, ...]] = contextvars.ContextVar("workbench_edits", default=())


class Edits:
    """`with wb.edits(model, "ablate head 1.2 mean; ablate mlp 0 zero"):` -- the facade's calls on `model` inside run edited.

    The edit set is the Intervene page's line (interventions.EditSet.parse), or an EditSet. Entering
    checks it against the model and computes what it needs (reference means, a resample prompt's run);
    nothing is attached to the model. Blocks nest: the inner block's edits apply after the outer's.
    """

    def __init__(self, model: LoadedModel, edit_set: str | iv.EditSet):
        self.model = _model(model)
        self.edit_set = edit_set if isinstance(edit_set, iv.EditSet) else iv.EditSet.parse(str(edit_set))
        if not self.edit_set.edits:
            raise InputError("the edit set is empty: write an edit such as 'ablate head 1.2 mean'")
        self._tokens: list[contextvars.Token] = []

    @property
    def labels(self) -> list[str]:
        return self.edit_set.labels()

    def __enter__(self) -> Edits:
        compiled = tuple(iv.compile_edits(self.model, self.edit_set))
        self._tokens.append(_ACTIVE.set((*_ACTIVE.get(), _Active(self.model, self.edit_set, compiled))))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def __repr__(self) -> str:
        return f"wb.edits({self.model.info.name!r}, {str(self.edit_set)!r})"


def edits(model: LoadedModel, edit_set: str | iv.EditSet) -> Edits:
    """A scoped edit set: see `Edits`."""
    return Edits(model, edit_set)


def _active(model: LoadedModel) -> list[_Active]:
    return [a for a in _ACTIVE.get() if a.model is model]


def _refuse_edits(model: LoadedModel, view: str) -> None:
    if _active(model):
        raise InputError(
            f"wb.{view} does not run under wb.edits: its analysis has no edited run; call it outside the `with` block "
            "(wb.run, wb.attention, wb.head_types, wb.lens, wb.features and wb.intervene apply the edits)"
        )


def _edit_note(model: LoadedModel) -> str:
    return "; ".join(str(a.edit_set) for a in _active(model))


def _with_edits(result, model: LoadedModel):
    """The result with the block's edit set in its provenance's settings (a frozen dataclass with `provenance`)."""
    if not _active(model):
        return result
    p = dict(result.provenance)
    p["settings"] = {**p.get("settings", {}), "edits": _edit_note(model)}
    return dataclasses.replace(result, provenance=p)


# ---- the run ----------------------------------------------------------------------------------------------


def run(model: LoadedModel, prompt: str, names: str | Iterable[str] | None = "all") -> runs.Run:
    """The prompt's forward pass (runs.Run): tokens, labels, logits and the activations `names` (default every hook).

    `run["blocks.1.attn.hook_pattern"]` is (head, query, key). Inside `wb.edits` the run is edited
    (never cached); outside it is the model's shared cached run (runs.run_prompt): clone a tensor
    before changing it.
    """
    model = _model(model)
    wanted = _names(model, names)
    active = _active(model)
    if not active:
        return runs.run_prompt(model, prompt, wanted)
    ids, dropped = runs.encode(model, prompt)  # (pos,) BOS first
    edits_ = [e for a in active for e in a.compiled]
    logits, cache = runs.run_edited(model, ids[None], edits_, names=wanted)  # (1, pos, d_vocab)
    return runs.Run(
        model=model.info.name,
        prompt=prompt,
        tokens=ids,
        labels=token_labels(model.tokenizer, ids.tolist()),
        logits=logits[0].float().cpu(),
        cache={n: cache[n][0].cpu() for n in wanted},
        truncated=dropped,
    )


# ---- the views ----------------------------------------------------------------------------------------------


def attention(model: LoadedModel, prompt: str, head: str | tuple[int, int] | None = None) -> Result:
    """Every head's attention pattern (attention.Patterns: pattern (layer, head, query, key)); `head` ("1.2") is the one drawn."""
    model = _model(model)
    focus = {} if head is None else {"head": _head(model, head)}
    if not _active(model):
        return Result(attention_analysis.patterns(model, prompt), focus)
    r = attention_analysis.patterns_of(run(model, prompt, "attn.hook_pattern"))
    return Result(_with_edits(dataclasses.replace(r, provenance=runs.provenance(model, [prompt], view="attention patterns")), model), focus)


def head_types(model: LoadedModel, prompt: str) -> Result:
    """Each head's share of attention on previous, duplicate and induction tokens, the first token, and its entropy
    (attention.HeadTypes: scores {type: (layer, head)}; `.ranked("induction", 1)` names the strongest)."""
    model = _model(model)
    return Result(_with_edits(attention_analysis.head_types(model, run(model, prompt, "attn.hook_pattern")), model))


def lens(
    model: LoadedModel, prompt: str, track: Sequence[str | int] = (), k: int = 5, tuned: bool = False, midpoints: bool = True
) -> Result:
    """The logit lens (or the model's tuned lens) at every point and position (lens.LensResult); `track` tokens (" stone")
    get their probability, rank and logit everywhere."""
    model = _model(model)
    if isinstance(track, str | int):
        track = [track]
    tracked = [_token(model, t, "tracked") for t in track]
    lens_ = None
    if tuned:
        lens_ = lens_analysis.load_tuned_lens(model)
        if lens_ is None:
            raise InputError(f"{model.info.name} has no tuned lens: train one with `python -m workbench.train lens`, or use tuned=False")
    edited = None
    if _active(model):
        edited = run(model, prompt, [name for _, name in lens_analysis.lens_points(model, midpoints)])
    r = lens_analysis.lens(model, prompt, k=k, tracked=tracked, tuned=lens_, midpoints=midpoints, run=edited)
    return Result(_with_edits(r, model))


def patch(
    model: LoadedModel,
    clean: str,
    corrupted: str,
    answer: str | int,
    wrong: str | int,
    site: str = "resid_pre",
    metric: str = "logit difference",
    direction: str = "denoising",
    method: str = "exact",
) -> Result:
    """Activation patching of every cell of `site` (patching.PatchResult, 0 = corrupted, 1 = clean); `method` "AtP*" or
    "AtP": the attribution-patching estimate (preview.py) instead of the exact sweep."""
    model = _model(model)
    _refuse_edits(model, "patch")
    pair = tasks.Pair(clean, corrupted, answer, wrong)
    if method == "exact":
        return Result(patching.sweep(model, pair, site, direction, metric=metric))
    if method not in preview.PREVIEW_METHODS:
        raise InputError(f"unknown method {method!r}: use exact or one of {', '.join(preview.PREVIEW_METHODS)}")
    return Result(preview.preview_sweep(model, pair, site, method=method, direction=direction, metric=metric))


def attribute(
    model: LoadedModel,
    prompt: str,
    answer: str | int | None = None,
    wrong: str | int | None = None,
    method: str = "integrated gradients",
    steps: int = 32,
    baseline: str = "zeros",
) -> Result:
    """Attribution of the answer's log-probability (or answer − wrong's logit difference): to the input tokens by
    `method` (attribution.METHODS: attribution.InputAttribution), or to every component, head and neuron by
    "direct logit attribution" (attribution.ComponentAttribution). `answer` None: the model's top prediction."""
    model = _model(model)
    _refuse_edits(model, "attribute")
    answer_id = int(runs.run_prompt(model, prompt).logits[-1].argmax()) if answer is None else _token(model, answer, "answer")
    wrong_id = None if wrong is None else _token(model, wrong, "wrong")
    if method == "direct logit attribution":
        return Result(attribution_analysis.component_attribution(model, prompt, answer_id, wrong_id))
    return Result(
        attribution_analysis.input_attribution(model, prompt, attribution_analysis.Answer((answer_id,), wrong_id), method, baseline, steps)
    )


def graph(
    model: LoadedModel,
    prompt: str,
    position: int = -1,
    threshold: float = graph_analysis.THRESHOLD,
    answer: str | int | None = None,
    wrong: str | int | None = None,
) -> Result:
    """The information-flow routes of the prediction after `position` (graph.Graph); `wrong` turns on the contrastive mode."""
    model = _model(model)
    _refuse_edits(model, "graph")
    answer_id = None if answer is None else _token(model, answer, "answer")
    wrong_id = None if wrong is None else _token(model, wrong, "wrong")
    return Result(graph_analysis.build(model, prompt, position, threshold, answer_id, wrong_id))


def intervene(
    model: LoadedModel,
    prompt: str,
    edit_set: str | iv.EditSet = "",
    answer: str | int | None = None,
    wrong: str | int | None = None,
    metric: str | None = None,
    tokens: int = 12,
) -> Result:
    """The prompt run without and with the edits (interventions.Intervention): next-token distributions, KL at each
    position, the metric before and after, both greedy continuations. Inside `wb.edits` the block's edits come
    first, then `edit_set`'s. `answer` (and `wrong`): the metric's tokens (default: the original run's top token)."""
    model = _model(model)
    given = edit_set if isinstance(edit_set, iv.EditSet) else iv.EditSet.parse(str(edit_set))
    outer = [a.edit_set for a in _active(model)]
    combined = iv.EditSet(
        tuple(e for s in [*outer, given] for e in s.edits),
        given.reference or next((s.reference for s in outer if s.reference), ()),
        given.resample or next((s.resample for s in outer if s.resample), ""),
    )
    chosen = None
    if answer is not None:
        kind = metric or ("logit difference" if wrong is not None else "probability")
        chosen = iv.Metric(kind, _token(model, answer, "answer"), None if wrong is None else _token(model, wrong, "wrong"))
    elif metric not in (None, "probability"):
        raise InputError(f"the {metric} needs an answer token (answer=' cloud')")
    return Result(iv.intervene(model, prompt, combined, chosen, Sampling(max_new_tokens=tokens)))


def features(model: LoadedModel, prompt: str, sae: str | None = None, feature: int | None = None) -> Result:
    """Every SAE's feature activations on the prompt (features.PromptFeatures: acts {sae: (position, feature)}); `sae`
    (its hook name, e.g. "blocks.1.hook_resid_post") and `feature` choose what the figure shows."""
    model = _model(model)
    found = sae_registry.sae_set(model)
    if not found:
        raise InputError(f"{model.info.name} has no SAEs: use wb.load('english'), or train them with `python -m workbench.train sae`")
    focus = {}
    if sae is not None:
        if sae not in found:
            raise InputError(f"no SAE {sae!r} on {model.info.name}; it has {', '.join(found)}")
        focus["sae"] = sae
    if feature is not None:
        focus["feature"] = found[focus.setdefault("sae", next(iter(found)))].check_feature(feature)
    edited = run(model, prompt, list(dict.fromkeys(s.hook_name for s in found.values()))) if _active(model) else None
    return Result(_with_edits(features_analysis.prompt_features(model, found, prompt, run=edited), model), focus)
