"""Attribution: which input tokens, and which heads, MLPs and neurons, produced a prediction.

Input attribution (captum) scores each input token for a metric of the output:
- the metric is the log-probability of a target token at the next position, or, for a contrast,
  the logit of token A minus the logit of token B;
- Integrated Gradients integrates the gradient along a straight path from a baseline to the
  input's token embeddings; its attributions add up to metric(input) − metric(baseline)
  (completeness), and captum's convergence delta is the gap;
- Saliency is the gradient's norm per token (unsigned); Input × Gradient is embedding · gradient;
- Feature Ablation replaces one token at a time with the baseline token and records the drop.
The gradient methods work on the token embeddings: a hook on `hook_embed` swaps in the
embeddings captum asks about, so positions and everything downstream stay the model's own.
For a continuation of several tokens each target token is attributed with the earlier ones
appended to the prompt.

Component attribution (direct logit attribution) splits the final residual stream into what
each part of the model wrote -- embeddings, each layer's attention and MLP, each head, each MLP
neuron -- and projects each part on the target's unembedding direction, with the final layer
norm's scale frozen at its value on this prompt. The parts add up to the target's logit minus
its unembedding bias. Components and heads come from `transformer_lens`'s
`direct_logit_attribution` (it requires compatibility mode); neurons are computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients, Saliency

from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import encode, hook_names, run_prompt
from workbench.tokens import token_labels

METHODS = ("integrated gradients", "saliency", "input × gradient", "feature ablation")
BASELINES = ("zeros", "BOS token", "mask token")


@dataclass(frozen=True)
class Target:
    """What to attribute: a token (or several, a continuation), or a contrast A − B."""

    tokens: tuple[int, ...]  # one or more target ids, in order
    contrast: int | None = None  # token B of "logit A − logit B" (only with one target)

    def describe(self, labels: list[str]) -> str:
        if self.contrast is not None:
            return f"logit({labels[0]}) − logit({labels[1]})"
        return "log p(" + " ".join(labels[: len(self.tokens)]) + ")"


def metric_of(logits_last: torch.Tensor, target: int, contrast: int | None) -> torch.Tensor:
    """(batch,) the metric from next-token logits (batch, d_vocab)."""
    if contrast is not None:
        return logits_last[:, target] - logits_last[:, contrast]
    return logits_last.log_softmax(-1)[:, target]


@dataclass(frozen=True)
class InputAttribution:
    """Scores of every input token for each target token; NaN where a token is not in that target's context."""

    method: str
    baseline: str
    steps: int
    target: str  # human description
    target_labels: list[str]  # (target,)
    labels: list[str]  # (pos,) prompt tokens, then the continuation tokens but the last
    scores: torch.Tensor  # (target, pos)
    metric: torch.Tensor  # (target,) metric at the input
    metric_baseline: torch.Tensor  # (target,) metric at the baseline (gradient methods with a baseline)
    delta: torch.Tensor  # (target,) convergence delta (integrated gradients), else NaN
    settings: dict = field(default_factory=dict)

    def max_delta(self) -> float:
        """Largest |convergence delta| over targets (NaN when the method has none)."""
        finite = self.delta[torch.isfinite(self.delta)]
        return float(finite.abs().max()) if finite.numel() else float("nan")

    def completeness_gap(self) -> float:
        """Largest |sum of attributions − (metric − metric at baseline)| over targets, for IG."""
        return float((self.scores.nansum(-1) - (self.metric - self.metric_baseline)).abs().max())

    def rows(self) -> list[dict]:
        return [
            dict(target=t_label, position=pos, token=label, score=float(self.scores[t, pos]))
            for t, t_label in enumerate(self.target_labels)
            for pos, label in enumerate(self.labels)
            if not math.isnan(float(self.scores[t, pos]))
        ]


def _embed_forward(model: LoadedModel, ids: torch.Tensor, target: int, contrast: int | None):
    """f(token embeddings (batch, pos, d_model)) -> (batch,) metric, with ids (pos,) fixed."""

    def forward(embeds: torch.Tensor) -> torch.Tensor:
        def swap(_, hook):
            return embeds

        batch = ids[None].expand(embeds.shape[0], -1).to(model.device)
        with model.bridge.hooks(fwd_hooks=[("hook_embed", swap)]):
            logits = model.bridge(batch, logits_to_keep=1)[:, -1]  # only the last position is read
        return metric_of(logits.float(), target, contrast)

    return forward


def _ids_forward(model: LoadedModel, target: int, contrast: int | None):
    def forward(batch_ids: torch.Tensor) -> torch.Tensor:
        logits = model.bridge(batch_ids.to(model.device), logits_to_keep=1)[:, -1]
        return metric_of(logits.float(), target, contrast)

    return forward


def baseline_token(model: LoadedModel, baseline: str) -> int:
    if baseline == "BOS token" or baseline == "zeros":
        return model.bos_id
    if baseline == "mask token":
        if model.tokenizer.mask_token_id is None:
            raise InputError("this model's tokenizer has no mask token: choose the zeros or BOS-token baseline")
        return model.tokenizer.mask_token_id
    raise InputError(f"unknown baseline '{baseline}': use one of {', '.join(BASELINES)}")


