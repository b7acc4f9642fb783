"""Checking an attribution graph on the model by intervention, and continuations with its features set.

Interventions check the graph on the model (`intervene`): set features to a multiple of their
activation (0 ablates, 2 doubles) and compare the answer's logit change with what the graph's edges
predict. `predict`: the direct edges, carried through the graph's active features linearly, every
norm's scale frozen as the graph is built (`predicted_frozen_norm`). `predict_live_norm`: the same
edges into the logit and into the graph's final norm readout (attribution_graph.FinalNorm: the
first-order change of the final norm's divisor) and into the normalised stream at the last position
(attribution_graph.final_stream, or stream_change for one change: its squared size, the divisor's second-order part),
combined by the norm's formula, so that the divisor grows or shrinks with the change as the real
model's does (`predicted`; with the first-order part alone, `predicted_first_order`). The change is
measured
- in the real model as circuit-tracer's `ReplacementModel.feature_intervention` does it: every MLP
  computing, each set feature's decoder row × (its value − its activation in that run) added to
  its MLP's output, norms live; with every attention pattern held at the real run's (its default,
  `freeze_attention=True`: `attention_frozen`) and with attention live (`real`). Its demos and
  tutorial check a graph's supernodes with that default; its tests check the edges exactly with
  everything frozen (`constrained_layers` over every layer: patterns, norm scales, MLP outputs).
  Beside them, `final_norm_frozen`: attention frozen and the final norm's scale held too;
- in the local replacement model (transcoders in place of the MLPs, the error nodes frozen,
  attention and norms live: `replacement`), and that model with every attention pattern held
  (`replacement_attention_frozen`: the check's setting with the transcoders in place of the MLPs, so that
  it and `attention_frozen` differ only by how the real MLPs react where the transcoders' errors stay frozen);
- in the graph's own frozen model (`frozen_effect`: patterns, norm scales and errors frozen, every
  feature recomputed: the prediction's arithmetic, equal to it while no TopK set changes), and in
  that model with only the final norm's scale live (`final_norm_live`). A frozen scale leaves out
  that a change along the stream's own direction is divided away by the norm; for features that
  write straight to the logits at the last position this can undo most of the predicted change.

Two references that are not the graph's (`tangent`): the last position's stream carried along its tangent in the
clamp factor (a central difference at 1) to the factor, then the final norm and unembedding applied exactly, in the
real model (`tangent`) and in the local replacement model (`replacement_tangent`), both with attention frozen. The
first is what a prediction linear in the features gives where it is exact to first order (the real MLPs' and norms'
response: not a bound, as a linear prediction can come nearer a large change by chance); the second what these
transcoders' response gives. Where, over a task's pairs, the measurement meets the first far more often than the
second, the graph's misses there are its transcoders' response, not the ablation's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from workbench import attribution_graph as ag
from workbench import engine
from workbench.attribution_graph import AttributionGraph
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.replacement_model import Frozen, Linear, freeze, frozen_norm, norm_scale, on_device
from workbench.tokens import token_labels
from workbench.transcoder import Transcoder, reconstruction_errors


def feature_changes(g: AttributionGraph, nodes: list[int], factor: float) -> torch.Tensor:
    """(n_feature,) the change of every feature node's activation that the graph's edges predict when feature nodes
    `nodes` are set to `factor` × their activation: their direct edges, carried linearly through the graph's other
    active features (each active feature passes on a change of its pre-activation one for one)."""
    nf = g.n_features
    bad = [i for i in nodes if not 0 <= i < nf]
    if bad:
        raise InputError(f"only feature nodes can be clamped; nodes {bad} are not features")
    per_unit = _per_unit(g, g.adjacency[:nf])  # (feature, feature)
    delta = torch.zeros(nf)
    fixed = torch.zeros(nf, dtype=torch.bool)
    fixed[nodes] = True
    delta[nodes] = (factor - 1) * g.activations[nodes]
    for _ in range(g.n_layers):  # one layer deeper each pass: the graph has n_layers feature layers
        delta = torch.where(fixed, delta, per_unit @ delta)
    return delta


def _per_unit(g: AttributionGraph, rows: torch.Tensor) -> torch.Tensor:
    """(targets, feature): the targets' edges from each feature node per unit of its activation (rows (targets, node))."""
    return rows[..., : g.n_features] / g.activations.clamp(min=1e-12)


