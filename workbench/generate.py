"""Next-token predictions and generation, one token at a time, keeping each step's candidates.

The home page's lesson: a GPT maps a prompt to one distribution over the next token; text comes
from drawing a token, appending it, and running again. The sampling settings reshape that
distribution before the draw:
- temperature T divides the logits (T < 1 sharpens, T > 1 flattens; greedy is T -> 0);
- top-k keeps the k most likely tokens; top-p keeps the smallest set whose probability reaches p;
the kept probabilities are renormalised, and each `Step` records them as its candidates.

Each step's logits come from `NextLogits`: on the forward engine with a key/value cache, so that a
step runs only the new token (the earlier positions' keys and values are kept; by causality
nothing else about them can change), or -- where the engine does not run this model or does not
check out against it (engine.backend) -- by a full run of the whole sequence through the
model's own hooks. Edits apply inside every step's call either way: one of a prompt position acts
in the first step and stays in the cache, one of every position acts on each new token too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.engine import Edit
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import encode, provenance, run_edited
from workbench.tokens import token_labels


@dataclass(frozen=True)
class Sampling:
    """How each next token is chosen. Defaults: greedy."""

    max_new_tokens: int = 20
    greedy: bool = True
    temperature: float = 1.0  # > 0; ignored when greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int = 0
    candidates: int = 5  # candidates recorded per step

    def check(self) -> Sampling:
        if not 1 <= self.max_new_tokens <= 512:
            raise InputError(f"max_new_tokens must be between 1 and 512, got {self.max_new_tokens}")
        if not self.greedy and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature must be a positive number, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.candidates <= 50:
            raise InputError(f"candidates must be between 1 and 50, got {self.candidates}")
        return self


def sampling_distribution(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """(d_vocab,) probabilities the next token is drawn from: temperature, then top-k, then top-p."""
    if s.greedy:
        probs = torch.zeros_like(logits)
        probs[logits.argmax()] = 1.0
        return probs
    probs = (logits / s.temperature).softmax(-1)
    if s.top_k:
        cutoff = probs.topk(min(s.top_k, len(probs))).values[-1]
        probs = torch.where(probs >= cutoff, probs, 0.0)
    if s.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each token
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[order] = before < s.top_p * sorted_probs.sum()
        probs = torch.where(keep, probs, 0.0)
    return probs / probs.sum()


@dataclass(frozen=True)
class Step:
    position: int  # where the chosen token lands
    chosen_id: int
    chosen_label: str
    chosen_prob: float  # under the model's own (T = 1) distribution
    candidate_ids: list[int]
    candidate_labels: list[str]
    candidate_probs: list[float]  # model's T = 1 probabilities
    draw_probs: list[float]  # probabilities after the sampling settings


@dataclass(frozen=True)
class Generation:
    prompt: str
    sampling: Sampling
    prompt_tokens: int
    text: str  # the continuation
    steps: list[Step] = field(default_factory=list)
    stopped: str = ""  # why it stopped
    provenance: dict = field(default_factory=dict, repr=False)
    backend: str = "engine"  # "engine" (with its key/value cache), else the model's own hooks, the whole sequence each step


class NextLogits:
    """next_logits(ids (pos,)) -> (d_vocab,) float32 next-token logits of ids, with `edits` applied; for a growing sequence.

    With `cache` (and an engine that checks out for this model), a call whose ids extend the
    previous call's runs only the new positions on the engine, from the keys and values kept of
    the earlier ones (before rotary, after the edits: what the uncached run computes there); any
    other call runs the whole sequence. Without, every call runs the whole sequence through the
    model's hooks (runs.run_edited). `cached` says which.
    """

    def __init__(self, model: LoadedModel, edits: Sequence[Edit] = (), cache: bool = True):
        self.model, self.edits = model, list(edits)
        self.weights = None
        # the engine computes in float32: a model in another dtype would not check out, and reading its weights
        # would make a float32 copy of them all (5 GB for a 1B model in bfloat16) only to find that out
        if cache and model.info.dtype == "float32":
            self.weights = engine.backend(model).weights  # None: the model's own hooks, uncached
        self.ids: torch.Tensor | None = None  # (pos,) the sequence whose keys and values are kept
        self.past: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> ((1, pos, kv_head, d_head) keys, values)

    @property
    def cached(self) -> bool:
        return self.weights is not None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            logits, _ = run_edited(self.model, ids[None], self.edits, last_only=True)
            return logits[0, -1].float().cpu()
        w = self.weights
        seen = self.ids
        extends = seen is not None and len(ids) > len(seen) and torch.equal(ids[: len(seen)], seen)
        start = len(seen) if extends else 0
        names = [f"blocks.{layer}.{engine.SITE_HOOKS[kv]}" for layer in range(w.n_layers) for kv in ("k", "v")]
        with torch.no_grad():
            out = engine.forward(
                w, ids[None, start:].to(w.W_U.device), edits=self.edits, capture=names, last_only=True,
                past=self.past if start else None, offset=start,
            )  # fmt: skip
        new = {layer: (out.captured[names[2 * layer]], out.captured[names[2 * layer + 1]]) for layer in range(w.n_layers)}
        if start:
            new = {layer: tuple(torch.cat([old, n], 1) for old, n in zip(self.past[layer], new[layer], strict=True)) for layer in new}
        self.ids, self.past = ids.clone(), new
        return out.logits[0].float().cpu()


def generate(
    model: LoadedModel, prompt: str, sampling: Sampling = Sampling(), edits: Sequence[Edit] = (), cache: bool = True
) -> Generation:
    """The continuation of `prompt`, step by step; with `edits` (engine.Edit data) applied to every step's run.

    An edit with a position acts on that position of the prompt at every step; one without acts
    on every position, the generated ones included. `cache`: keep the keys and values of the
    positions already run (NextLogits); the same tokens and logits (within float error) as without.
    """
    s = sampling.check()
    ids, _ = encode(model, prompt)
    next_logits = NextLogits(model, edits, cache)
    gen = torch.Generator().manual_seed(s.seed)
    steps: list[Step] = []
    stopped = f"reached {s.max_new_tokens} new tokens"
    eos = model.tokenizer.eos_token_id
    for _ in range(s.max_new_tokens):
        if len(ids) >= model.info.n_ctx:
            stopped = f"the context is full ({model.info.n_ctx} tokens)"
            break
        logits = next_logits(ids)  # (d_vocab,)
        probs = logits.softmax(-1)
        draw = sampling_distribution(logits, s)
        chosen = int(draw.argmax()) if s.greedy else int(torch.multinomial(draw, 1, generator=gen))
        order = draw.topk(min(s.candidates, int((draw > 0).sum()))).indices if not s.greedy else probs.topk(s.candidates).indices
        cand = order.tolist()
        labels = token_labels(model.tokenizer, [chosen, *cand])
        steps.append(
            Step(
                position=len(ids),
                chosen_id=chosen,
                chosen_label=labels[0],
                chosen_prob=float(probs[chosen]),
                candidate_ids=cand,
                candidate_labels=labels[1:],
                candidate_probs=[float(probs[i]) for i in cand],
                draw_probs=[float(draw[i]) for i in cand],
            )
        )
        ids = torch.cat([ids, torch.tensor([chosen])])
        if chosen == eos:
            stopped = "the model produced its end-of-text token"
            break
    text = model.tokenizer.decode([st.chosen_id for st in steps], skip_special_tokens=False)
    backend = "engine" if next_logits.cached else engine.model_hooks(model)
    return Generation(
        prompt,
        s,
        len(ids) - len(steps),
        text,
        steps,
        stopped,
        provenance(
            model,
            [prompt],
            **dataclasses.asdict(s),
            **({"edits": [repr(e) for e in edits]} if edits else {}),
            backend=backend,
        ),
        backend=backend,
    )
