"""The information-flow graph checked by ablation (graph.py builds it): how much of the prediction it explains.

The graph is checked by ablation through edits given as data (engine.Edit, run by the
forward engine, or through the bridge's hooks for a family the engine does not know): an
attention edge is removed by zeroing its pattern entries (every head; mean ablation adds back the
mean of the same entries' contribution over reference prompts), an MLP by replacing its output at
that position. Keeping only the graph must keep the metric; removing the graph's top-k edges must
hurt it more than removing k random edges.

The check holds the attention patterns at the clean run's (`frozen_patterns`), because that is what
the graph describes: its edges are value-path contributions pattern · v · W_O, measured with the
model's own attention weights, and say nothing about the queries and keys that set those weights.
Measured before this (patterns recomputed in the ablated run): on the answer-key model, whose
induction circuit is known by construction, the contrastive graph of "apple river stone cloud tiger
apple river" (answer " stone", wrong " lemon") is exactly the induction head's edge 3 → 7, and the
check kept only 14% (zero) / 18% (mean) of the metric, at every threshold from 0.04 to 0.01: the
previous-token edge 2 → 3 carries " river" (orthogonal to stone − lemon, so on no contrastive
route), yet ablating it moved the induction head's attention away through its keys. On the trained
circuits model, "… lemon apple river stone": -4% (mean), 79% (zero). The threshold was not at fault.
With the patterns frozen: 1.05 / 1.06 (answer key), 0.66-0.78 (circuits, either prompt or ablation).

Mean ablation's references are random tokens of the vocabulary (BOS kept first, same length), no longer
the prompt's own tokens shuffled: a shuffle keeps the prompt's repeated tokens, so the references'
induction heads copy the prompt's other tokens, and their mean adds competing answers. Measured with
frozen patterns, share with shuffled references 1.72 on the answer key (the metric overshoots: the
fill is not neutral) and 1.68 on the circuits model's contrastive graph; with random tokens 1.05 and
0.62.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import cost, engine
from workbench.edit_maps import Rescale
from workbench.errors import InputError
from workbench.graph import THRESHOLD, Edge, Graph, build
from workbench.metrics import Metric, metric_for
from workbench.model import LoadedModel
from workbench.runs import run_edited, run_tokens

ABLATIONS = ("mean", "zero")
REFERENCE_RUNS = 8  # mean ablation's reference: runs of random tokens, the prompt's length


@dataclass(frozen=True, eq=False)
class Ablation:
    """What to remove, as masks: attention edges (every head of a query and key position) and MLPs at a position."""

    edges: torch.Tensor  # (layer, query, key) bool
    mlps: torch.Tensor  # (layer, pos) bool

    @classmethod
    def of(cls, n_layers: int, n_tokens: int, edges=(), mlps=()) -> Ablation:
        """From (layer, query, key) and (layer, position) tuples."""
        e, m = torch.zeros(n_layers, n_tokens, n_tokens, dtype=torch.bool), torch.zeros(n_layers, n_tokens, dtype=torch.bool)
        for layer, i, j in edges:
            e[layer, i, j] = True
        for layer, i in mlps:
            m[layer, i] = True
        return cls(e, m)

    @property
    def size(self) -> int:
        return int(self.edges.sum() + self.mlps.sum())

    def clip(self, n: int) -> Ablation:
        """Only what acts on the first n positions."""
        return Ablation(self.edges[:, :n, :n], self.mlps[:, :n])


@dataclass(frozen=True)
class Reference:
    """Mean activations over reference prompts of the same length, for mean ablation (None: zero ablation)."""

    pattern: list[torch.Tensor]  # per layer (ref, head, query, key)
    v: list[torch.Tensor]  # per layer (ref, key, head, d_head), key/value heads repeated for grouped-query attention
    mlp_out: list[torch.Tensor]  # per layer (query, d_model), the mean


def reference(model: LoadedModel, tokens: torch.Tensor, n: int = REFERENCE_RUNS, seed: int = 0) -> Reference:
    """`n` reference runs of random tokens (no special tokens; BOS kept first), the prompt's length (module doc: why not shuffles)."""
    gen = torch.Generator().manual_seed(seed)
    keep = 1 if model.bos_id is not None and int(tokens[0]) == model.bos_id else 0
    special = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    ordinary = torch.tensor([i for i in range(min(model.info.d_vocab, len(model.tokenizer))) if i not in special])
    rows = [
        torch.cat([tokens[:keep], ordinary[torch.randint(0, len(ordinary), (len(tokens) - keep,), generator=gen)].to(tokens)])
        for _ in range(n)
    ]
    L = model.info.n_layers
    names = [f"blocks.{layer}.{s}" for layer in range(L) for s in ("attn.hook_pattern", "attn.hook_v", "hook_mlp_out")]
    with torch.no_grad():
        _, cache = run_tokens(model, torch.stack(rows), names)
    heads = model.info.n_heads
    v = [cache[f"blocks.{layer}.attn.hook_v"].float().cpu() for layer in range(L)]
    v = [x.repeat_interleave(heads // x.shape[2], 2) if x.shape[2] != heads else x for x in v]
    return Reference(
        [cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu() for layer in range(L)],
        v,
        [cache[f"blocks.{layer}.hook_mlp_out"].float().cpu().mean(0) for layer in range(L)],
    )


def ablation_edits(
    model: LoadedModel, n_tokens: int, ablation: Ablation, row: int, ref: Reference | None, clean: list[torch.Tensor] | None = None
) -> list[engine.Edit]:
    """Engine edits (for runs.run_edited) that remove `ablation`'s parts in batch row `row`; mean ablation with `ref`.

    `clean` (per layer (head, query, key), the clean run's patterns): every layer's pattern is held at
    the clean one, with the removed entries zeroed (module doc)."""
    rows = torch.tensor([row])
    edits = []
    for layer in range(model.info.n_layers):
        cut = ablation.edges[layer].float()  # (query, key)
        if clean is not None:  # the pattern edit sees (rows, query, head, key)
            held = clean[layer][:, :n_tokens, :n_tokens].permute(1, 0, 2) * (1 - cut)[:, None, :]  # (query, head, key)
            edits.append(engine.Edit("replace", "pattern", layer, rows=rows, value=held.to(model.device)))
        if cut.any():
            if clean is None:  # the pattern edit sees (rows, query, head, key): zero the pairs for every head
                edits.append(engine.Edit("map", "pattern", layer, rows=rows, fn=Rescale((1 - cut)[:, None, :])))
            if ref is not None:  # the removed entries' mean contribution to z, per (query, head)
                fill = torch.einsum("rhqk,qk,rkhe->qhe", ref.pattern[layer], cut, ref.v[layer]) / len(ref.v[layer])
                edits.append(engine.Edit("add", "z", layer, rows=rows, value=fill.to(model.device)))
        gone = ablation.mlps[layer].float()[:, None]  # (pos, 1)
        if gone.any():
            fill = None if ref is None else gone * ref.mlp_out[layer]
            edits.append(engine.Edit("map", "mlp_out", layer, rows=rows, fn=Rescale(1 - gone, fill)))
    return edits


def nothing(model: LoadedModel, n_tokens: int) -> Ablation:
    return Ablation.of(model.info.n_layers, n_tokens)


def everything(model: LoadedModel, n_tokens: int) -> Ablation:
    """Every attention edge (query sees key: key <= query) and every MLP of the model."""
    L = model.info.n_layers
    causal = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()  # (query, key)
    return Ablation(causal.expand(L, -1, -1).clone(), torch.ones(L, n_tokens, dtype=torch.bool))


def graph_ablation(model: LoadedModel, n_tokens: int, edges: list[Edge]) -> Ablation:
    """The attention edges and MLPs of `edges`."""
    return Ablation.of(
        model.info.n_layers,
        n_tokens,
        [(edge.layer, edge.destination[1], edge.source[1]) for edge in edges if edge.kind == "attention"],
        [(edge.layer, edge.destination[1]) for edge in edges if edge.kind == "mlp"],
    )


def graph_metric(answer: int, wrong: int | None) -> Metric:
    """The faithfulness metric: answer − wrong logit, or without a wrong token the answer's logit above the mean logit
    (metrics.metric_for: linear in the logits and 0 for a flat distribution, so a share of it kept is meaningful)."""
    return metric_for(answer, wrong, "logit above mean")


def run_ablations(
    model: LoadedModel,
    tokens: torch.Tensor,
    position: int,
    ablations: list[Ablation],
    ref: Reference | None,
    clean: list[torch.Tensor] | None = None,
    progress=None,
) -> torch.Tensor:
    """(ablation, d_vocab) logits at `position`, each ablation in its own batch row of one edited run.

    Through the forward engine where engine.backend chooses it: some attention bridges (OPT, GPT-J) hand
    the pattern to Hugging Face's module before its hook fires and discard an edit of it. Elsewhere
    through the model's own hooks (runs.run_edited). Positions after `position` cannot change it (causality)
    and are not run. With `progress(done)`, one ablation per call instead, reported after each (long work
    on a large model: a Cancel reaches it between calls).
    """
    n = position + 1
    if progress is not None:
        out = []
        for i, a in enumerate(ablations):
            out.append(run_ablations(model, tokens, position, [a], ref, clean))
            progress(i + 1)
        return torch.cat(out)
    edits = [e for row, a in enumerate(ablations) for e in ablation_edits(model, n, a.clip(n), row, _clip_ref(ref, n), clean)]
    batch = tokens[:n][None].expand(len(ablations), -1)
    chosen = engine.backend(model)
    with torch.no_grad():
        if not chosen.engine:
            logits, _ = run_edited(model, batch, edits, last_only=True)
            return logits[:, -1].float().cpu()
        return engine.forward(chosen.weights, batch.to(model.device), edits=edits, last_only=True).logits.float().cpu()


def _clip_ref(ref: Reference | None, n: int) -> Reference | None:
    if ref is None:
        return None
    return Reference([p[:, :, :n, :n] for p in ref.pattern], [v[:, :n] for v in ref.v], [m[:n] for m in ref.mlp_out])


@dataclass(frozen=True)
class Faithfulness:
    """How much of the prediction the graph explains, by ablation (metric: answer − wrong logit, or answer − mean logit)."""

    metric: str
    ablation: str  # "mean" or "zero"
    reference: str  # what the ablation puts in a part's place, in words (ablation_reference): its mean over what, or zero
    full: float  # the metric of the model's own run
    empty: float  # every attention edge and MLP ablated
    kept: float  # everything outside the graph ablated
    share: float  # (kept − empty) / (full − empty): 1 = the graph alone makes the prediction
    answer_top1: bool  # whether the answer is still the top prediction with only the graph kept
    k: int
    top_k: float  # the metric with the graph's top-k edges ablated
    random_k: list[float]  # the metric with k random attention edges or MLPs ablated, one per draw
    top_drop: float  # (full − top_k) / (full − empty)
    random_drop: float  # the same, averaged over the random draws
    survives: bool
    verdict: str
    backend: str = "engine"  # engine.backend's choice for the ablated runs (run_ablations)

    def rows(self) -> list[dict]:
        rows = [
            dict(run="model", metric=self.full), dict(run="everything ablated", metric=self.empty),
            dict(run="only the graph kept", metric=self.kept), dict(run=f"graph's top {self.k} ablated", metric=self.top_k),
        ]  # fmt: skip
        return rows + [dict(run=f"{self.k} random ablated (draw {d})", metric=m) for d, m in enumerate(self.random_k)]


def clean_patterns(model: LoadedModel, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (head, query, key): the attention patterns of the clean run of `tokens` (pos,)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.info.n_layers)]
    with torch.no_grad():
        _, cache = run_tokens(model, tokens[None], names)
    return [cache[n][0].float().cpu() for n in names]


def faithfulness(
    model: LoadedModel,
    g: Graph,
    ablation: str = "mean",
    k: int = 5,
    draws: int = 8,
    seed: int = 0,
    min_share: float = 0.5,
    frozen_patterns: bool = True,
    progress=None,
) -> Faithfulness:
    """Ablates everything outside the graph, and the graph's top-k edges vs k random ones, in one batched edited run.

    `frozen_patterns`: hold the attention patterns at the clean run's (module doc: what the graph describes).
    `progress(done, total)` after each model call (the reference runs, the clean run, each ablated
    run in turn); its False cancels there (cost.report)."""
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive number of edges, got {k}")
    n = g.position + 1  # later positions cannot change the prediction (causality): neither ablated nor drawn
    total, what = 2 + 4 + draws, "the faithfulness check"  # the reference and clean runs, then each ablated run
    ref = reference(model, g.tokens[:n], seed=seed) if ablation == "mean" else None
    cost.report(progress, 1, total, what)
    every = everything(model, n)
    inside = graph_ablation(model, n, list(g.edges))
    outside = Ablation(every.edges & ~inside.edges, every.mlps & ~inside.mlps)
    top = g.ranked(k)
    # k random parts from every attention edge and MLP that can reach the prediction
    pool_edges, pool_mlps = every.edges.nonzero(), every.mlps.nonzero()  # (e, 3), (m, 2)
    gen = torch.Generator().manual_seed(seed)
    randoms = []
    for _ in range(draws):
        picked = torch.randperm(len(pool_edges) + len(pool_mlps), generator=gen)[: len(top)].tolist()
        randoms.append(
            Ablation.of(
                model.info.n_layers, n,
                [tuple(pool_edges[i].tolist()) for i in picked if i < len(pool_edges)],
                [tuple(pool_mlps[i - len(pool_edges)].tolist()) for i in picked if i >= len(pool_edges)],
            )
        )  # fmt: skip
    ablations = [nothing(model, n), every, outside, graph_ablation(model, n, top), *randoms]
    clean = clean_patterns(model, g.tokens[:n]) if frozen_patterns else None
    cost.report(progress, 2, total, what)
    logits = run_ablations(model, g.tokens, g.position, ablations, ref, clean, progress=lambda i: cost.report(progress, 2 + i, total, what))
    m = graph_metric(g.answer, g.wrong).value(logits).tolist()
    full, empty, kept, top_k, random_k = m[0], m[1], m[2], m[3], m[4:]
    span = full - empty
    share = (kept - empty) / span if abs(span) > 1e-9 else float("nan")
    top_drop = (full - top_k) / span if abs(span) > 1e-9 else float("nan")
    random_drop = sum((full - r) / span for r in random_k) / len(random_k) if random_k and abs(span) > 1e-9 else float("nan")
    answer_top1 = int(logits[2].argmax()) == g.answer
    survives = share == share and share >= min_share
    fill = ablation_reference(ablation)
    how = f"{ablation}-ablated" + (f" ({fill})" if ablation == "mean" else "")
    if survives:
        verdict = f"the graph keeps {share:.0%} of the metric with everything outside it {how}"
    else:
        verdict = (
            f"the graph does NOT survive its own check: with everything outside it {how} only {share:.0%} of "
            f"the metric is left (below {min_share:.0%}); lower the threshold to keep more of the model"
        )
    metric = "logit difference (answer − wrong)" if g.contrastive else "answer logit − mean logit"
    return Faithfulness(
        metric, ablation, fill, full, empty, kept, share, answer_top1, len(top), top_k, random_k, top_drop, random_drop, survives, verdict,
        backend=engine.backend(model).name,
    )  # fmt: skip


def ablation_reference(ablation: str) -> str:
    """What `ablation` puts in place of a removed part, in words: the graph's mean is over random-token runs (module doc: why),
    not the Intervene page's mean over held-out text (edit_values.mean_reference)."""
    if ablation == "mean":
        return f"mean over {REFERENCE_RUNS} random-token runs of the prompt's length"
    return "zero"


def quick_check(model: LoadedModel, n_tokens: int) -> bool:
    """Whether a faithfulness check (~20 forward passes) is cheap enough to run without being asked: a fraction of a second here."""
    return model.info.d_model * model.info.n_layers * n_tokens <= 2**18


def faithfulness_of(
    model: LoadedModel, prompt: str, position: int = -1, threshold: float = THRESHOLD, answer: int | None = None, wrong: int | None = None,
    ablation: str = "mean", k: int = 5, truncate: bool = False, progress=None,
) -> Faithfulness:  # fmt: skip
    """The faithfulness of the graph `build` makes with these arguments (plain values: a page can cache it by them)."""
    return faithfulness(model, build(model, prompt, position, threshold, answer, wrong, truncate), ablation, k, progress=progress)
