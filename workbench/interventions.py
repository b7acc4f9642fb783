"""Interventions: change one thing inside the model and see what it does, next to the run it came from.

Three kinds of edit, each a small frozen record (an `EditSpec`) that turns into engine edits
(engine.Edit, applied inside one forward call through the bridge's hooks under the model's lock:
nothing stays on the shared model, and no other session sees them):

- `Ablate` a head (its output z), an MLP layer (its output), a neuron (after the activation) or an
  SAE feature, by *zero*, by its *mean* over a reference set of prompts (default: the model's
  shipped held-out text, BOS positions left out: BOS is no typical position), or by *resampling*
  it from another prompt (its activation at the same position; positions past that prompt's end
  are left as they are).
- `Steer`: add coefficient × vector to the residual stream at a layer, at every position or at
  chosen ones. The vector is the difference between two prompt sets (contrastive activation addition:
  mean activation of the "plus" prompts minus that of the "minus" prompts, Turner et al. 2023,
  Rimsky et al. 2024), an SAE feature's decoder direction, or a saved vector file
  (.safetensors, .pt, .npy), checked for width.
- `Clamp` a neuron or a feature to a value.

An `EditSet` (the edits, the reference prompts, the resample prompt) is the experiment's state:
it reads and writes a compact line for the URL (`EditSet.parse` / `str`) and a mapping for
JSON/YAML spec files (`from_dict` / `to_dict`). `intervene` runs a prompt with and without it:
the next-token distributions, per-position KL, a metric before and after, and both continuations.

Split along its seams (#25): the edit specs and their parsing in edit_specs.py, the engine's map functions in
edit_maps.py, where values come from in edit_values.py, the two sweeps (which head to ablate, how hard to
steer) in intervention_sweeps.py; here the checking, compiling and the experiment.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from workbench import conventions, engine
from workbench.edit_maps import AddAt, FeatureTo, SetTo

# the edit specs, used here; callers read iv.EditSet, iv.Ablate, iv.Clamp, iv.Steer from here too (in ~100 places)
from workbench.edit_specs import HOW, STEER_SITES, UNITS, VECTORS, Ablate, Clamp, EditSet, Steer
from workbench.edit_values import difference_vector, load_sae, load_vector, mean_reference, reference_mean
from workbench.errors import InputError
from workbench.generate import Generation, Sampling, generate
from workbench.metrics import Metric
from workbench.model import LoadedModel
from workbench.runs import encode, has_hook, provenance, run_edited
from workbench.tokens import token_labels

METRICS = ("probability", "logit difference", "log-probability")  # metrics.METRICS, in the page's order (its default first)
CONTINUATION = Sampling(max_new_tokens=12)  # the continuations compared, by default greedy
# the site each ablated unit lives at (engine.SITE_HOOKS)
UNIT_SITES = {"head": "z", "mlp": "mlp_out", "neuron": "mlp_post"}


# ---- checking and compiling an edit set ------------------------------------------------------------


def _check_layer(model: LoadedModel, layer: int | None, what: str) -> int:
    n = model.info.n_layers
    if layer is None or not 0 <= layer < n:
        raise InputError(f"{what}: layer {layer} does not exist; this model has layers 0 to {n - 1}")
    return layer


def _check_site(model: LoadedModel, site: str, layer: int) -> None:
    hook = f"blocks.{layer}.{engine.SITE_HOOKS[site]}"
    if not has_hook(model, hook):
        raise InputError(f"this model has no {site} (parallel attention and MLP blocks have no resid_mid); steer at resid_pre")


def finite(value: float, what: str) -> float:
    """The value as a float; InputError unless it is a finite number (a bool is not one)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value}")
    return float(value)