def predict(g: AttributionGraph, nodes: list[int], factor: float, target: int | None = None) -> float:
    """The change of `target`'s value (default: the answer's logit minus the mean logit) that the graph's edges predict
    when feature nodes `nodes` are set to `factor` × their activation (feature_changes), every norm's scale frozen as the
    graph is built: exactly the graph's own frozen model's change while no TopK set changes (frozen_effect)."""
    target = g.answer_node if target is None else target
    return float(_per_unit(g, g.adjacency[target]) @ feature_changes(g, nodes, factor))


def predict_norm_share(g: AttributionGraph, nodes: list[int], factor: float) -> float:
    """a: the final norm's divisor's relative change (σ_new / σ - 1, first order) that the graph's edges into its final
    norm readout (attribution_graph.FinalNorm) predict when `nodes` are set to `factor` × their activation."""
    if g.final_norm is None:
        raise InputError("this graph was built without its final norm readout: rebuild it (attribution_graph.build)")
    return float(_per_unit(g, g.final_norm.edges) @ feature_changes(g, nodes, factor))


def predict_live_norm(g: AttributionGraph, nodes: list[int], factor: float, dn: torch.Tensor | None = None, logit: int = 0) -> float:
    """The change of logit node `logit` (default: the answer's, minus the mean logit) predicted with the final norm's
    scale live: (l_s + Δl) · σ / σ_new - l_s, where Δl is the frozen-scale prediction (predict) and l_s the part of the
    logit that the divisor σ divides (FinalNorm.scaled): the edges into readouts of the same frozen linear model,
    combined by the norm's own formula y = γ ⊙ u / σ + β.

    σ_new / σ = sqrt(1 + 2a + b): a = mean(n · Δn) is the graph's final norm readout (predict_norm_share), b =
    mean(Δn²) the squared size of the change of the normalised stream n = u / σ: `dn` (d_model,), the change the
    features' edges into n carry (final_stream(...) @ feature_changes(...), or attribution_graph.stream_change: the
    same in one pass). Without `dn`, first order: σ_new / σ = 1 + a, leaving b out (the part of the change
    orthogonal to the stream, which a single readout cannot give)."""
    delta = predict(g, nodes, factor, g.answer_node + logit)
    a = predict_norm_share(g, nodes, factor)
    scaled = float(g.final_norm.scaled[logit])
    if dn is None:
        return (scaled + delta) / (1 + a) - scaled
    b = float(dn.pow(2).mean())
    return (scaled + delta) / max(1 + 2 * a + b, 1e-12) ** 0.5 - scaled


@dataclass(frozen=True)
class Intervention:
    """Features set to `factor` × their activation: the answer's logit change as predicted and as measured."""

    nodes: list[str]  # node ids
    factor: float
    answer: str
    predicted: float  # by the graph's edges, the final norm's scale live (predict_live_norm with stream_change): checked
    predicted_first_order: float  # the same, the divisor's change to first order only (predict_live_norm without dn)
    predicted_frozen_norm: float  # by the graph's edges alone, every norm's scale frozen (predict): `frozen`'s linearisation
    frozen: float  # measured in the graph's own model: transcoders, frozen errors, attention patterns and norm scales
    final_norm_live: float  # the graph's own model with the final norm's scale live (what freezing that one scale hides)
    replacement: float  # measured in the local replacement model (transcoders + frozen errors, attention live)
    replacement_attention_frozen: float  # the local replacement model with attention patterns held: attention_frozen's
    # setting with the transcoders in the MLPs' place, so that the two differ only by the real MLPs' own reaction
    attention_frozen: float  # measured in the real model, attention patterns held (circuit-tracer's feature_intervention default)
    final_norm_frozen: float  # as attention_frozen, the final norm's scale held at the real run's too (what that scale adds)
    real: float  # measured in the real model, attention live (feature_intervention with freeze_attention=False)
    # first-order predictions, not the graph's: the stream's tangent along the clamp, carried to `factor`, then the final
    # norm exact (`tangent`): the real model's own (attention frozen: what any graph exact to first order would predict)
    # and the local replacement model's (attention frozen: these transcoders' response, the intermediate norms reacting)
    tangent: float | None
    replacement_tangent: float | None
    top_before: list[tuple[str, float]]  # (token, probability) of the real run
    top_after: list[tuple[str, float]]  # of the real model with the edit (attention live)

    def rows(self) -> list[dict]:
        return [dict(nodes=" ".join(self.nodes), factor=self.factor, answer=self.answer, predicted=self.predicted,
                     predicted_first_order=self.predicted_first_order, predicted_frozen_norm=self.predicted_frozen_norm, frozen=self.frozen, final_norm_live=self.final_norm_live, replacement=self.replacement, replacement_attention_frozen=self.replacement_attention_frozen,
                     attention_frozen=self.attention_frozen, final_norm_frozen=self.final_norm_frozen,
                     real=self.real, tangent=self.tangent, replacement_tangent=self.replacement_tangent)]  # fmt: skip


