"""Attribution: which input tokens, and which heads, MLPs and neurons, produced a prediction.

Input attribution (captum) scores each input token for a metric of the output:
- the metric is the log-probability of the answer token at the next position, or the logit
  difference: the answer's logit minus the wrong token's;
- Integrated Gradients integrates the gradient along a straight path from a baseline to the
  input's token embeddings; its attributions add up to metric(input) − metric(baseline)
  (completeness), and captum's convergence delta is the gap. The adaptive variant (ig.py) grows
  its Gauss-Legendre rule (8, 16, ... nodes, at most `steps`) until the gap is at most 1%;
- Saliency is the gradient's norm per token (unsigned); Input × Gradient is embedding · gradient;
- Feature Ablation replaces one token's embedding at a time with the baseline's and records the drop.
Baselines: "zeros" is the zero vector in place of each token's embedding (BOS stays), "BOS token"
and "mask token" put that token's embedding there.
The gradient methods work on the token embeddings: a hook on `hook_embed` swaps in the
embeddings captum asks about, so positions and everything downstream stay the model's own.
For a continuation of several tokens each answer token is attributed with the earlier ones
appended to the prompt.

Component attribution (direct logit attribution) splits the final residual stream into what
each part of the model wrote -- embeddings, each layer's attention and MLP, each head, each MLP
neuron -- and projects each part on the answer's unembedding direction (answer − wrong), with the
final norm's scale frozen at its value on this prompt. The parts add up to the metric's logit minus
its unembedding bias. Components and heads come from `transformer_lens`'s
`direct_logit_attribution` (it requires compatibility mode); neurons are computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients, Saliency
from torch.utils.checkpoint import checkpoint

from workbench import cost, engine, ig
from workbench.errors import InputError
from workbench.lens import lens_points
from workbench.metrics import Metric, metric_for
from workbench.model import LoadedModel
from workbench.runs import activation_cache, check_position, check_token_ids, encode, hook_names, provenance, run_prompt, run_tokens
from workbench.tokens import single_token_id, token_labels

METHODS = ("integrated gradients", "integrated gradients (adaptive)", "saliency", "input × gradient", "feature ablation")
ADAPTIVE_TOLERANCE = 0.01  # the adaptive method's completeness error, relative to metric(input) − metric(baseline)
BASELINES = ("zeros", "BOS token", "mask token")


@dataclass(frozen=True)
class Answer:
    """What to attribute: the answer token (or several, a continuation), or answer − wrong (the logit difference)."""

    tokens: tuple[int, ...]  # one or more answer ids, in order
    wrong: int | None = None  # the wrong token of "logit(answer) − logit(wrong)" (only with one answer token)

    def describe(self, labels: list[str]) -> str:
        """The metric in words, from the labels of the answer tokens (then the wrong one)."""
        if self.wrong is not None:
            return f"logit({labels[0]}) − logit({labels[1]})"
        return "log p(" + " ".join(labels[: len(self.tokens)]) + ")"


def attribution_metric(answer: int, wrong: int | None) -> Metric:
    """The metric attributed: the logit difference with a wrong token, else the answer's log-probability (metrics.metric_for)."""
    return metric_for(answer, wrong, "log-probability")