def check(model: LoadedModel, edits: EditSet) -> None:
    """InputError with one line for the first edit that cannot apply to this model (nothing is run)."""
    i = model.info
    for e in edits.edits:
        what = e.label()
        if isinstance(e, Steer):
            finite(e.coefficient, f"{what}: the coefficient")
            if e.vector not in VECTORS:
                raise InputError(f"{what}: unknown vector source {e.vector!r}; use one of {', '.join(VECTORS)}")
            if e.vector == "feature":
                s = load_sae(model, e.sae)
                if e.feature is None:
                    raise InputError(f"{what}: name the feature (feature=N)")
                s.check_feature(e.feature)
            else:
                if e.site not in STEER_SITES:
                    raise InputError(f"{what}: steer at one of {', '.join(STEER_SITES)}, not {e.site!r}")
                _check_site(model, e.site, _check_layer(model, e.layer, what))
                if e.vector == "file":
                    if not e.file:
                        raise InputError(f"{what}: give the vector file (file=...)")
                    load_vector(e.file, i.d_model)
                elif not e.plus or not e.minus:
                    raise InputError(f"{what}: a difference vector needs prompts on both sides (plus and minus)")
            continue
        if e.unit not in UNITS:
            raise InputError(f"unknown unit {e.unit!r}: use one of {', '.join(UNITS)}")
        if isinstance(e, Ablate) and e.how not in HOW:
            raise InputError(f"{what}: unknown ablation {e.how!r}; use one of {', '.join(HOW)}")
        if isinstance(e, Ablate) and e.how == "resample" and not edits.resample.strip():
            raise InputError(f"{what}: a resample ablation needs a prompt to resample from (resample ...)")
        if isinstance(e, Clamp):
            finite(e.value, f"{what}: the value")
        if e.unit == "feature":
            load_sae(model, e.sae).check_feature(e.index)
            continue
        _check_layer(model, e.layer, what)
        size = {"head": i.n_heads, "neuron": i.d_mlp}.get(e.unit)
        if size is not None and (e.index is None or not 0 <= e.index < size):
            raise InputError(
                f"{e.unit} {e.layer}.{e.index} does not exist: this model has {e.unit}s 0 to {size - 1} in each of layers 0 to {i.n_layers - 1}"
            )


def compile_edits(model: LoadedModel, edits: EditSet) -> list[engine.Edit]:
    """The engine edits of an edit set (checked first); values from the reference set or the resample prompt as asked."""
    check(model, edits)
    resampled: dict[str, torch.Tensor] = {}

    def resample(hook: str) -> torch.Tensor:  # (pos, ...) the resample prompt's activation, BOS included
        if hook not in resampled:
            ids, _ = encode(model, edits.resample, truncate=True)
            _, cache = run_edited(model, ids[None], names=[hook])
            resampled[hook] = cache[hook][0].float().cpu()
        return resampled[hook]

    out = []
    for e in edits.edits:
        if isinstance(e, Steer):
            if e.vector == "feature":
                s = load_sae(model, e.sae)
                vector, site, layer = s.decoder[s.check_feature(e.feature)], s.site, s.layer
                if site == "z":  # a hook_z SAE's row, each head's slice on its head: (head, d_head)
                    vector = vector.reshape(model.info.n_heads, model.info.d_head)
            else:
                site, layer = e.site, e.layer
                vector = (
                    load_vector(e.file, model.info.d_model)
                    if e.vector == "file"
                    else difference_vector(model, e.plus, e.minus, layer, site)
                )
            out.append(engine.Edit("map", site, layer, fn=AddAt(e.coefficient * vector, e.positions)))
            continue
        if e.unit == "feature":
            s = load_sae(model, e.sae)
            f = s.check_feature(e.index)
            if isinstance(e, Clamp):
                values, per = torch.tensor(e.value), False
            elif e.how in ("zero", "zero-whole"):  # a feature's zero is the same in both conventions
                values, per = torch.tensor(0.0), False
            elif e.how == "mean":
                values = reference_mean(model, edits.reference, s.hook_name, lambda a, s=s, f=f: s.encode(a)[..., f], key=f"{id(s)}:{f}")
                per = False
            else:
                values, per = s.encode(resample(s.hook_name))[..., f], True
            out.append(engine.Edit("map", s.site, s.layer, fn=FeatureTo(s, f, values, per, e.positions)))
            continue
        site = UNIT_SITES[e.unit]
        hook = f"blocks.{e.layer}.{engine.SITE_HOOKS[site]}"
        head = e.index if e.unit == "head" else None
        index = e.index if e.unit == "neuron" else None
        if isinstance(e, Clamp):
            values, per = torch.tensor(e.value), False
        elif e.how == "resample":
            act = resample(hook)  # (pos, ...) or (pos, head, d_head)
            values, per = (act[:, head] if head is not None else act), True
            values = values[:, index] if index is not None else values
        else:
            mean = reference_mean(model, edits.reference, hook) if e.how == "mean" else None
            shape = {"head": (model.info.d_head,), "mlp": (model.info.d_model,), "neuron": ()}[e.unit]
            values = torch.zeros(shape) if mean is None else (mean[head] if head is not None else mean)
            if e.how == "zero-whole" and head is not None:  # z = −c_h: its output and its constant output cancel
                values = -conventions.head_constants(model)[e.layer, head]
            values = values[index] if index is not None and values.ndim else values
            per = False
        out.append(engine.Edit("map", site, e.layer, head=head, fn=SetTo(values, per, index, e.positions)))
    return out