def clamp_edits(w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float) -> list[engine.Edit]:
    """Engine edits on the real model: each feature's decoder row × (factor - 1) × its activation added to its MLP's
    output at its position (one edit per layer and position, so that a generation keeps them on the prompt's positions).

    A constant change, for continuations; `real_edits` sets the features as circuit-tracer does (the same where no set
    feature feeds another)."""
    delta: dict[tuple[int, int], torch.Tensor] = {}
    for i in nodes:
        layer, pos, f = g.features[i].tolist()
        tc = tcs[layer]
        rows = [tc.W_dec[f]] + ([] if tc.W_dec_later is None else list(tc.W_dec_later[f]))  # its own layer, then later ones
        for j, row in enumerate(rows):
            change = (factor - 1) * float(g.activations[i]) * row.float().cpu()
            delta[(layer + j, pos)] = delta.get((layer + j, pos), 0) + change
    return [engine.Edit("add", "mlp_out", layer, position=pos, value=v.to(w.W_E.device)) for (layer, pos), v in delta.items()]


def replacement_edits(
    w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float, errors: dict | None = None
) -> list[engine.Edit]:
    """Engine edits for the local replacement model (transcoders in place of the MLPs, errors frozen), `nodes` clamped;
    `errors` {layer: (pos, d_model)}: the graph's error nodes where they are computed already."""
    from workbench.transcoder import splice_edits

    if errors is None:
        fz = freeze(w, g.tokens.to(w.W_E.device))
        errors = reconstruction_errors(tcs, fz.mlp_in, fz.mlp_out)
    clamp = _clamps(g, nodes, factor)
    return splice_edits(w, tcs, errors, clamp)


def real_edits(
    w: engine.Weights, g: AttributionGraph, tcs: dict[int, Transcoder], nodes: list[int], factor: float, freeze_attention: bool
) -> list[engine.Edit]:
    """Engine edits on the real model that set `nodes` to factor × their activation as circuit-tracer's
    feature_intervention does (transcoder.steer_edits), with every attention pattern held at the real run's when
    `freeze_attention` (engine.frozen_patterns)."""
    from workbench.transcoder import steer_edits

    edits = steer_edits(w, tcs, _clamps(g, nodes, factor))
    return edits + engine.frozen_patterns(w, g.tokens.to(w.W_E.device)[None]) if freeze_attention else edits


def _clamps(g: AttributionGraph, nodes: list[int], factor: float) -> dict[int, list[tuple[int, int, float]]]:
    """{layer: [(position, feature, value)]}: each node fixed at factor × its activation in the graph's run (a constant,
    as circuit-tracer clamps: a clamped feature downstream of another does not follow it)."""
    clamp: dict[int, list] = {}
    for i in nodes:
        layer, pos, f = g.features[i].tolist()
        clamp.setdefault(layer, []).append((pos, f, factor * float(g.activations[i])))
    return clamp