@dataclass(frozen=True)
class InputAttribution:
    """Scores of every input token for each answer token; NaN where a token is not in that answer's context."""

    method: str
    baseline: str
    steps: int
    metric_label: str  # the metric in words, e.g. "log p(␣Paris)"
    answer_labels: list[str]  # (answer,)
    labels: list[str]  # (pos,) prompt tokens, then the continuation tokens but the last
    scores: torch.Tensor  # (answer, pos)
    metric: torch.Tensor  # (answer,) metric at the input
    metric_baseline: torch.Tensor  # (answer,) metric at the baseline
    delta: torch.Tensor  # (answer,) convergence delta (integrated gradients), else NaN
    # engine.backend's choice for a long prompt's checkpointed gradients ("engine"), else the model's own hooks
    backend: str = "bridge hooks"
    settings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict, repr=False)

    def max_delta(self) -> float:
        """Largest |convergence delta| over targets (NaN when the method has none)."""
        finite = self.delta[torch.isfinite(self.delta)]
        return float(finite.abs().max()) if finite.numel() else float("nan")

    def completeness_gap(self) -> float:
        """Largest |sum of attributions − (metric − metric at baseline)| over targets, for IG."""
        return float((self.scores.nansum(-1) - (self.metric - self.metric_baseline)).abs().max())

    def rows(self) -> list[dict]:
        return [
            dict(answer=t_label, position=pos, token=label, score=float(self.scores[t, pos]))
            for t, t_label in enumerate(self.answer_labels)
            for pos, label in enumerate(self.labels)
            if not math.isnan(float(self.scores[t, pos]))
        ]


def embed_forward(model: LoadedModel, ids: torch.Tensor, answer: int, wrong: int | None):
    """f(token embeddings (batch, pos, d_model)) -> (batch,) metric, with ids (pos,) fixed.

    The embeddings are what `hook_embed` carries (for Gemma already scaled by √d_model).
    """

    def forward(embeds: torch.Tensor) -> torch.Tensor:
        def swap(act, hook):
            return embeds.to(act.dtype)  # integrated in float32; a bfloat16 or float16 model computes in its own dtype

        batch = ids[None].expand(embeds.shape[0], -1)
        logits, _ = run_tokens(model, batch, hooks=[("hook_embed", swap)], last_only=True, grad=torch.is_grad_enabled())
        return attribution_metric(answer, wrong).value(logits[:, -1].float())  # only the last position is read

    return forward


def checkpointed_forward(model: LoadedModel, ids: torch.Tensor, answer: int, wrong: int | None):
    """embed_forward's function through the forward engine, each block checkpointed (for long prompts).

    A backward pass through the model keeps every block's insides (a 1,024-token GPT-2 small: ~2 GB
    a sequence, most of it attention scores); checkpointing keeps only the residual stream between
    blocks and recomputes one block's insides when the backward pass reaches it (about one more
    forward pass of time), so several IG steps fit the budget. Raises engine.Unsupported when
    engine.backend does not choose the engine.
    """
    w = engine.checked_weights(model)
    t = ids.to(w.W_E.device)[None]  # (1, pos)
    with torch.no_grad():
        offset = engine.embed(w, t) - w.W_E[t] * w.embed_scale  # (1, pos, d_model): learned positions, else zeros
    last = w.n_layers - 1

    def forward(embeds: torch.Tensor) -> torch.Tensor:
        x = embeds.to(offset.device) + offset  # (batch, pos, d_model), the residual stream before block 0
        run = engine.ForwardCall((), ())
        for index in range(w.n_layers):
            x = checkpoint(engine.block, w, index, x, run, index == last, use_reentrant=False)  # (batch, d_model) after the last
        logits = w.ln_final(x) @ w.W_U + (w.b_U if w.b_U is not None else 0)  # (batch, d_vocab)
        return attribution_metric(answer, wrong).value(logits.float())

    return forward


