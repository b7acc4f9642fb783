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

Speed. transformer-lens's `patching` module (the reference our sweeps are tested against) runs
one full forward pass per cell. Here many patched runs share one batched pass, each starts at the
patched layer from the cached residual stream (the layers before it cannot change), and only the
last position is unembedded. The blocks are run by a plain re-implementation of the bridge's
compatibility-mode GPT (`Weights`, `block`), which is checked against the bridge's own logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.runs import encode, run_prompt
from workbench.tokens import token_labels

METRICS = ("logit difference", "probability", "log-probability")
DIRECTIONS = ("denoising", "noising")
# site -> (what a cell is, the grid's axes)
SITES = {
    "resid_pre": "residual stream before each block, per layer × position",
    "attn_out": "attention output, per layer × position",
    "mlp_out": "MLP output, per layer × position",
    "z": "each head's output, per layer × head (all positions)",
    "z_pos": "each head's output, per layer × head × position",
    "q": "each head's queries, per layer × head",
    "k": "each head's keys, per layer × head",
    "v": "each head's values, per layer × head",
    "pattern": "each head's attention pattern, per layer × head",
}
BATCH = 64  # patched runs per pass, at most (fewer when one run's intermediates are large: see batch_size)


def batch_size(model: LoadedModel, n_tokens: int) -> int:
    """Patched runs per pass that keep one block's intermediates within the memory budget."""
    from workbench.runs import memory_budget

    i = model.info
    per_run = 4 * n_tokens * (6 * i.d_model + 2 * i.d_mlp + 3 * i.n_heads * n_tokens)  # float32 bytes alive in one block
    return max(1, min(BATCH, memory_budget() // max(1, per_run)))


# ---- a plain forward pass over the bridge's processed weights --------------------------------------


@dataclass(frozen=True)
class Weights:
    """The bridge's weights in transformer-lens's (layer, head, d_model, d_head) layout, on the CPU."""

    W_Q: torch.Tensor  # (layer, head, d_model, d_head)
    b_Q: torch.Tensor  # (layer, head, d_head)
    W_K: torch.Tensor
    b_K: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # (layer, head, d_head, d_model)
    b_O: torch.Tensor  # (layer, d_model)
    W_in: torch.Tensor  # (layer, d_model, d_mlp)
    b_in: torch.Tensor
    W_out: torch.Tensor  # (layer, d_mlp, d_model)
    b_out: torch.Tensor
    ln1: list[tuple[torch.Tensor | None, torch.Tensor | None]]  # per layer (weight, bias)
    ln2: list[tuple[torch.Tensor | None, torch.Tensor | None]]
    ln_final: tuple[torch.Tensor | None, torch.Tensor | None]
    W_U: torch.Tensor  # (d_model, d_vocab)
    b_U: torch.Tensor  # (d_vocab,)
    eps: float
    scale: float  # attention scale, √d_head
    act: str
    W_qkv: torch.Tensor | None = None  # (layer, d_model, 3 * head * d_head): the three projections in one matmul
    b_qkv: torch.Tensor | None = None  # (layer, 3 * head * d_head)
    W_O_flat: torch.Tensor | None = None  # (layer, head * d_head, d_model)

    def fused(self) -> Weights:
        """The same weights with Q, K, V (and O) laid out for single matmuls (einsum over heads is slow on CPU)."""
        layers, heads, d_model, d_head = self.W_Q.shape

        def flat(w):  # (layer, head, d_model, d_head) -> (layer, d_model, head * d_head)
            return w.permute(0, 2, 1, 3).reshape(layers, d_model, heads * d_head)

        return dataclasses.replace(
            self,
            W_qkv=torch.cat([flat(self.W_Q), flat(self.W_K), flat(self.W_V)], -1).contiguous(),
            b_qkv=torch.cat([self.b_Q.reshape(layers, -1), self.b_K.reshape(layers, -1), self.b_V.reshape(layers, -1)], -1),
            W_O_flat=self.W_O.reshape(layers, heads * d_head, d_model).contiguous(),
        )


def _ln_params(module, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    return (None if w is None else w.detach().float().to(device), None if b is None else b.detach().float().to(device))


def weights_of(model: LoadedModel) -> Weights:
    """The model's weights for the plain forward pass, extracted once and kept on the model."""
    cached = getattr(model, "_patching_weights", None)
    if cached is not None:
        return cached
    if not model.info.compatibility_mode:
        raise InputError("fast patching needs the model in compatibility mode (the default of load_model)")
    b = model.bridge
    act = str(getattr(b.cfg, "act_fn", "gelu_new"))
    if act not in ("gelu_new", "gelu", "relu", "gelu_fast", "gelu_pytorch_tanh"):
        raise InputError(f"fast patching does not know the activation '{act}' of this model")
    configured = float(getattr(b.cfg, "attn_scale", -1.0))

    device = model.device  # CUDA when the model is there: the sweep runs where the weights live

    def t(x):
        return x.detach().float().to(device)

    w = Weights(
        t(b.W_Q), t(b.b_Q), t(b.W_K), t(b.b_K), t(b.W_V), t(b.b_V), t(b.W_O), t(b.b_O),
        t(b.W_in), t(b.b_in), t(b.W_out), t(b.b_out),
        [_ln_params(blk.ln1, device) for blk in b.blocks], [_ln_params(blk.ln2, device) for blk in b.blocks], _ln_params(b.ln_final, device),
        t(b.W_U), t(b.b_U) if getattr(b, "b_U", None) is not None else torch.zeros(model.info.d_vocab, device=device),
        float(getattr(b.cfg, "eps", 1e-5)), configured if configured > 0 else math.sqrt(model.info.d_head), act,
    ).fused()  # fmt: skip
    object.__setattr__(model, "_patching_weights", w)
    return w


def _act(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "relu":
        return torch.relu(x)
    if kind == "gelu":
        return torch.nn.functional.gelu(x)
    return torch.nn.functional.gelu(x, approximate="tanh")


def _ln(x: torch.Tensor, params, eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), params[0], params[1], eps)


# In-block edits: site -> f(activation) applied inside one block. Shapes follow transformer-lens hooks.
Edits = dict[str, Callable[[torch.Tensor], torch.Tensor]]


def block(w: Weights, layer: int, resid: torch.Tensor, edits: Edits | None = None) -> torch.Tensor:
    """(batch, pos, d_model) -> the residual stream after block `layer`, with optional in-block edits."""
    edits = edits or {}
    batch, pos, _ = resid.shape
    heads, d_head = w.W_Q.shape[1], w.W_Q.shape[3]
    x = _ln(resid, w.ln1[layer], w.eps)
    qkv = torch.addmm(w.b_qkv[layer], x.reshape(batch * pos, -1), w.W_qkv[layer])  # (batch * pos, 3 * head * d_head)
    q, k, v = qkv.reshape(batch, pos, 3, heads, d_head).unbind(2)  # each (batch, pos, head, d_head)
    q, k, v = (edits[n](t) if n in edits else t for n, t in (("q", q), ("k", k), ("v", v)))
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / w.scale  # (batch, head, q, k)
    future = torch.ones(pos, pos, dtype=torch.bool, device=resid.device).triu(1)
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
    if "pattern" in edits:
        pattern = edits["pattern"](pattern)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # (batch, pos, head, d_head)
    if "z" in edits:
        z = edits["z"](z)
    attn_out = (z.reshape(batch * pos, heads * d_head) @ w.W_O_flat[layer]).reshape(batch, pos, -1) + w.b_O[layer]
    if "attn_out" in edits:
        attn_out = edits["attn_out"](attn_out)
    mid = resid + attn_out
    h = _act(_ln(mid, w.ln2[layer], w.eps) @ w.W_in[layer] + w.b_in[layer], w.act)  # (batch, pos, d_mlp)
    mlp_out = h @ w.W_out[layer] + w.b_out[layer]
    if "mlp_out" in edits:
        mlp_out = edits["mlp_out"](mlp_out)
    return mid + mlp_out


def last_block(w: Weights, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """block() for the final layer when only the last position is read: (batch, pos, d_model) -> (batch, d_model).

    Keys and values still come from every position; the query, the attention row and the MLP only
    from the last one.
    """
    batch, pos, _ = resid.shape
    heads, d_head = w.W_Q.shape[1], w.W_Q.shape[3]
    x = _ln(resid, w.ln1[layer], w.eps)
    hd = heads * d_head
    kv = torch.addmm(w.b_qkv[layer, hd:], x.reshape(batch * pos, -1), w.W_qkv[layer, :, hd:])  # keys and values everywhere
    k, v = kv.reshape(batch, pos, 2, heads, d_head).unbind(2)  # (batch, pos, head, d_head)
    q = (torch.addmm(w.b_qkv[layer, :hd], x[:, -1], w.W_qkv[layer, :, :hd])).reshape(batch, heads, d_head)  # the last query only
    pattern = (torch.einsum("bhe,bkhe->bhk", q, k) / w.scale).softmax(-1)  # the last query sees every key
    z = torch.einsum("bhk,bkhe->bhe", pattern, v)
    mid = resid[:, -1] + z.reshape(batch, hd) @ w.W_O_flat[layer] + w.b_O[layer]
    h = _act(_ln(mid, w.ln2[layer], w.eps) @ w.W_in[layer] + w.b_in[layer], w.act)
    return mid + h @ w.W_out[layer] + w.b_out[layer]


def run_from(w: Weights, layer: int, resid: torch.Tensor, edits: Edits | None = None, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits (batch, d_vocab) at the last position, running blocks layer.. from `resid` (batch, pos, d_model).

    With `columns`, only those tokens' logits (batch, len(columns)): enough for a logit difference,
    and the unembedding of a 50k vocabulary is a large share of the work otherwise.
    """
    last = w.W_Q.shape[0] - 1
    for index in range(layer, last):
        resid = block(w, index, resid, edits if index == layer else None)
    final = block(w, last, resid, edits)[:, -1] if layer == last and edits else last_block(w, last, resid)
    x = _ln(final, w.ln_final, w.eps)
    if columns is not None:
        return x @ w.W_U[:, columns] + w.b_U[columns]
    return x @ w.W_U + w.b_U


# ---- prompts, metric, baselines -----------------------------------------------------------------


@dataclass(frozen=True)
class PatchingSetup:
    """Two prompts of one length and what the metric reads."""

    clean: str
    corrupted: str
    answer: int  # token id the clean prompt should produce
    wrong: int  # token id the corrupted prompt points to (for the logit difference)
    metric: str = "logit difference"

    def columns(self) -> list[int] | None:
        """The only logits the metric reads, when it reads only some (the logit difference)."""
        return [self.answer, self.wrong] if self.metric == "logit difference" else None

    def value_of_columns(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) metric from run_from(..., columns=self.columns()) or from full logits."""
        if self.metric == "logit difference" and logits.shape[-1] == 2:
            return logits[:, 0] - logits[:, 1]
        return self.value(logits)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) metric of next-token logits (batch, d_vocab)."""
        if self.metric == "logit difference":
            return logits[:, self.answer] - logits[:, self.wrong]
        if self.metric == "probability":
            return logits.softmax(-1)[:, self.answer]
        return logits.log_softmax(-1)[:, self.answer]


@dataclass(frozen=True)
class TokenComparison:
    """Both prompts' tokens side by side, and where they differ."""

    clean: list[str]
    corrupted: list[str]
    differ: list[int]  # positions whose tokens differ (over the shorter length)

    @property
    def same_length(self) -> bool:
        return len(self.clean) == len(self.corrupted)


def compare_tokens(model: LoadedModel, clean: str, corrupted: str) -> TokenComparison:
    a, _ = encode(model, clean)
    b, _ = encode(model, corrupted)
    n = min(len(a), len(b))
    differ = [i for i in range(n) if a[i] != b[i]]
    return TokenComparison(token_labels(model.tokenizer, a.tolist()), token_labels(model.tokenizer, b.tolist()), differ)


def candidate_targets(model: LoadedModel, clean: str, corrupted: str, k: int = 8) -> tuple[dict[str, int], dict[str, int]]:
    """({label: id} answers, {label: id} wrongs) to offer, best guesses first.

    Where the prompts differ in one token, that token of each prompt comes first (the usual
    copying or fact pair: the clean prompt's word is the answer); then each run's top predictions.
    """
    from workbench.generate import next_token_topk

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
    for name, t in (("answer", s.answer), ("wrong", s.wrong)):
        if not (isinstance(t, int) and 0 <= t < model.info.d_vocab):
            raise InputError(f"the {name} token must be a token id in 0..{model.info.d_vocab - 1}")
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

    site: str
    direction: str
    metric: str
    axes: tuple[str, ...]  # e.g. ("layer", "position") or ("layer", "head")
    values: torch.Tensor  # normalised, shape by axes
    raw: torch.Tensor  # the metric itself, same shape
    clean_value: float
    corrupted_value: float
    labels: list[str]  # position labels of the clean prompt
    setup: PatchingSetup = field(repr=False)

    def ranked(self, k: int = 10) -> list[dict]:
        """The k cells that move the metric most (by |normalised effect|)."""
        flat = self.values.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        rows = []
        for i in order.tolist():
            index = torch.unravel_index(torch.tensor(i), self.values.shape)
            cell = {axis: int(v) for axis, v in zip(self.axes, index, strict=True)}
            if "position" in cell:
                cell["token"] = self.labels[cell["position"]]
            rows.append(cell | dict(normalised=float(flat[i]), metric=float(self.raw.flatten()[i])))
        return rows

    def rows(self) -> list[dict]:
        return self.ranked(self.values.numel())


_ACT_NAMES = {
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
    "z_pos": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
}


def _cells(site: str, info, pos: int) -> tuple[tuple[str, ...], list[tuple[int, ...]]]:
    if site in ("resid_pre", "attn_out", "mlp_out"):
        return ("layer", "position"), [(layer, p) for layer in range(info.n_layers) for p in range(pos)]
    if site == "z_pos":
        return ("layer", "head", "position"), [
            (layer, h, p) for layer in range(info.n_layers) for h in range(info.n_heads) for p in range(pos)
        ]
    return ("layer", "head"), [(layer, h) for layer in range(info.n_layers) for h in range(info.n_heads)]


def _edit_for(site: str, cells: list[tuple[int, ...]], source: torch.Tensor) -> Edits:
    """Batched in-block edits: batch row i gets cell i's slice of `source` (one layer's activation, no batch dim)."""

    def replace(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        rows = torch.arange(len(cells), device=act.device)

        def index(i: int) -> torch.Tensor:
            return torch.tensor([c[i] for c in cells], device=act.device)

        if site in ("attn_out", "mlp_out"):  # act (batch, pos, d_model)
            p = index(1)
            act[rows, p] = source[p]
        elif site == "z_pos":  # act (batch, pos, head, d_head)
            h, p = index(1), index(2)
            act[rows, p, h] = source[p, h]
        elif site == "pattern":  # act (batch, head, q, k)
            h = index(1)
            act[rows, h] = source[h]
        else:  # z, q, k, v: act (batch, pos, head, d_head), every position of head h
            h = index(1)
            act[rows, :, h] = source[:, h].permute(1, 0, 2)  # (batch, pos, d_head)
        return act

    return {"z" if site == "z_pos" else site: replace}


def sweep(
    model: LoadedModel,
    setup: PatchingSetup,
    site: str = "resid_pre",
    direction: str = "denoising",
    progress: Callable[[int, int], bool | None] | None = None,
) -> PatchResult:
    """Patches every cell of `site`; `progress(done, total)` is called after each batch and may return False to cancel."""
    if site not in SITES:
        raise InputError(f"unknown site '{site}': use one of {', '.join(SITES)}")
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction '{direction}': use denoising or noising")
    check_setup(model, setup)
    info = model.info
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(info.n_layers)]
    if site != "resid_pre":
        names += [f"blocks.{layer}.{_ACT_NAMES[site]}" for layer in range(info.n_layers)]
    clean_run = run_prompt(model, setup.clean, names)
    corrupted_run = run_prompt(model, setup.corrupted, names)
    target, source = (corrupted_run, clean_run) if direction == "denoising" else (clean_run, corrupted_run)
    clean_value = float(setup.value(clean_run.logits[-1:]))
    corrupted_value = float(setup.value(corrupted_run.logits[-1:]))
    w = weights_of(model)
    pos = clean_run.n_tokens
    axes, cells = _cells(site, info, pos)
    raw = torch.empty(len(cells))
    done = 0
    batch_cells = batch_size(model, pos)
    columns = None if setup.columns() is None else torch.tensor(setup.columns(), device=w.W_U.device)
    with torch.no_grad():
        for layer in range(info.n_layers):
            in_layer = [i for i, c in enumerate(cells) if c[0] == layer]
            resid = target[f"blocks.{layer}.hook_resid_pre"].float().to(w.W_U.device)  # (pos, d_model)
            for start in range(0, len(in_layer), batch_cells):
                chunk = in_layer[start : start + batch_cells]
                batch = resid[None].expand(len(chunk), -1, -1).clone()  # (batch, pos, d_model)
                edits = None
                if site == "resid_pre":
                    p = torch.tensor([cells[i][1] for i in chunk], device=batch.device)
                    batch[torch.arange(len(chunk), device=batch.device), p] = (
                        source[f"blocks.{layer}.hook_resid_pre"].float().to(batch.device)[p]
                    )
                else:
                    edits = _edit_for(
                        site, [cells[i] for i in chunk], source[f"blocks.{layer}.{_ACT_NAMES[site]}"].float().to(batch.device)
                    )
                raw[chunk] = setup.value_of_columns(run_from(w, layer, batch, edits, columns)).cpu()
                done += len(chunk)
                if progress is not None and progress(done, len(cells)) is False:
                    raise InputError(f"the sweep was cancelled after {done} of {len(cells)} cells")
    shape = tuple({"layer": info.n_layers, "position": pos, "head": info.n_heads}[a] for a in axes)
    span = clean_value - corrupted_value
    normalised = (raw - corrupted_value) / span if abs(span) > 1e-9 else torch.full_like(raw, float("nan"))
    return PatchResult(
        site,
        direction,
        setup.metric,
        axes,
        normalised.reshape(shape),
        raw.reshape(shape),
        clean_value,
        corrupted_value,
        clean_run.labels,
        setup,
    )


# ---- attribution patching: the linear estimate, one forward and one backward pass ------------------


def _site_activation(site: str) -> str:
    return {"z_pos": "z"}.get(site, site)


def attribution_sweep(model: LoadedModel, setup: PatchingSetup, site: str = "resid_pre", direction: str = "denoising") -> PatchResult:
    """Estimates every cell's patching effect as (source − target activation) · ∂metric/∂activation.

    The gradient is taken once, on the target run (corrupted for denoising). It ranks cells well
    but misjudges sizes (measured here: rank correlation ~0.99, sizes off by up to 5×), so it is a
    preview: check the top cells exactly.
    """
    if site not in SITES:
        raise InputError(f"unknown site '{site}': use one of {', '.join(SITES)}")
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction '{direction}': use denoising or noising")
    check_setup(model, setup)
    w = weights_of(model)
    info = model.info
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(info.n_layers)]
    clean_run = run_prompt(model, setup.clean, names)
    corrupted_run = run_prompt(model, setup.corrupted, names)
    target, source = (corrupted_run, clean_run) if direction == "denoising" else (clean_run, corrupted_run)
    act_name = _site_activation(site)

    def run_capturing(resid0: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        captured: list[torch.Tensor] = []
        resid = resid0
        for layer in range(info.n_layers):
            if act_name == "resid_pre":
                if grad:
                    resid.retain_grad()  # one graph through every layer: each resid_pre keeps its gradient
                captured.append(resid)
                resid = block(w, layer, resid)
            else:

                def keep(a: torch.Tensor) -> torch.Tensor:
                    if grad:
                        a.retain_grad()
                    captured.append(a)
                    return a

                resid = block(w, layer, resid, {act_name: keep})
        return _ln(resid[:, -1], w.ln_final, w.eps) @ w.W_U + w.b_U, captured

    device = w.W_U.device
    with torch.no_grad():
        _, source_acts = run_capturing(source["blocks.0.hook_resid_pre"].float()[None].to(device), grad=False)
    resid0 = target["blocks.0.hook_resid_pre"].float()[None].to(device).clone().requires_grad_(True)  # never the shared cached tensor
    with torch.enable_grad():
        logits, target_acts = run_capturing(resid0, grad=True)
        setup.value(logits).sum().backward()
    effects = []
    for s_act, t_act in zip(source_acts, target_acts, strict=True):
        e = (s_act.detach() - t_act.detach()) * t_act.grad  # same shape as the activation, batch 1
        e = e[0].cpu()
        if site in ("resid_pre", "attn_out", "mlp_out"):
            effects.append(e.sum(-1))  # (pos,)
        elif site == "z_pos":
            effects.append(e.sum(-1).T)  # (head, pos)
        elif site == "pattern":
            effects.append(e.sum((-1, -2)))  # (head,)
        else:
            effects.append(e.sum((0, 2)))  # (head,)
    clean_value = float(setup.value(clean_run.logits[-1:]))
    corrupted_value = float(setup.value(corrupted_run.logits[-1:]))
    target_value = corrupted_value if direction == "denoising" else clean_value
    raw = torch.stack(effects) + target_value  # the estimated patched metric
    span = clean_value - corrupted_value
    normalised = (raw - corrupted_value) / span if abs(span) > 1e-9 else torch.full_like(raw, float("nan"))
    axes, _ = _cells(site, info, clean_run.n_tokens)
    return PatchResult(
        f"{site} (attribution patching estimate)",
        direction,
        setup.metric,
        axes,
        normalised,
        raw,
        clean_value,
        corrupted_value,
        clean_run.labels,
        setup,
    )


def correlation(a: PatchResult, b: PatchResult) -> float:
    """Pearson correlation of two sweeps' normalised values (NaN-free cells)."""
    x, y = a.values.flatten(), b.values.flatten()
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else float("nan")


def exact_cells(model: LoadedModel, result: PatchResult, k: int = 5) -> list[dict]:
    """The exact normalised effect of the top k cells of a sweep (typically an estimate), by patching each."""
    site = result.site.split(" ")[0]
    exact = sweep(model, result.setup, site, result.direction)
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


def sweep_dataset(
    model: LoadedModel, setups: list[PatchingSetup], site: str = "resid_pre", direction: str = "denoising", progress=None
) -> DatasetPatchResult:
    if not setups:
        raise InputError("the dataset has no prompt pairs")
    results = []
    for i, s in enumerate(setups):
        results.append(sweep(model, s, site, direction))
        if progress is not None and progress(i + 1, len(setups)) is False:
            raise InputError(f"the dataset sweep was cancelled after {i + 1} of {len(setups)} pairs")
    shapes = {r.values.shape for r in results}
    if len(shapes) > 1:
        raise InputError("every prompt pair of a dataset must have the same number of tokens, so that positions line up")
    stack = torch.stack([r.values for r in results])
    return DatasetPatchResult(
        site,
        direction,
        setups[0].metric,
        results[0].axes,
        stack.mean(0),
        stack.std(0) if len(results) > 1 else torch.zeros_like(stack[0]),
        len(results),
        results[0].labels,
    )


def induction_pairs(model: LoadedModel, n_pairs: int = 8, length: int = 8, repeat: int = 4, seed: int = 0) -> list[PatchingSetup]:
    """Copying prompt pairs for the circuits model: random words, then the first `repeat` again.

    Clean: w1..wL w1..wR -> answer w(R+1). Corrupted: the earlier copy's w(R+1) swapped for another
    word x, so an induction head now points to x (the wrong token).
    """
    from workbench.heads import candidate_tokens

    gen = torch.Generator().manual_seed(seed)
    words = candidate_tokens(model)
    pairs = []
    for _ in range(n_pairs):
        pick = words[torch.randperm(len(words), generator=gen)[: length + 1]]
        seq, other = pick[:length], int(pick[length])
        clean_ids = torch.cat([seq, seq[:repeat]])
        corrupted_ids = clean_ids.clone()
        corrupted_ids[repeat] = other
        decode = model.tokenizer.decode
        pairs.append(PatchingSetup(decode(clean_ids), decode(corrupted_ids), int(seq[repeat]), other))
    return pairs