def frozen_effect(
    w: engine.Weights,
    g: AttributionGraph,
    tcs: dict[int, Transcoder],
    nodes: list[int],
    factor: float,
    live_final_norm: bool = False,
    fz: Frozen | None = None,
) -> float:
    """The answer's logit change in the frozen replacement model (patterns, norm scales and errors from the real run;
    every feature recomputed by its transcoder, `nodes` clamped): what `predict` linearises.

    `live_final_norm`: the final norm computes its scale from the changed stream, the rest stays frozen (what that one
    scale adds: the frozen scale leaves out that a change along the stream's own direction is divided away). `fz`: the
    graph's real run frozen (freeze), where the caller holds it already."""
    fz = fz if fz is not None else freeze(w, g.tokens.to(w.W_E.device))
    lin = Linear.of(fz, tcs)
    clamp = _clamps(g, nodes, factor)
    errors = reconstruction_errors(tcs, fz.mlp_in, fz.mlp_out)
    seen: dict[int, torch.Tensor] = {}  # this run's activations so far: a cross-layer feature writes to later layers

    def mlp(layer: int, mlp_in: torch.Tensor, clamped: bool) -> torch.Tensor:
        tc = tcs[layer]
        a = tc.encode(mlp_in)  # (1, pos, d_sae)
        if clamped:
            for pos, f, value in clamp.get(layer, ()):
                a[:, pos, f] = value
        seen[layer] = a
        out = a @ tc.W_dec + tc.b_dec + errors[layer]  # the skip path is added by Linear.run
        for source in range(layer):
            if layer <= source + tcs[source].n_later:
                out = out + tcs[source].write_later(seen[source])[..., layer - source - 1, :]
        return out

    answer = g.logit_tokens[:1].to(w.W_E.device)

    def logit(last: torch.Tensor) -> torch.Tensor:  # (1, d_model) the last position's stream -> (1, 1)
        if not live_final_norm:
            return lin.logit_values(last, answer, bias=True)
        u, b = lin.logit_directions(answer)
        return w.ln_final(last) @ u + b

    with torch.no_grad():
        values = [logit(lin.run([fz.emb[None]], bias=True, mlp=lambda layer, x, c=c: mlp(layer, x, c))[:, -1]) for c in (False, True)]
    return float(values[1] - values[0])


def _answer_logit(logits: torch.Tensor, answer: int) -> float:
    return float(logits[answer] - logits.mean())


# The factor's step either side of 1. Small against the activations (a TopK set that changes within ±0.1% of a clamp
# would show as a kink of one pair, not a trend), large against float32 rounding of the stream (~1e-7 of its size).
TANGENT_STEP = 1e-3


def final_hook(w: engine.Weights) -> str:
    """The hook of the stream the final norm reads."""
    return f"blocks.{w.n_layers - 1}.hook_resid_post"


def unembed(w: engine.Weights, x: torch.Tensor) -> torch.Tensor:
    """(1, d_model) the last position's stream -> (d_vocab,) the logits: the final norm (live) and the unembedding."""
    return (w.ln_final(x) @ w.W_U + (0 if w.b_U is None else w.b_U))[0].float().cpu()


def tangent(
    w: engine.Weights, tokens: torch.Tensor, edits_at: Callable[[float], list[engine.Edit]], factor: float, answer: int, x1: torch.Tensor
) -> float:
    """The answer's logit change (minus the mean logit) predicted to first order in the stream: x(f), the last
    position's stream before the final norm with the features set to f × their activation (`edits_at(f)`: engine edits
    on `tokens` (1, pos)), is carried from x1 = x(1) (1, d_model: the real run's, which every model here reproduces at
    f = 1) along its tangent there (a central difference) to `factor`; the final norm and the unembedding are then
    applied exactly, as `predicted` applies them to the graph's change. Not the graph's: a reference for it, what a
    prediction linear in the features gives where it is exact to first order."""
    final = final_hook(w)

    def stream(f: float) -> torch.Tensor:  # (1, d_model)
        return engine.forward(w, tokens, edits=edits_at(f), capture=[final], last_only=True).captured[final][0, -1:]

    with torch.no_grad():
        x = x1 + (stream(1 + TANGENT_STEP) - stream(1 - TANGENT_STEP)) / (2 * TANGENT_STEP) * (factor - 1)
        return _answer_logit(unembed(w, x), answer) - _answer_logit(unembed(w, x1), answer)


