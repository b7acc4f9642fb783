"""Guidance for the Intervene page: which head to ablate, and how hard to steer.

`ablation_sweep` ablates every head alone in batched engine passes (each ablated run joins the batch at its own
layer, from the unedited residual stream: the layers before it cannot change; the last layer runs the last position
only), after checking the engine's logits against the bridge's once per model, and falls back to batched bridge hooks
where they differ; `steering_sweep` runs a range of coefficients and reports the answer tokens' probability against
the KL on neutral prompts, where steering starts to break the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workbench import conventions, engine
from workbench.edit_maps import AddAt
from workbench.edit_specs import HOW, EditSet, Steer, edit_line
from workbench.edit_values import mean_reference, reference_mean
from workbench.errors import InputError
from workbench.interventions import compile_edits, finite, kl
from workbench.metrics import Metric
from workbench.model import LoadedModel
from workbench.runs import check_token_ids, encode, provenance, run_edited
from workbench.tokens import token_labels

NO_EDITS = EditSet()  # the sweeps' default: no reference prompts, no resample prompt

# ---- guidance: every head ablated, ranked -----------------------------------------------------------


@dataclass(frozen=True)
class AblationSweep:
    """The metric with each head ablated alone: `values` (layer, head); `before` unablated."""

    how: str
    metric: Metric
    metric_label: str
    values: torch.Tensor  # (layer, head) the metric with that head ablated
    before: float
    backend: str  # engine.backend's choice: "engine" (one batched pass), "bridge hooks" or "nnsight"
    note: str = ""
    reference: str = ""  # for `how` "mean": what the mean is over (mean_reference); else ""
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def effect(self) -> torch.Tensor:
        """(layer, head) change of the metric when the head is ablated."""
        return self.values - self.before

    def ranked(self, k: int | None = None) -> list[dict]:
        """Heads by |effect|, largest first."""
        flat = self.effect.flatten()
        order = flat.abs().argsort(descending=True)[: k or len(flat)]
        H = self.values.shape[1]
        return [
            dict(rank=r + 1, layer=int(i) // H, head=int(i) % H, metric=float(self.values.flatten()[i]), effect=float(flat[i]))
            for r, i in enumerate(order.tolist())
        ]


def _head_values(model: LoadedModel, edits: EditSet, how: str, n_tokens: int, layer: int) -> torch.Tensor:
    """(head, n_tokens or 1, d_head) what each head of `layer` becomes (zeros, the reference mean, or resampled)."""
    i = model.info
    hook = f"blocks.{layer}.attn.hook_z"
    if how == "zero":
        return torch.zeros(i.n_heads, 1, i.d_head)
    if how == "zero-whole":
        return -conventions.head_constants(model)[layer][:, None]  # (head, 1, d_head)
    if how == "mean":
        return reference_mean(model, edits.reference, hook)[:, None]  # (head, 1, d_head)
    ids, _ = encode(model, edits.resample, truncate=True)
    _, cache = run_edited(model, ids[None], names=[hook])
    return cache[hook][0].float().cpu().transpose(0, 1)  # (head, pos, d_head)


def ablation_sweep(model: LoadedModel, prompt: str, metric: Metric, how: str = "mean", edits: EditSet = NO_EDITS) -> AblationSweep:
    """Each head ablated alone (`how`: zero, mean, resample; `edits` gives the reference set / resample prompt)."""
    if how not in HOW:
        raise InputError(f"unknown ablation {how!r}; use one of {', '.join(HOW)}")
    if how == "resample" and not edits.resample.strip():
        raise InputError("a resample sweep needs a prompt to resample from")
    metric = metric.check(model)
    ids, _ = encode(model, prompt)
    i = model.info
    L, H, n = i.n_layers, i.n_heads, len(ids)
    values = {layer: _head_values(model, edits, how, n, layer) for layer in range(L)}
    chosen = engine.backend(model)  # checked against the model's logits once per set of weights
    if chosen.engine:
        logits = _engine_sweep(chosen.weights, ids, values, L, H)  # (L * H, d_vocab)
        before = float(metric.value(logits[-1:].float().cpu()))  # the last row: nothing ablated
        logits = logits[:-1]
    else:
        plain, _ = run_edited(model, ids[None], last_only=True)
        before = float(metric.value(plain[:, -1].float().cpu()))
        batch_edits = [
            engine.Edit("map", "z", layer, rows=torch.arange(layer * H, (layer + 1) * H), fn=_RowHeads(values[layer])) for layer in range(L)
        ]
        logits, _ = run_edited(model, ids[None].expand(L * H, -1), batch_edits, last_only=True)
        logits = logits[:, -1]
    result = metric.value(logits.float().cpu()).reshape(L, H)
    return AblationSweep(
        how, metric, metric.label(model.tokenizer), result, before, chosen.name, chosen.note(),
        mean_reference(model, edits.reference) if how == "mean" else "",
        provenance(model, [prompt], how=how, convention=conventions.convention(how), metric=metric.kind, answer=metric.answer,
                   wrong=metric.wrong, edits=str(edits), backend=chosen.name),
    )  # fmt: skip


def _engine_sweep(w: engine.Weights, ids: torch.Tensor, values: dict[int, torch.Tensor], L: int, H: int) -> torch.Tensor:
    """(L * H + 1, d_vocab) next-token logits with each head ablated alone (row layer * H + head), then unablated.

    Two engine calls, each computing only what can change: the heads of layers before the last join a
    batch at their own layer from the unablated residual stream (the last layer then runs the last query
    only); a last-layer head changes the last position alone, so its rows run that position only, with the
    unablated keys and values of the others (engine.forward's `past`).
    """
    device = w.W_U.device
    n, last = ids.shape[0], L - 1
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)] + [f"blocks.{last}.attn.hook_{kv}" for kv in "kv"]
    with torch.no_grad():
        base = engine.forward(w, ids[None].to(device), capture=names, last_only=True)
        out = []
        if last:
            enter, edits = {}, []
            for layer in range(last):
                enter[layer] = base.captured[f"blocks.{layer}.hook_resid_pre"].expand(H, -1, -1)  # (H, pos, d_model)
                rows = torch.arange(layer * H, (layer + 1) * H, device=device)
                edits.append(engine.Edit("map", "z", layer, rows=rows, fn=_RowHeads(values[layer].to(device))))
            out.append(engine.forward(w, enter=enter, edits=edits, last_only=True).logits)  # (last * H, d_vocab)
        v = values[last]  # (head, 1 or pos, d_head)
        v = v if v.shape[1] == 1 else v[:, n - 1 : n] if v.shape[1] >= n else None  # None: a resample prompt too short to reach it
        resid = base.captured[f"blocks.{last}.hook_resid_pre"][:, n - 1 :].expand(H, -1, -1)  # (H, 1, d_model)
        past = {last: tuple(base.captured[f"blocks.{last}.attn.hook_{kv}"][:, : n - 1] for kv in "kv")} if n > 1 else None
        edits = [] if v is None else [engine.Edit("map", "z", last, fn=_RowHeads(v.to(device)))]
        out.append(engine.forward(w, resid=resid, start=last, edits=edits, last_only=True, past=past).logits)  # (H, d_vocab)
        out.append(base.logits)  # (1, d_vocab)
    return torch.cat(out).float().cpu()


@dataclass(frozen=True, eq=False)
class _RowHeads:
    """z (rows, pos, head, d_head) of a layer's sweep rows -> row r with head r set to values[r] ((head, 1 or pos, d_head))."""

    values: torch.Tensor

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        heads = torch.arange(z.shape[0], device=z.device)  # row r is head r's run
        if self.values.shape[1] == 1:  # one value for every position
            z[heads, :, heads] = self.values.to(z).expand(-1, z.shape[1], -1)  # (head, pos, d_head)
        else:  # per position; positions past a resample prompt's end stay as they are
            n = min(z.shape[1], self.values.shape[1])
            z[heads, :n, heads] = self.values[:, :n].to(z)
        return z


# ---- guidance: the steering coefficient against the damage ------------------------------------------


@dataclass(frozen=True)
class SteeringSweep:
    """Per coefficient: the answer tokens' probability on held-out prompts, and the KL on neutral prompts."""

    coefficients: torch.Tensor  # (c,)
    answer: torch.Tensor  # (c,) mean over prompts and positions of the answer tokens' total next-token probability
    kl_neutral: torch.Tensor  # (c,) mean KL(unsteered ‖ steered) over the neutral prompts' positions, nats
    answer_labels: list[str]
    steer: str  # the steering edit, as its compact line
    provenance: dict = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        return [
            dict(coefficient=float(c), answer_probability=float(t), kl_neutral=float(d))
            for c, t, d in zip(self.coefficients, self.answer, self.kl_neutral, strict=True)
        ]


def steering_sweep(
    model: LoadedModel,
    steer: Steer,
    answers: Sequence[int],
    prompts: Sequence[str],
    neutral: Sequence[str],
    coefficients: Sequence[float] = (0, 1, 2, 4, 8, 16),
    edits: EditSet = NO_EDITS,
) -> SteeringSweep:
    """One batched run per prompt, one row per coefficient: do the answer tokens rise before the neutral text breaks?"""
    answers = check_token_ids(model, list(answers), "answer token")
    if not answers:
        raise InputError("name at least one answer token")
    if not prompts or not neutral:
        raise InputError("the sweep needs held-out prompts (for the answer tokens) and neutral prompts (for the KL)")
    coefficients = torch.tensor([finite(float(c), "a coefficient") for c in coefficients])
    unit = dataclasses.replace(steer, coefficient=1.0)
    (edit,) = compile_edits(model, dataclasses.replace(edits, edits=(unit,)))
    vector = coefficients[:, None] * edit.fn.vector  # (c, d_model): one steering vector per row
    batched = dataclasses.replace(edit, fn=AddAt(vector, edit.fn.positions))
    skip = 1 if model.bos_id is not None else 0

    def runs(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, _ = encode(model, prompt, truncate=True)
        plain, _ = run_edited(model, ids[None])
        steered, _ = run_edited(model, ids[None].expand(len(coefficients), -1), [batched])
        return plain[0, skip:].float().cpu(), steered[:, skip:].float().cpu()  # (pos, d_vocab), (c, pos, d_vocab)

    answer = torch.stack([r[1].softmax(-1)[..., answers].sum(-1).mean(-1) for r in map(runs, prompts)]).mean(0)  # (c,)
    damage = torch.stack([kl(plain[None], steered).mean(-1) for plain, steered in map(runs, neutral)]).mean(0)  # (c,)
    return SteeringSweep(
        coefficients, answer, damage, token_labels(model.tokenizer, answers), edit_line(unit),
        provenance(model, [*prompts, *neutral], steer=edit_line(unit), answers=answers, coefficients=coefficients.tolist()),
    )  # fmt: skip