# ---- the experiment -----------------------------------------------------------------------------------


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(...,) KL(p ‖ q) in nats between the distributions of two logit tensors (..., d_vocab)."""
    lp, lq = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


@dataclass(frozen=True)
class Intervention:
    """A prompt run with and without an edit set: next-token distributions, per-position KL, metric, continuations."""

    prompt: str
    edits: EditSet
    edit_labels: list[str]
    labels: list[str]  # (pos,) the prompt's tokens
    kl: torch.Tensor  # (pos,) KL(original ‖ edited) of the next-token distribution after each position, nats
    ids: list[int]  # the tokens of the next-token table: each run's top k, together
    token_labels: list[str]
    original_probs: torch.Tensor  # (len(ids),) next-token probabilities after the last position
    edited_probs: torch.Tensor
    metric: Metric
    metric_label: str
    before: float
    after: float
    original: Generation
    edited: Generation
    differs: list[bool]  # per generated step: the edited continuation's token differs from the original's there
    reference: str = ""  # what the edit set's mean ablations average over (mean_reference); "" when it has none
    backend: str = "bridge hooks"  # always the model's own hooks (engine.model_hooks): generation samples through them
    provenance: dict = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        """The next-token table, most likely (edited) first."""
        return [
            dict(id=i, token=t, original=float(a), edited=float(b), change=float(b - a))
            for i, t, a, b in zip(self.ids, self.token_labels, self.original_probs, self.edited_probs, strict=True)
        ]

    def continuation_rows(self) -> list[dict]:
        return [
            dict(step=n, position=a.position, original=a.chosen_label, edited=b.chosen_label, differs=c)
            for n, (a, b, c) in enumerate(zip(self.original.steps, self.edited.steps, self.differs, strict=False))
        ]


def intervene(
    model: LoadedModel, prompt: str, edits: EditSet, metric: Metric | None = None, sampling: Sampling = CONTINUATION, k: int = 10
) -> Intervention:
    """Runs `prompt` without and with `edits`; `metric` None: the probability of the original run's top next token.

    Always through the model's own hooks (runs.run_edited; `backend` records which): one unbatched pair of runs gains
    nothing from the engine, and the continuations are sampled through the same hooks."""
    ids, _ = encode(model, prompt)
    engine_edits = compile_edits(model, edits)
    original, _ = run_edited(model, ids[None])  # (1, pos, d_vocab)
    # no edits (the page's first visit): the edited run is the original one, computed once
    edited = run_edited(model, ids[None], engine_edits)[0] if engine_edits else original
    original, edited = original[0].float().cpu(), edited[0].float().cpu()  # (pos, d_vocab)
    if metric is None:
        metric = Metric("probability", int(original[-1].argmax()))
    metric = metric.check(model)
    p, q = original[-1].softmax(-1), edited[-1].softmax(-1)  # (d_vocab,)
    top = list(dict.fromkeys([*q.topk(k).indices.tolist(), *p.topk(k).indices.tolist()]))
    gen_a = generate(model, prompt, sampling)
    gen_b = generate(model, prompt, sampling, engine_edits) if engine_edits else gen_a  # the same seed: the same draws
    differs = [a.chosen_id != b.chosen_id for a, b in zip(gen_a.steps, gen_b.steps, strict=False)]
    differs += [True] * (len(gen_b.steps) - len(differs))
    return Intervention(
        prompt=prompt,
        edits=edits,
        edit_labels=edits.labels(),
        labels=token_labels(model.tokenizer, ids.tolist()),
        kl=kl(original, edited),
        ids=top,
        token_labels=token_labels(model.tokenizer, top),
        original_probs=p[top],
        edited_probs=q[top],
        metric=metric,
        metric_label=metric.label(model.tokenizer),
        before=float(metric.value(original[-1:])),
        after=float(metric.value(edited[-1:])),
        original=gen_a,
        edited=gen_b,
        differs=differs,
        reference=mean_reference(model, edits.reference) if any(isinstance(e, Ablate) and e.how == "mean" for e in edits.edits) else "",
        backend=engine.model_hooks(model),
        provenance=provenance(
            model, [prompt], edits=str(edits), metric=metric.kind, answer=metric.answer, wrong=metric.wrong,
            sampling=dataclasses.asdict(sampling), backend=engine.model_hooks(model),
            conventions=[e.convention for e in edits.edits if isinstance(e, Ablate)], residual=conventions.RESIDUAL,
        ),
    )  # fmt: skip