def intervene(
    model: LoadedModel,
    g: AttributionGraph,
    nodes: list[int],
    factor: float = 0.0,
    tcs: dict[int, Transcoder] | None = None,
    references: bool = True,
) -> Intervention:
    """Sets feature nodes `nodes` to `factor` × their activation and measures the answer's logit (module doc);
    `references`: the two first-order references too (4 more forward passes; None without)."""
    tcs = {layer: on_device(tc, model.device) for layer, tc in ag.transcoders_for(model, tcs).items()}
    w = ag.engine_weights(model)
    answer = int(g.logit_tokens[0])
    tokens = g.tokens.to(model.device)[None]
    final = [final_hook(w)]
    with torch.no_grad():
        # the real run once: its logits, the stream the final norm reads, its patterns and the graph's error nodes
        fz = freeze(w, g.tokens.to(w.W_E.device))
        base = fz.logits.float().cpu()
        patterns = engine.pattern_edits(fz.patterns)  # every attention pattern held at the real run's
        errors = reconstruction_errors(tcs, fz.mlp_in, fz.mlp_out)
        spliced = replacement_edits(w, g, tcs, nodes, factor, errors)
        rep = engine.forward(w, tokens, edits=spliced, last_only=True).logits[0].float().cpu()
        held_rep = engine.forward(w, tokens, edits=spliced + patterns, last_only=True).logits[0].float().cpu()
        real = engine.forward(w, tokens, edits=real_edits(w, g, tcs, nodes, factor, False), last_only=True).logits[0].float().cpu()
        out = engine.forward(w, tokens, edits=real_edits(w, g, tcs, nodes, factor, False) + patterns, capture=final, last_only=True)
        held = out.logits[0].float().cpu()
        x0, x1 = fz.final[-1:], out.captured[final[0]][0, -1:]  # (1, d_model) before and after
        scale = norm_scale(w.ln_final, x0)  # the real run's divisor, held: the final norm made linear as in the graph
        held_norm = [
            (frozen_norm(w.ln_final, scale, x, bias=True) @ w.W_U + (0 if w.b_U is None else w.b_U))[0].float().cpu() for x in (x0, x1)
        ]  # unembed with the norm's scale held

    def top(logits: torch.Tensor) -> list[tuple[str, float]]:
        p = logits.softmax(-1).topk(5)
        return list(zip(token_labels(model.tokenizer, p.indices.tolist()), p.values.tolist(), strict=True))

    b = _answer_logit(base, answer)
    return Intervention(
        nodes=[g.node_id(i) for i in nodes],
        factor=float(factor),
        answer=g.logit_labels[0],
        predicted=predict_live_norm(g, nodes, factor, ag.stream_change(model, g, feature_changes(g, nodes, factor), tcs, fz)),
        predicted_first_order=predict_live_norm(g, nodes, factor),
        predicted_frozen_norm=predict(g, nodes, factor),
        frozen=frozen_effect(w, g, tcs, nodes, factor, fz=fz),
        final_norm_live=frozen_effect(w, g, tcs, nodes, factor, live_final_norm=True, fz=fz),
        replacement=_answer_logit(rep, answer) - b,
        replacement_attention_frozen=_answer_logit(held_rep, answer) - b,
        attention_frozen=_answer_logit(held, answer) - b,
        final_norm_frozen=_answer_logit(held_norm[1], answer) - _answer_logit(held_norm[0], answer),
        real=_answer_logit(real, answer) - b,
        tangent=tangent(w, tokens, lambda f: real_edits(w, g, tcs, nodes, f, False) + patterns, factor, answer, x0) if references else None,
        replacement_tangent=(
            tangent(w, tokens, lambda f: replacement_edits(w, g, tcs, nodes, f, errors) + patterns, factor, answer, x0)
            if references
            else None
        ),
        top_before=top(base),
        top_after=top(real),
    )


def continuations(
    model: LoadedModel, g: AttributionGraph, nodes: list[int], factor: float, new_tokens: int = 20, tcs: dict[int, Transcoder] | None = None
):
    """(original, edited) greedy continuations of the graph's prompt, the edited one with `nodes` set to factor × their
    activation in the real model (clamp_edits) at every step."""
    from workbench.generate import Sampling, generate

    tcs = ag.transcoders_for(model, tcs)
    w = ag.engine_weights(model)
    s = Sampling(max_new_tokens=new_tokens)
    return generate(model, g.prompt, s), generate(model, g.prompt, s, clamp_edits(w, g, tcs, nodes, factor))


def random_features(g: AttributionGraph, n: int, seed: int = 0, exclude: list[int] = ()) -> list[int]:
    """n feature nodes drawn at random (not in `exclude`)."""
    pool = torch.tensor([i for i in range(g.n_features) if i not in set(exclude)])
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=gen)[:n]].tolist()