def token_embeddings(model: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """(1, pos, d_model) what hook_embed carries for ids (pos,)."""
    _, cache = run_tokens(model, ids[None], ["hook_embed"], last_only=True)
    return cache["hook_embed"].float()


def baseline_embeddings(model: LoadedModel, inputs: torch.Tensor, base_id: int | None) -> torch.Tensor:
    """(1, pos, d_model) the baseline the attributions start from, for `inputs` (1, pos, d_model) the prompt's embeddings:
    the zero vector (`base_id` None) or token `base_id`'s embedding at every position but the first, which keeps the
    prompt's: BOS stays BOS, since the path changes the prompt, not the start marker."""
    if base_id is None:
        base = torch.zeros_like(inputs).detach()
    else:
        base = token_embeddings(model, torch.full(inputs.shape[1:2], base_id, dtype=torch.long))  # (pos,) ids, as the prompt's
    base[0, 0] = inputs[0, 0].detach()
    return base


def baseline_token(model: LoadedModel, baseline: str) -> int | None:
    """The token a baseline puts at every position but the first, or None for the zero embedding."""
    if baseline == "zeros":
        return None
    if baseline == "BOS token":
        if model.bos_id is None:
            raise InputError("this model's tokenizer has no BOS token: choose the zeros baseline")
        return model.bos_id
    if baseline == "mask token":
        if model.tokenizer.mask_token_id is None:
            raise InputError("this model's tokenizer has no mask token: choose the zeros or BOS-token baseline")
        return model.tokenizer.mask_token_id
    raise InputError(f"unknown baseline '{baseline}': use one of {', '.join(BASELINES)}")


def estimate(model: LoadedModel, prompt: str, answer: Answer, method: str = "integrated gradients", steps: int = 32) -> cost.Estimate:
    """What `input_attribution` will cost, before it runs (per answer token: the method's passes, then two forwards for the metric).

    Integrated gradients: `steps` forward and backward passes (the adaptive method: at most that
    many); saliency and input × gradient: one of each; feature ablation: one forward per position.
    """
    ids, _ = encode(model, prompt)
    n = len(ids) + len(answer.tokens) - 1
    forward, backward = {
        "integrated gradients": (steps, steps),
        "integrated gradients (adaptive)": (steps, steps),
        "saliency": (1, 1),
        "input × gradient": (1, 1),
        "feature ablation": (n, 0),
    }.get(method, (steps, steps))
    k = len(answer.tokens)
    return cost.estimate(model, f"{method} on {n} tokens", n, passes=k * (forward + 2), backward=k * backward, calls=k * 4)


class _Calls:
    """Counts the model calls of a long attribution and reports each to `progress` (cost.report: False cancels)."""

    def __init__(self, progress, total: int, what: str):
        self.progress, self.total, self.what, self.done = progress, total, what, 0

    def counting(self, forward):
        def counted(x: torch.Tensor) -> torch.Tensor:
            out = forward(x)
            self.done += 1
            self.total = max(self.total, self.done)  # the adaptive method may take a level more than planned
            cost.report(self.progress, self.done, self.total, self.what)
            return out

        return counted


def input_attribution(
    model: LoadedModel,
    prompt: str,
    answer: Answer,
    method: str = "integrated gradients",
    baseline: str = "zeros",
    steps: int = 32,
    internal_batch_size: int | None = None,
    progress=None,
) -> InputAttribution:
    """Attributes the answer's metric to every input token (see the module doc).

    Integrated gradients runs its steps `internal_batch_size` at a time (default: as many as the
    memory budget allows for this prompt's length, see long.ig_batch; captum's default puts every
    step in one batch, which a long prompt cannot afford). `progress(done, total)` is told after
    every model call (a batch of steps); its False cancels there (cost.report).
    """
    if method not in METHODS:
        raise InputError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if not (isinstance(steps, int) and 2 <= steps <= 1024):
        raise InputError(f"steps must be an integer between 2 and 1024, got {steps}")
    if not answer.tokens:
        raise InputError("choose an answer token")
    if answer.wrong is not None and len(answer.tokens) != 1:
        raise InputError("a logit difference compares two single tokens: give one answer and one wrong token")
    check_token_ids(model, [*answer.tokens, *(() if answer.wrong is None else (answer.wrong,))], "answer and wrong token")
    base_id = baseline_token(model, baseline)
    ids, _ = encode(model, prompt)
    from workbench.long import LONG_TOKENS, ig_batch  # imported here: long imports the views that import this module

    n_full = len(ids) + len(answer.tokens) - 1
    checkpointed = n_full > LONG_TOKENS and method != "feature ablation" and engine.backend(model).engine
    if internal_batch_size is None:
        internal_batch_size = ig_batch(model, n_full, checkpointed=checkpointed)
    full = torch.cat([ids, torch.tensor(answer.tokens[:-1], dtype=torch.long)])
    if len(full) > model.info.n_ctx:
        raise InputError(f"the prompt and continuation are {len(full)} tokens, more than the context ({model.info.n_ctx}); shorten them")
    n = len(full)
    scores = torch.full((len(answer.tokens), n), float("nan"))
    metric, metric_base, delta = (torch.full((len(answer.tokens),), float("nan")) for _ in range(3))
    used = [steps] * len(answer.tokens)  # gradient evaluations per answer token (the adaptive method picks its own)
    # model calls per answer token: the method's batches, then captum's completeness check and the two metric runs
    per_token = {"saliency": 1, "input × gradient": 1}.get(
        method, -(-(len(full) if method == "feature ablation" else steps) // internal_batch_size)
    )
    calls = _Calls(progress, len(answer.tokens) * (per_token + 4), f"the input attribution ({method})")
    with model.lock:
        for t, token in enumerate(answer.tokens):
            ctx = full[: len(ids) + t]  # (pos_t,)
            forward = embed_forward(model, ctx, token, answer.wrong)
            if checkpointed:
                forward = checkpointed_forward(model, ctx, token, answer.wrong)
            forward = calls.counting(forward)
            inputs = token_embeddings(model, ctx).requires_grad_(True)  # (1, pos_t, d_model)
            base = baseline_embeddings(model, inputs, base_id)
            if method == "feature ablation":
                # one position at a time set to the baseline's embedding (zeros really is the zero vector)
                positions = torch.arange(len(ctx), device=inputs.device)[None, :, None].expand_as(inputs)  # (1, pos_t, d_model)
                with torch.no_grad():
                    attr = FeatureAblation(forward).attribute(
                        inputs.detach(), baselines=base, feature_mask=positions, perturbations_per_eval=internal_batch_size
                    )
                scores[t, : len(ctx)] = attr[0, :, 0].float().cpu()  # every feature of a position holds the same score
            elif method == "integrated gradients":
                attr, d = IntegratedGradients(forward).attribute(
                    inputs, baselines=base, n_steps=steps, internal_batch_size=internal_batch_size, return_convergence_delta=True
                )
                scores[t, : len(ctx)] = attr[0].sum(-1).detach().cpu()
                delta[t] = d.detach().cpu()[0]
            elif method == "integrated gradients (adaptive)":
                r = ig.integrated_gradients(forward, inputs.detach(), base, ADAPTIVE_TOLERANCE, max_points=steps, batch=internal_batch_size)
                scores[t, : len(ctx)] = r.attributions[0].sum(-1).cpu()
                delta[t] = r.error if r.f_input >= r.f_baseline else -r.error  # same meaning as captum's: |sum - gap|
                used[t] = r.points
            elif method == "saliency":
                attr = Saliency(forward).attribute(inputs, abs=False)
                scores[t, : len(ctx)] = attr[0].norm(dim=-1).detach().cpu()
            else:
                attr = InputXGradient(forward).attribute(inputs)
                scores[t, : len(ctx)] = attr[0].sum(-1).detach().cpu()
            with torch.no_grad():
                metric[t] = forward(inputs.detach())[0].cpu()
                metric_base[t] = forward(base)[0].cpu()
    answer_labels = token_labels(model.tokenizer, [*answer.tokens, *(() if answer.wrong is None else (answer.wrong,))])
    ran_on = "engine" if checkpointed else engine.model_hooks(model)
    return InputAttribution(
        method=method,
        baseline=baseline if method in ("integrated gradients", "integrated gradients (adaptive)", "feature ablation") else "",
        steps=max(used) if method.startswith("integrated gradients") else 0,
        metric_label=answer.describe(answer_labels),
        answer_labels=answer_labels[: len(answer.tokens)],
        labels=token_labels(model.tokenizer, full.tolist()),
        scores=scores,
        metric=metric,
        metric_baseline=metric_base,
        delta=delta,
        backend=ran_on,
        settings=dict(
            method=method, baseline=baseline, steps=steps, internal_batch_size=internal_batch_size, model=model.info.name, prompt=prompt
        ),
        provenance=provenance(
            model, [prompt], method=method, baseline=baseline, steps=steps, answer=list(answer.tokens), wrong=answer.wrong, backend=ran_on
        ),
    )


def suggested_steps(result: InputAttribution, tolerance: float = 0.05) -> int | None:
    """A step count likely to bring IG's completeness gap under `tolerance`, or None when it already is."""
    gap = result.max_delta()
    if math.isnan(gap) or gap <= tolerance:
        return None
    # the Riemann error of the path integral shrinks roughly like 1/steps
    return min(1024, int(result.steps * gap / tolerance) + 1)


# ---- direct logit attribution ---------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentAttribution:
    """Direct logit attribution of one metric at one position to every component, head and neuron."""

    metric_label: str  # the metric in words, e.g. "logit(␣Paris) − logit(␣Rome)"
    position: int
    logit: float  # the metric's value from the model's logits (minus b_U for a single token)
    components: list[str]  # embed, L0 attn, L0 mlp, ...
    component_values: torch.Tensor  # (component,)
    heads: torch.Tensor  # (layer, head)
    head_remainder: float  # what is not a head: embeddings, MLPs, biases
    cumulative_labels: list[str]  # residual points
    cumulative: torch.Tensor  # (point,) the residual stream's projection so far
    neurons: list[dict]  # top neurons by |attribution|: layer, neuron, activation, attribution
    provenance: dict = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        return [dict(component=c, attribution=float(v)) for c, v in zip(self.components, self.component_values, strict=True)]


def _direction(model: LoadedModel, answer: int, wrong: int | None) -> torch.Tensor:
    w_u = engine.readout_of(model).W_U  # (d_model, d_vocab)
    return w_u[:, answer] - (w_u[:, wrong] if wrong is not None else 0.0)


def component_attribution(
    model: LoadedModel,
    prompt: str,
    answer: int,
    wrong: int | None = None,
    position: int = -1,
    top_neurons: int = 20,
    truncate: bool = False,
) -> ComponentAttribution:
    """DLA of logit(answer) (or logit(answer) − logit(wrong)) at `position`, read by the next token.

    One run through the run layer; transformer-lens's three decompositions read its cache (per-head
    outputs are computed from hook_z and W_O there, as for every family).
    """
    from transformer_lens.tools.analysis import direct_logit_attribution

    if model.backend is not None:  # nnsight: the same decomposition read from the raw model's modules
        from workbench import nnsight_backend

        return nnsight_backend.component_attribution(model, prompt, answer, wrong, position, top_neurons, truncate)
    if not model.info.compatibility_mode:
        raise InputError(
            "direct logit attribution needs the model loaded in compatibility mode (load_model(..., compatibility_mode=True), the default)"
        )
    info = model.info
    check_token_ids(model, [answer] + ([] if wrong is None else [wrong]), "answer and wrong token")
    names = hook_names(
        model,
        "hook_embed",
        "hook_pos_embed",
        "ln_final.hook_scale",
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
        "attn.hook_z",
        "mlp.hook_post",
    )
    run = run_prompt(model, prompt, names, truncate=truncate)
    position = check_position(run.n_tokens, position)
    cache = activation_cache(model, run)
    with torch.no_grad():
        comp, per_head = (
            direct_logit_attribution(model.bridge, answer_tokens=answer, incorrect_tokens=wrong, unit=unit, pos=position, cache=cache)
            for unit in ("component", "head")
        )
    direction = _direction(model, answer, wrong)  # (d_model,)
    scale = run["ln_final.hook_scale"][position].float()  # (1,) the frozen final-norm scale
    # the residual stream so far at every lens point (transformer-lens's "layer" unit needs resid_mid,
    # which parallel blocks do not have): centred where the final norm centres, then projected
    points = lens_points(model)
    resid = torch.stack([run[name][position] for _, name in points]).float()  # (point, d_model)
    if engine.readout_of(model).norm.kind == "layer":  # RMSNorm does not centre
        resid = resid - resid.mean(-1, keepdim=True)
    cumulative = resid @ direction / scale  # (point,)
    neurons = []
    for layer in range(info.n_layers):
        post = run[f"blocks.{layer}.mlp.hook_post"][position].float()  # (d_mlp,) what W_out reads
        w_out = engine.block_weights(model, layer).W_out  # (d_mlp, d_model)
        contrib = post * (w_out @ direction) / scale  # (d_mlp,)
        for n in contrib.abs().topk(min(top_neurons, len(contrib))).indices.tolist():
            neurons.append(dict(layer=layer, neuron=n, activation=float(post[n]), attribution=float(contrib[n])))
    neurons.sort(key=lambda r: -abs(r["attribution"]))
    b_u = engine.readout_of(model).b_U if engine.readout_of(model).b_U is not None else torch.zeros(info.d_vocab)
    logit = run.logits[position, answer] - b_u[answer]
    if wrong is not None:
        logit = logit - (run.logits[position, wrong] - b_u[wrong])
    head_values = per_head.attribution.reshape(-1).float().cpu()
    n_heads_total = info.n_layers * info.n_heads
    labels = token_labels(model.tokenizer, [answer] + ([wrong] if wrong is not None else []))
    return ComponentAttribution(
        metric_label=f"logit({labels[0]})" + (f" − logit({labels[1]})" if wrong is not None else ""),
        position=position,
        logit=float(logit),
        components=[_component_label(label) for label in comp.labels],
        component_values=comp.attribution.reshape(-1).float().cpu(),
        heads=head_values[:n_heads_total].reshape(info.n_layers, info.n_heads),
        head_remainder=float(head_values[n_heads_total:].sum()),
        cumulative_labels=[label for label, _ in points],
        cumulative=cumulative,
        neurons=neurons[:top_neurons],
        provenance=provenance(model, [prompt], method="direct logit attribution", answer=answer, wrong=wrong, position=position),
    )


def _component_label(label: str) -> str:
    """transformer-lens labels ("0_attn_out", "0_mlp_out") in the workbench's words."""
    parts = label.split("_")
    if label in ("embed", "pos_embed"):
        return label
    if parts[0].isdigit():
        layer, rest = parts[0], "_".join(parts[1:])
        return {"attn_out": f"L{layer} attn", "mlp_out": f"L{layer} mlp"}.get(rest, label)
    return label


def parse_answer(model: LoadedModel, kind: str, predicted: int, typed: str = "", wrong: str = "") -> Answer:
    """An Answer from the page's choices: "next token", "typed token", "continuation" or "logit difference" (answer − wrong)."""
    if kind == "next token":
        return Answer((predicted,))
    if kind == "typed token":
        return Answer((single_token_id(model.tokenizer, typed, "answer"),))
    if kind == "continuation":
        if not typed:
            raise InputError("type the continuation to attribute, e.g. ' of a wife'")
        ids = model.tokenizer(typed, add_special_tokens=False)["input_ids"]
        if len(ids) > 16:
            raise InputError(f"the continuation is {len(ids)} tokens; attribute at most 16 at once")
        return Answer(tuple(ids))
    if kind in ("logit difference", "contrast"):
        return Answer((single_token_id(model.tokenizer, typed, "answer"),), single_token_id(model.tokenizer, wrong, "wrong"))
    raise InputError(f"unknown kind of answer '{kind}': use next token, typed token, continuation or logit difference")