def input_attribution(
    model: LoadedModel,
    prompt: str,
    target: Target,
    method: str = "integrated gradients",
    baseline: str = "zeros",
    steps: int = 32,
    internal_batch_size: int = 64,
) -> InputAttribution:
    """Attributes the target to every input token (see the module doc).

    Integrated gradients runs its steps `internal_batch_size` at a time: one batch for the usual
    step counts, bounded memory for large ones (captum's default puts every step in one batch).
    """
    if method not in METHODS:
        raise InputError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if not (isinstance(steps, int) and 2 <= steps <= 1024):
        raise InputError(f"steps must be an integer between 2 and 1024, got {steps}")
    if not target.tokens:
        raise InputError("choose a target token")
    if target.contrast is not None and len(target.tokens) != 1:
        raise InputError("a contrast compares two single tokens: give one target and one contrast token")
    vocab = model.info.d_vocab
    if any(not 0 <= t < vocab for t in (*target.tokens, *(() if target.contrast is None else (target.contrast,)))):
        raise InputError(f"target tokens must be ids in 0..{vocab - 1}")
    base_id = baseline_token(model, baseline)
    ids, _ = encode(model, prompt)
    full = torch.cat([ids, torch.tensor(target.tokens[:-1], dtype=torch.long)])
    if len(full) > model.info.n_ctx:
        raise InputError(f"the prompt and continuation are {len(full)} tokens, more than the context ({model.info.n_ctx}); shorten them")
    n = len(full)
    scores = torch.full((len(target.tokens), n), float("nan"))
    metric, metric_base, delta = (torch.full((len(target.tokens),), float("nan")) for _ in range(3))
    embed_w = model.bridge.embed.W_E.detach()  # (d_vocab, d_model)
    with model.lock:
        for t, token in enumerate(target.tokens):
            ctx = full[: len(ids) + t]  # (pos_t,)
            if method == "feature ablation":
                forward = _ids_forward(model, token, target.contrast)
                with torch.no_grad():
                    attr = FeatureAblation(forward).attribute(ctx[None], baselines=base_id, perturbations_per_eval=internal_batch_size)
                    scores[t, : len(ctx)] = attr[0].float().cpu()
                    metric[t] = forward(ctx[None])[0].cpu()
                continue
            forward = _embed_forward(model, ctx, token, target.contrast)
            inputs = embed_w[ctx][None].float().clone().requires_grad_(True)  # (1, pos_t, d_model)
            base = torch.zeros_like(inputs) if baseline == "zeros" else embed_w[torch.full_like(ctx, base_id)][None].float()
            base[0, 0] = inputs[0, 0].detach()  # BOS stays BOS: the path changes the prompt, not the start marker
            if method == "integrated gradients":
                attr, d = IntegratedGradients(forward).attribute(
                    inputs, baselines=base, n_steps=steps, internal_batch_size=internal_batch_size, return_convergence_delta=True
                )
                scores[t, : len(ctx)] = attr[0].sum(-1).detach().cpu()
                delta[t] = d.detach().cpu()[0]
            elif method == "saliency":
                attr = Saliency(forward).attribute(inputs, abs=False)
                scores[t, : len(ctx)] = attr[0].norm(dim=-1).detach().cpu()
            else:
                attr = InputXGradient(forward).attribute(inputs)
                scores[t, : len(ctx)] = attr[0].sum(-1).detach().cpu()
            with torch.no_grad():
                metric[t] = forward(inputs.detach())[0].cpu()
                metric_base[t] = forward(base)[0].cpu()
    target_labels = token_labels(model.tokenizer, [*target.tokens, *(() if target.contrast is None else (target.contrast,))])
    return InputAttribution(
        method=method,
        baseline=baseline if method in ("integrated gradients", "feature ablation") else "",
        steps=steps if method == "integrated gradients" else 0,
        target=target.describe(target_labels),
        target_labels=target_labels[: len(target.tokens)],
        labels=token_labels(model.tokenizer, full.tolist()),
        scores=scores,
        metric=metric,
        metric_baseline=metric_base,
        delta=delta,
        settings=dict(
            method=method, baseline=baseline, steps=steps, internal_batch_size=internal_batch_size, model=model.info.name, prompt=prompt
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

    target: str
    position: int
    logit: float  # the metric's value from the model's logits (minus b_U for a single token)
    components: list[str]  # embed, L0 attn, L0 mlp, ...
    component_values: torch.Tensor  # (component,)
    heads: torch.Tensor  # (layer, head)
    head_remainder: float  # what is not a head: embeddings, MLPs, biases
    cumulative_labels: list[str]  # residual points
    cumulative: torch.Tensor  # (point,) the residual stream's projection so far
    neurons: list[dict]  # top neurons by |attribution|: layer, neuron, activation, attribution

    def rows(self) -> list[dict]:
        return [dict(component=c, attribution=float(v)) for c, v in zip(self.components, self.component_values, strict=True)]


def _direction(model: LoadedModel, token: int, contrast: int | None) -> torch.Tensor:
    w_u = model.bridge.W_U.detach().float().cpu()  # (d_model, d_vocab)
    return w_u[:, token] - (w_u[:, contrast] if contrast is not None else 0.0)


def component_attribution(
    model: LoadedModel,
    prompt: str,
    token: int,
    contrast: int | None = None,
    position: int = -1,
    top_neurons: int = 20,
    truncate: bool = False,
) -> ComponentAttribution:
    """DLA of logit(token) (or logit(token) − logit(contrast)) at `position`, read by the next token."""
    from transformer_lens.tools.analysis import direct_logit_attribution

    if not model.info.compatibility_mode:
        raise InputError(
            "direct logit attribution needs the model loaded in compatibility mode (load_model(..., compatibility_mode=True), the default)"
        )
    info = model.info
    for t in (token, contrast):
        if t is not None and not 0 <= t < info.d_vocab:
            raise InputError(f"token id {t} is outside the vocabulary (0..{info.d_vocab - 1})")
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
        "attn.hook_result",
        "mlp.hook_post",
    )
    run = run_prompt(model, prompt, names, truncate=truncate)
    if not -run.n_tokens <= position < run.n_tokens:
        raise InputError(f"position {position} is outside the prompt (0..{run.n_tokens - 1})")
    position %= run.n_tokens
    tokens = run.tokens[None].to(model.device)
    with model.lock, torch.no_grad():
        # one forward pass; the three decompositions read the same cache (each would run the model otherwise)
        _, cache = model.bridge.run_with_cache(tokens)
        comp, per_head, layered = (
            direct_logit_attribution(model.bridge, answer_tokens=token, incorrect_tokens=contrast, unit=unit, pos=position, cache=cache)
            for unit in ("component", "head", "layer")
        )
    direction = _direction(model, token, contrast)  # (d_model,)
    scale = run["ln_final.hook_scale"][position].float()  # (1,) the frozen final-norm scale
    neurons = []
    for layer in range(info.n_layers):
        post = run[f"blocks.{layer}.mlp.hook_post"][position].float()  # (d_mlp,)
        w_out = model.bridge.blocks[layer].mlp.W_out.detach().float().cpu()  # (d_mlp, d_model)
        contrib = post * (w_out @ direction) / scale  # (d_mlp,)
        for n in contrib.abs().topk(min(top_neurons, len(contrib))).indices.tolist():
            neurons.append(dict(layer=layer, neuron=n, activation=float(post[n]), attribution=float(contrib[n])))
    neurons.sort(key=lambda r: -abs(r["attribution"]))
    b_u = model.bridge.b_U.detach().float().cpu() if getattr(model.bridge, "b_U", None) is not None else torch.zeros(info.d_vocab)
    logit = run.logits[position, token] - b_u[token]
    if contrast is not None:
        logit = logit - (run.logits[position, contrast] - b_u[contrast])
    head_values = per_head.attribution.reshape(-1).float().cpu()
    n_heads_total = info.n_layers * info.n_heads
    labels = token_labels(model.tokenizer, [token] + ([contrast] if contrast is not None else []))
    return ComponentAttribution(
        target=f"logit({labels[0]})" + (f" − logit({labels[1]})" if contrast is not None else ""),
        position=position,
        logit=float(logit),
        components=[_component_label(label) for label in comp.labels],
        component_values=comp.attribution.reshape(-1).float().cpu(),
        heads=head_values[:n_heads_total].reshape(info.n_layers, info.n_heads),
        head_remainder=float(head_values[n_heads_total:].sum()),
        cumulative_labels=[_component_label(label) for label in layered.labels],
        cumulative=layered.attribution.reshape(-1).float().cpu(),
        neurons=neurons[:top_neurons],
    )


def _component_label(label: str) -> str:
    """transformer-lens labels ("0_attn_out", "1_mid", "final_post") in the workbench's words."""
    parts = label.split("_")
    if label in ("embed", "pos_embed"):
        return label
    if parts[0].isdigit():
        layer, rest = parts[0], "_".join(parts[1:])
        return {"attn_out": f"L{layer} attn", "mlp_out": f"L{layer} mlp", "pre": f"before L{layer}", "mid": f"L{layer} attn"}.get(
            rest, label
        )
    return {"final_post": "final"}.get(label, label)


def parse_target(model: LoadedModel, kind: str, predicted: int, typed: str = "", contrast: str = "") -> Target:
    """A Target from the page's choices: "next token", "typed token", "continuation" or "contrast"."""
    from workbench.lens import target_token

    if kind == "next token":
        return Target((predicted,))
    if kind == "typed token":
        return Target((target_token(model, typed),))
    if kind == "continuation":
        if not typed:
            raise InputError("type the continuation to attribute, e.g. ' of a wife'")
        ids = model.tokenizer(typed, add_special_tokens=False)["input_ids"]
        if len(ids) > 16:
            raise InputError(f"the continuation is {len(ids)} tokens; attribute at most 16 at once")
        return Target(tuple(ids))
    if kind == "contrast":
        return Target((target_token(model, typed),), target_token(model, contrast))
    raise InputError(f"unknown target kind '{kind}'")
