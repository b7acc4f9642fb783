"""The forward engine: the project's one model file, a plain forward pass that can be edited as data.

Read it top to bottom: `weights_of` reads a loaded model's weights out of its Hugging Face modules
(after transformer-lens's compatibility-mode processing, which writes the folded weights back
into those modules, so the plain model and the bridge compute the same logits); `forward` runs
embed -> blocks -> unembed. Analyses read weights from here too: `block_weights` (a block's W_O, b_O,
W_out, b_out) and `readout_of` (the final norm and unembedding), also for a model the engine cannot
run. Each family's differences are small named branches of one `Weights` description rather than
separate forward passes:

| family | norm | positions | attention | MLP | block |
|---|---|---|---|---|---|
| GPT-2 | LayerNorm | learned | fused QKV, scale 1/√d (÷ layer index+1 if asked) | GELU | sequential |
| GPT-NeoX (Pythia) | LayerNorm | rotary, partial | per-head interleaved QKV | GELU | parallel, two norms |
| Llama, Mistral, Qwen2 | RMSNorm | rotary | grouped-query, no bias (Qwen2: QKV bias) | SwiGLU | sequential |
| Gemma | RMSNorm (1 + w) | rotary | grouped-query | GeGLU | sequential, embeddings × √d_model |
| Phi | LayerNorm | rotary, partial | biases | GELU | parallel, one norm |
| OPT | LayerNorm | learned, offset 2 | biases | ReLU | sequential |
| GPT-J | LayerNorm | rotary, partial, interleaved pairs | no bias | GELU | parallel, one norm |

Edits are data (`Edit`): at one site of one layer, replace, add to, or zero-ablate a slice
(a position, a head, or both) -- per batch row, so that many patched runs share one batched pass --
or map it through a function of its own value (`map`: a feature clamp reads the feature's
activation from the very residual it changes).
Activation patching is an `Edit("replace", ...)` with another run's activation. Site names and
activation shapes follow transformer-lens's hooks (`SITE_HOOKS`): `q`, `k`, `v` before rotary,
(batch, pos, head, d_head), with key/value heads for grouped-query attention; `pattern`
(batch, head, query, key); residual-stream sites (batch, pos, d_model).

Nothing here is trusted blindly: `backend(model)` checks the engine's logits against the model's own
once per set of weights and, on a mismatch or a family the engine does not know (`Unsupported`),
chooses the model's own hooks instead; every analysis that can run either way asks it, and records
the choice on its result (`result.backend`).

Above 500 lines: it is the model file (one forward pass for every family, edits applied as data), read top to bottom;
split, the forward would be scattered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from workbench.model import LoadedModel, offloaded, onloaded

# engine site -> transformer-lens hook suffix in block L ("blocks.L." + suffix)
SITE_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",  # sequential blocks only: parallel blocks have no such point
    "mlp_post": "mlp.hook_post",  # (batch, pos, d_mlp): the neurons, after the activation (and gate)
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
KINDS = ("replace", "add", "ablate", "map")


class Unsupported(Exception):
    """The engine does not know this model's architecture (or one of its options); the reason is the message."""


# ---- weights ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Norm:
    """LayerNorm or RMSNorm; `offset` 1.0 for Gemma's x · (1 + w)."""

    kind: str  # "layer" or "rms"
    weight: torch.Tensor | None  # (d_model,)
    bias: torch.Tensor | None
    eps: float
    offset: float = 0.0

    @classmethod
    def of(cls, ln, eps: float, device="cpu") -> Norm:
        """The norm a transformer-lens normalisation bridge computes (its weights as processed)."""
        rms = bool(getattr(ln, "uses_rms_norm", False))
        return cls(
            "rms" if rms else "layer",
            _t(weight_or_none(ln, "weight"), device),
            None if rms else _t(weight_or_none(ln, "bias"), device),
            eps,
            1.0 if getattr(ln, "uses_weight_offset", False) else 0.0,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * (self.offset + self.weight)


@dataclass(frozen=True)
class Rotary:
    """Rotary position embedding on the first `dim` features of each query and key head."""

    inv_freq: torch.Tensor  # (dim / 2,)
    scaling: float = 1.0  # transformers' attention_scaling (1 for the default rope)
    interleaved: bool = False  # GPT-J rotates pairs (0, 1), (2, 3)...; the others rotate halves

    @property
    def dim(self) -> int:
        return 2 * len(self.inv_freq)

    def cos_sin(self, pos: int, device, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """((pos - start, dim), (pos - start, dim)) for positions start..pos-1."""
        positions = torch.arange(start, pos, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.to(device)  # (pos - start, dim/2)
        # GPT-J pairs features (0, 1), (2, 3)...; the others pair feature i with i + dim/2
        angles = angles.repeat_interleave(2, -1) if self.interleaved else torch.cat([angles, angles], -1)
        return angles.cos() * self.scaling, angles.sin() * self.scaling

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(batch, pos, head, d_head) with the first `dim` features rotated."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        if self.interleaved:
            turned = torch.stack([-rot[..., 1::2], rot[..., ::2]], -1).flatten(-2)
        else:
            half = self.dim // 2
            turned = torch.cat([-rot[..., half:], rot[..., :half]], -1)
        rot = rot * cos[:, None] + turned * sin[:, None]  # cos (pos, dim) -> (pos, 1, dim) against (batch, pos, head, dim)
        return torch.cat([rot, rest], -1)


@dataclass(frozen=True)
class Layer:
    """One block's weights as matrices acting on row vectors."""

    ln1: Norm
    ln2: Norm | None  # None: a parallel block whose MLP reads ln1's output (Phi, GPT-J)
    W_qkv: torch.Tensor  # (d_model, (head + 2 kv_head) * d_head): queries, then keys, then values
    b_qkv: torch.Tensor | None
    W_O: torch.Tensor  # (head * d_head, d_model)
    b_O: torch.Tensor | None
    W_in: torch.Tensor  # (d_model, d_mlp)
    b_in: torch.Tensor | None
    W_gate: torch.Tensor | None  # (d_model, d_mlp): gated MLPs compute act(x W_gate) * (x W_in)
    W_out: torch.Tensor  # (d_mlp, d_model)
    b_out: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    scale: float  # the scores' factor, usually 1/√d_head
    W_gate_in: torch.Tensor | None = None  # (d_model, 2 d_mlp): [W_gate | W_in], one matmul for a gated MLP

    def __post_init__(self):
        if self.W_gate is not None and self.W_gate_in is None:
            object.__setattr__(self, "W_gate_in", torch.cat([self.W_gate, self.W_in], 1).contiguous())  # frozen: set once here


@dataclass(frozen=True)
class Weights:
    family: str
    n_heads: int
    n_kv_heads: int
    d_head: int
    W_E: torch.Tensor  # (d_vocab, d_model)
    embed_scale: float  # Gemma: √d_model
    W_pos: torch.Tensor | None  # (n_ctx, d_model), learned positions (transformer-lens drops OPT's 2 unused rows)
    pos_offset: int
    rotary: Rotary | None
    parallel: bool  # attention and MLP both read the block's input
    layers: list[Layer]
    ln_final: Norm
    W_U: torch.Tensor  # (d_model, d_vocab)
    b_U: torch.Tensor | None

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def _t(x: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if x is None else x.detach().float().to(device).contiguous()


def weight_or_none(module, name: str) -> torch.Tensor | None:
    """A transformer-lens weight property, None where the checkpoint has none (bias-free families raise)."""
    try:
        return getattr(module, name, None)
    except AttributeError:
        return None


def _heads_in(w: torch.Tensor) -> torch.Tensor:
    """(head, d_model, d_head) -> (d_model, head * d_head)."""
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)


KNOWN = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "phi", "opt", "gptj")


def extract(bridge, device="cpu") -> Weights:
    """The Weights of a transformer-lens bridge in compatibility mode, read from its processed weights.

    The family's branches: which norm feeds the MLP (parallel blocks without `ln2` reuse ln1's
    output), the rotary layout (GPT-J's interleaved pairs; the others rotate halves, with the
    model's own inverse frequencies), Gemma's embedding scale, GPT-2's optional 1/(layer+1).
    """
    hf_config = bridge.original_model.config
    family = hf_config.model_type
    if family not in KNOWN:
        raise Unsupported(f"the forward engine does not know the '{family}' architecture")
    if family == "phi" and getattr(hf_config, "qk_layernorm", False):
        raise Unsupported("the engine does not implement Phi's qk_layernorm")
    if family == "opt" and (not hf_config.do_layer_norm_before or hf_config.word_embed_proj_dim != hf_config.hidden_size):
        raise Unsupported("the engine implements OPT with layer norms before each block and no embedding projection")
    if any((getattr(bridge.cfg, n, None) or -1) > 0 for n in ("output_logits_soft_cap", "attn_scores_soft_cap")):
        raise Unsupported("the engine does not implement logit soft-capping")
    from transformers.activations import ACT2FN

    cfg = bridge.cfg
    eps = float(cfg.eps)
    n_heads, d_head = cfg.n_heads, cfg.d_head
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    act = ACT2FN[cfg.act_fn]
    rotary = None
    if family == "gptj":
        dim = hf_config.rotary_dim or d_head
        rotary = Rotary(1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)), interleaved=True)
    elif cfg.positional_embedding_type == "rotary":
        emb = bridge.rotary_emb
        emb = getattr(emb, "original_component", None) or emb
        rotary = Rotary(emb.inv_freq.detach().float().cpu().clone(), float(getattr(emb, "attention_scaling", 1.0)))
    elif cfg.positional_embedding_type != "standard":
        raise Unsupported(f"the engine does not know '{cfg.positional_embedding_type}' positions")
    layers = []
    for index, blk in enumerate(bridge.blocks):
        a, m = blk.attn, blk.mlp
        scale = 1 / math.sqrt(d_head)
        if family == "gpt2" and not getattr(hf_config, "scale_attn_weights", True):
            scale = 1.0
        if family == "gpt2" and getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
            scale /= index + 1
        bias = [weight_or_none(a, n) for n in ("b_Q", "b_K", "b_V")]
        if all(x is None for x in bias):
            b_qkv = None
        else:
            widths = (n_heads * d_head, n_kv * d_head, n_kv * d_head)
            b_qkv = torch.cat(
                [torch.zeros(wd) if x is None else x.detach().reshape(-1).float().cpu() for x, wd in zip(bias, widths, strict=True)]
            )
        W_qkv = torch.cat([_heads_in(a.W_Q.detach()), _heads_in(a.W_K.detach()), _heads_in(a.W_V.detach())], 1)
        ln2 = getattr(blk, "ln2", None)
        layers.append(
            Layer(
                ln1=Norm.of(blk.ln1, eps, device),
                ln2=None if ln2 is None else Norm.of(ln2, eps, device),
                W_qkv=_t(W_qkv, device),
                b_qkv=_t(b_qkv, device),
                W_O=_t(a.W_O.detach().reshape(n_heads * d_head, -1), device),
                b_O=_t(weight_or_none(a, "b_O"), device),
                W_in=_t(m.W_in, device),
                b_in=_t(weight_or_none(m, "b_in"), device),
                W_gate=_t(weight_or_none(m, "W_gate"), device),
                W_out=_t(m.W_out, device),
                b_out=_t(weight_or_none(m, "b_out"), device),
                act=act,
                scale=scale,
            )
        )
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False)) or family in ("phi", "gptj")
    return Weights(
        family=family,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        W_E=_t(bridge.W_E, device),
        embed_scale=math.sqrt(cfg.d_model) if family == "gemma" else 1.0,
        W_pos=_t(bridge.W_pos, device) if cfg.positional_embedding_type == "standard" else None,
        pos_offset=0,
        rotary=rotary,
        parallel=parallel,
        layers=layers,
        ln_final=Norm.of(bridge.ln_final, eps, device),
        W_U=_t(bridge.W_U, device),
        b_U=_t(weight_or_none(bridge, "b_U"), device),
    )


def weights_of(model: LoadedModel) -> Weights:
    """The loaded model's Weights, read once and kept in the model's state (`model.state.weights`); unchecked.

    Analyses do not call this to choose how to run: `backend` does, after checking the logits."""
    state = model.state
    if state.weights is None and model.backend is not None:
        state.weights = Unsupported("the nnsight backend runs the Hugging Face model itself, not the engine's folded weights")
    if state.weights is None and offloaded(model):  # reading every weight would undo the offloading: views run through the model's hooks
        state.weights = Unsupported("the model is offloaded by accelerate (max_memory/device_map)")
    if state.weights is None:
        try:
            state.weights = extract(model.bridge, model.device)
        except Unsupported as err:
            state.weights = err
        except AttributeError as err:  # a known model type with an unexpected layout (a newer transformers)
            state.weights = Unsupported(f"the engine could not read this model's weights ({err})")
    if isinstance(state.weights, Unsupported):
        raise state.weights
    return state.weights


@dataclass(frozen=True)
class Readout:
    """The model's final norm and unembedding, as the logit lens reads them: logits = norm(resid) @ W_U + b_U."""

    norm: Norm
    W_U: torch.Tensor  # (d_model, d_vocab), float32 on the CPU
    b_U: torch.Tensor | None  # (d_vocab,)


def readout_of(model: LoadedModel) -> Readout:
    """The model's final norm and unembedding, read once (`model.state.readout`): from the bridge, or from the Hugging
    Face modules under the nnsight backend. Kept apart from `weights_of`, which reads every block: an offloaded model
    or a family the engine does not know still has a readout."""
    if model.state.readout is None and model.backend is not None:  # nnsight: the Hugging Face final norm and lm_head
        model.state.readout = Readout(*model.backend.readout_weights())
    if model.state.readout is None:
        bridge = model.bridge
        with onloaded(bridge.ln_final, bridge.unembed):  # an offloaded model's final norm and unembedding, read once
            norm = Norm.of(bridge.ln_final, float(getattr(bridge.cfg, "eps", 1e-5)), "cpu")
            b_u = getattr(bridge, "b_U", None)
            model.state.readout = Readout(norm, bridge.W_U.detach().float().cpu(), None if b_u is None else b_u.detach().float().cpu())
    return model.state.readout


# ---- the one choice: the engine, or the model's own hooks ----------------------------------------------

CHECK_TOLERANCE = 1e-4  # the engine's logits must equal the model's within this, relative to the logits' scale
CHECK_TOKENS = 12  # the check's prompt: random ids, as long as the context allows
BACKENDS = ("engine", "bridge hooks", "nnsight")


@dataclass(frozen=True)
class Backend:
    """How an analysis runs the model: `name` is "engine" (the forward engine here, batched and edited as data),
    "bridge hooks" (transformer-lens's hooks on the model: exact, slower) or "nnsight" (the nnsight backend); `reason`
    says why (the check's gap, or why the engine cannot run this model)."""

    name: str  # one of BACKENDS
    reason: str
    weights: Weights | None = field(default=None, repr=False, compare=False)  # the engine's, when name == "engine"

    @property
    def engine(self) -> bool:
        return self.name == "engine"

    def note(self) -> str:
        """What a result says about it: "" for the engine, else why the model's own hooks ran instead."""
        return "" if self.engine else f"{self.reason}; this ran through the model's own hooks instead (exact, slower)"


def model_hooks(model: LoadedModel) -> str:
    """The backend of a run through the model's own hooks (runs.run_edited): "bridge hooks", or "nnsight" under it.
    What an analysis that runs only that way records on its result."""
    return "nnsight" if model.backend is not None else "bridge hooks"


def backend(model: LoadedModel) -> Backend:
    """The engine when its logits equal the model's own within CHECK_TOLERANCE, else the model's own hooks, with why.

    Decided once per set of weights (a loaded model has one dtype and device, and its weights are never edited in
    place), so it takes no prompt: one short prompt of random tokens through the engine and through the model's
    hooks (runs.run_tokens), every position's logits compared. A mismatch is a property of the weights and the
    architecture, not of a prompt: what differs is a family's option the engine misreads, or a reduced precision
    (the engine computes in float32). The options that act only on long prompts (sliding windows,
    length-dependent rotary scaling) are refused here, as a short check could not see them. Every analysis that
    can run either way calls this and records `name` on its result (`result.backend`).
    """
    if model.backend is not None:
        return Backend("nnsight", "the nnsight backend runs the Hugging Face model itself, not the engine's folded weights")
    try:
        w = weights_of(model)
    except Unsupported as err:
        return Backend("bridge hooks", str(err))
    found = model.state.checked
    if found is None or found[0] is not w:  # a new set of weights (or one put in by hand) is checked again
        found = (w, _check(model, w))
        model.state.checked = found
    if isinstance(found[1], Unsupported):
        return Backend("bridge hooks", str(found[1]))
    return Backend("engine", f"the engine's logits equal the model's within {found[1]:.1e} (relative)", w)


def checked_weights(model: LoadedModel) -> Weights:
    """The engine's Weights when `backend` chose the engine, else Unsupported (for what runs only on the engine)."""
    chosen = backend(model)
    if not chosen.engine:
        raise Unsupported(chosen.reason)
    return chosen.weights


def _check(model: LoadedModel, w: Weights) -> float | Unsupported:
    """The largest relative difference of the engine's logits from the model's, or why the engine cannot be trusted."""
    from workbench.runs import run_tokens  # runs imports this module

    config = model.bridge.original_model.config
    window = getattr(config, "sliding_window", None)
    if window and (getattr(config, "use_sliding_window", True) and window < model.info.n_ctx):
        return Unsupported(f"the engine does not implement sliding-window attention (a window of {window} tokens)")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    scaling = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    if scaling in ("dynamic", "longrope"):
        return Unsupported(f"the engine does not implement '{scaling}' rotary scaling, which changes with the prompt's length")
    n = min(CHECK_TOKENS, model.info.n_ctx)
    vocab = min(model.info.d_vocab, len(model.tokenizer))
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))  # (1, pos)
    reference, _ = run_tokens(model, ids)  # (1, pos, d_vocab)
    with torch.no_grad():
        ours = forward(w, ids.to(w.W_U.device)).logits
    reference, ours = reference.float().cpu(), ours.float().cpu()
    gap = float((ours - reference).abs().max()) / max(1.0, float(reference.abs().max()))
    if gap > CHECK_TOLERANCE:
        return Unsupported(f"the forward engine's logits differ from the model's by {gap:.1e} (relative)")
    return gap


# ---- edits ------------------------------------------------------------------------------------------


Index = torch.Tensor | int | None


@dataclass(frozen=True)
class Edit:
    """One change to one site of one layer, applied to every batch row (or row by row).

    `rows` picks the batch rows it applies to (None: all). `position` and `head` pick the slice:
    an int for every row, a tensor with one per row, or None for all. `value` is what the slice
    becomes (replace) or gains (add), broadcast to the slice's shape, or per row with a leading
    row dimension; ablate sets it to zero; map sets it to `fn(slice)` (same shape). For `pattern`
    the position is the query row. A `fn` should itself be data (a frozen dataclass with
    `__call__`), so that an edit set can be shown, compared and saved.
    """

    kind: str  # "replace", "add", "ablate" or "map"
    site: str  # a key of SITE_HOOKS
    layer: int
    position: Index = None
    head: Index = None
    value: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # (rows,) batch rows, None for every row
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # map: slice -> new slice of the same shape

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown edit kind {self.kind!r}; use one of {KINDS}")
        if self.site not in SITE_HOOKS:
            raise ValueError(f"unknown site {self.site!r}; use one of {', '.join(SITE_HOOKS)}")
        if self.kind == "map":
            if self.fn is None:
                raise ValueError("a map edit needs a function (fn) of the slice")
        elif self.kind != "ablate" and self.value is None:
            raise ValueError(f"a {self.kind} edit needs a value")

    @property
    def hook(self) -> str:
        """The transformer-lens hook name this edit acts on."""
        return f"blocks.{self.layer}.{SITE_HOOKS[self.site]}"


def apply(edit: Edit, act: torch.Tensor) -> torch.Tensor:
    """`act` (a site's activation, batch first, transformer-lens layout) with the edit applied; a new tensor."""
    act = act.clone()
    view = act.transpose(1, 2) if edit.site == "pattern" else act  # pattern (batch, head, q, k) -> (batch, q, head, k)
    rows = torch.arange(view.shape[0], device=act.device) if edit.rows is None else edit.rows.to(act.device)
    batch = len(rows)

    def per_row(i: Index) -> torch.Tensor | slice:
        if i is None:
            return slice(None)
        return torch.as_tensor(i, device=act.device).expand(batch)

    index = (rows, per_row(edit.position)) + ((per_row(edit.head),) if view.ndim == 4 else ())
    if edit.position is None and edit.head is None:
        index = (rows,)
    if edit.kind == "ablate":
        view[index] = 0.0
    elif edit.kind == "map":
        view[index] = edit.fn(view[index]).to(view.dtype)
    elif edit.kind == "replace":
        view[index] = edit.value.to(view.dtype)
    else:
        view[index] += edit.value.to(view.dtype)
    return act


# ---- the forward pass -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor  # (batch, pos, d_vocab), or (batch, d_vocab) with last_only, or only `columns`
    captured: dict[str, torch.Tensor]  # hook name -> activation as it flowed on (after any edit), batch first


class ForwardCall:
    """The edits and captures of one forward call, looked up by hook name."""

    def __init__(self, edits: Iterable[Edit], capture: Iterable[str], offset: int = 0):
        self.edits: dict[str, list[Edit]] = {}
        for e in edits:
            self.edits.setdefault(e.hook, []).append(e)
        self.capture = set(capture)
        self.captured: dict[str, torch.Tensor] = {}
        self.offset = offset  # the absolute position of the activations' first position (see forward's `offset`)

    def touches(self, layer: int) -> bool:
        """Whether any edit or capture acts inside block `layer`."""
        prefix = f"blocks.{layer}."
        return any(n.startswith(prefix) for n in (*self.edits, *self.capture))

    def __call__(self, layer: int, site: str, act: torch.Tensor) -> torch.Tensor:
        name = f"blocks.{layer}.{SITE_HOOKS[site]}"
        for e in self.edits.get(name, ()):
            act = apply(e, act) if not self.offset else _apply_at(e, act, self.offset, 2 if site == "pattern" else 1)
        if name in self.capture:
            self.captured[name] = act
        return act


def _apply_at(edit: Edit, act: torch.Tensor, offset: int, axis: int) -> torch.Tensor:
    """`act` holds positions offset.. of a run (along `axis`): the edit applied as to the whole run, this part returned.

    The earlier positions are zeros standing in for what a cache already holds: an edit acts on
    each position by itself (a slice, or a map of the slice position by position), so what it does
    at positions offset.. does not depend on them, and an edit of an earlier position only changes
    the zeros, which are dropped.
    """
    before = list(act.shape)
    before[axis] = offset
    whole = apply(edit, torch.cat([act.new_zeros(before), act], axis))
    return whole.narrow(axis, offset, act.shape[axis])


def embed(w: Weights, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(batch, pos) ids at positions start.. -> (batch, pos, d_model), the residual stream before block 0."""
    x = w.W_E[tokens] * w.embed_scale
    if w.W_pos is not None:
        x = x + w.W_pos[w.pos_offset + start + torch.arange(tokens.shape[1], device=tokens.device)]
    return x


def mlp_hidden(L: Layer, mlp_in: torch.Tensor) -> torch.Tensor:
    """(..., d_model) the MLP's input (after its norm) -> (..., d_mlp) its hidden activations (hook_post)."""
    if L.W_gate_in is not None:  # gated (SwiGLU, GeGLU): act(x W_gate) * (x W_in + b_in)
        gate, hidden = (mlp_in @ L.W_gate_in).chunk(2, -1)  # (..., d_mlp) each
        return L.act(gate) * (hidden + (L.b_in if L.b_in is not None else 0))
    return L.act(mlp_in @ L.W_in + (L.b_in if L.b_in is not None else 0))


def mlp_output(L: Layer, hidden: torch.Tensor) -> torch.Tensor:
    """(..., d_mlp) hidden activations -> (..., d_model) the MLP's output (hook_mlp_out)."""
    return hidden @ L.W_out + (L.b_out if L.b_out is not None else 0)


def block(
    w: Weights,
    index: int,
    resid: torch.Tensor,
    run: ForwardCall,
    last_only: bool = False,
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(batch, pos, d_model) -> the residual stream after block `index`: (batch, pos, d_model), or (batch, d_model) with last_only.

    With last_only the keys and values still come from every position, the query, attention row
    and MLP only from the last one: enough for the next-token logits. With `past` (keys and values
    of earlier positions, before rotary: (1 or batch, s, kv_head, d_head) each), `resid` holds
    positions s.. only: by causality the earlier ones are what they were, so only their keys and
    values are needed.
    """
    L, H, K, E = w.layers[index], w.n_heads, w.n_kv_heads, w.d_head
    resid = run(index, "resid_pre", resid)
    batch, n, _ = resid.shape
    s = 0 if past is None else past[0].shape[1]  # positions before this suffix
    pos = s + n
    x = L.ln1(resid)  # (batch, pos, d_model)
    qkv = x @ L.W_qkv + (L.b_qkv if L.b_qkv is not None else 0)  # (batch, pos, (H + 2K) * E)
    q, k, v = qkv.split([H * E, K * E, K * E], -1)
    q = run(index, "q", q.reshape(batch, n, H, E))
    k = run(index, "k", k.reshape(batch, n, K, E))
    v = run(index, "v", v.reshape(batch, n, K, E))
    if w.rotary is not None:
        cos, sin = w.rotary.cos_sin(pos, resid.device, start=s)
        q, k = w.rotary(q, cos, sin), w.rotary(k, cos, sin)
    if past is not None:
        k_past, v_past = past
        if w.rotary is not None:
            cos, sin = w.rotary.cos_sin(s, resid.device)
            k_past = w.rotary(k_past, cos, sin)
        k = torch.cat([k_past.expand(batch, -1, -1, -1), k], 1)  # (batch, pos, K, E)
        v = torch.cat([v_past.expand(batch, -1, -1, -1), v], 1)
    if K != H:  # grouped-query attention: each key/value head serves H / K query heads
        k, v = k.repeat_interleave(H // K, 2), v.repeat_interleave(H // K, 2)  # (batch, pos, H, E)
    if last_only:  # the last query only (the caller checked that no edit or capture needs the others)
        q, x, resid = q[:, -1:], x[:, -1:], resid[:, -1:]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * L.scale  # (batch, head, query, key)
    n_q = scores.shape[2]
    future = torch.ones(n_q, pos, dtype=torch.bool, device=resid.device).triu(1 + pos - n_q)
    pattern = run(index, "pattern", scores.masked_fill(future, float("-inf")).softmax(-1))
    z = run(index, "z", torch.einsum("bhqk,bkhe->bqhe", pattern, v))  # (batch, query, head, E)
    attn_out = z.reshape(batch, n_q, H * E) @ L.W_O + (L.b_O if L.b_O is not None else 0)  # (batch, query, d_model)
    attn_out = run(index, "attn_out", attn_out)
    if w.parallel:
        mlp_in = x if L.ln2 is None else L.ln2(resid)
    else:
        # as transformer-lens 4's bridge: an edit at resid_mid reaches the MLP's input, not the skip path
        mid = run(index, "resid_mid", resid + attn_out)
        mlp_in = L.ln2(mid)
    hidden = run(index, "mlp_post", mlp_hidden(L, mlp_in))  # (batch, pos, d_mlp)
    mlp_out = run(index, "mlp_out", mlp_output(L, hidden))
    out = run(index, "resid_post", resid + attn_out + mlp_out)
    return out[:, -1] if last_only else out


def forward(
    w: Weights,
    tokens: torch.Tensor | None = None,
    *,
    resid: torch.Tensor | None = None,
    start: int = 0,
    edits: Sequence[Edit] = (),
    capture: Iterable[str] = (),
    last_only: bool = False,
    columns: torch.Tensor | None = None,
    past: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    enter: dict[int, torch.Tensor] | None = None,
    offset: int = 0,
) -> Output:
    """Runs the model on `tokens` (batch, pos), or from block `start` on a residual stream `resid` (batch, pos, d_model).

    `edits` change the run (see Edit); `capture` names hooks whose activations to return (as they
    flowed on, after edits: in a graph with gradients when the caller enables them). `last_only`
    returns next-token logits (batch, d_vocab) only; `columns` keeps only those vocabulary
    columns -- a logit difference reads two, and a large vocabulary's unembedding is costly.
    `past` {layer: (keys, values)} of the positions before `resid`'s first (see block): a patch at
    position p changes nothing before p, so a sweep runs positions p.. only. Edit positions then
    count from `resid`'s first position.
    `enter` {layer: residual streams (rows, pos, d_model)}: rows that join the batch before that
    layer's block, after the rows already there (a sweep runs the cells of every layer in one
    pass, each starting at its own layer; an edit's `rows` picks them out).
    `offset`: with `past`, the absolute position of the first token run (the length of the past),
    so that edits keep counting positions from the start of the sequence, as in the uncached run
    (generation: an edit of a prompt position is already in the cache, one of every position
    acts on each new token); `tokens` are then embedded at positions offset.. too. Without it
    (0), edit positions count from the first position run (the patching sweeps).
    """
    if sum(x is not None for x in (tokens, resid, enter)) != 1:
        raise ValueError("give tokens, a residual stream or rows that enter at given layers: one of them")
    run = ForwardCall(edits, capture, offset)
    if enter:
        start = min(enter)
        x = enter[start]
    else:
        x = embed(w, tokens, offset) if tokens is not None else resid
    if torch.is_grad_enabled() and not x.requires_grad:
        # the weights are frozen: a leaf here lets gradients reach every captured activation
        x = x.detach().requires_grad_(True)
    last = w.n_layers - 1
    for index in range(start, w.n_layers):
        if enter and index in enter and index != start:
            x = torch.cat([x, enter[index]])
        trim = last_only and index == last and not run.touches(index)
        x = block(w, index, x, run, last_only=trim, past=None if past is None else past[index])
    if last_only and x.ndim == 3:
        x = x[:, -1]
    x = w.ln_final(x)
    W_U, b_U = (w.W_U, w.b_U) if columns is None else (w.W_U[:, columns], None if w.b_U is None else w.b_U[columns])
    logits = x @ W_U + (b_U if b_U is not None else 0)
    return Output(logits, run.captured)


def frozen_patterns(w: Weights, tokens: torch.Tensor) -> list[Edit]:
    """Edits that hold every layer's attention pattern at its value in the plain run of `tokens` (1, pos).

    Added to an intervention's edits, they leave out what the intervention does through queries and
    keys: circuit-tracer's `freeze_attention` (the attribution graph freezes the patterns too). One
    `replace` per layer, its value laid out as a pattern edit sees it, (query, head, key)."""
    names = [f"blocks.{layer}.{SITE_HOOKS['pattern']}" for layer in range(w.n_layers)]
    with torch.no_grad():
        found = forward(w, tokens, capture=names).captured  # name -> (1, head, query, key)
    return pattern_edits([found[n][0] for n in names])


def pattern_edits(patterns: Sequence[torch.Tensor]) -> list[Edit]:
    """Edits that hold each layer's attention pattern at `patterns[layer]` (head, query, key), captured already (a run
    that captured them need not run again): `frozen_patterns`' edits."""
    return [Edit("replace", "pattern", layer, value=p.transpose(0, 1)) for layer, p in enumerate(patterns)]


SKIP_SITES = ("resid_pre", "resid_post")  # on the skip path (resid_mid feeds only the MLP, see block): GradDrop keeps their gradient


def site_gradients(
    w: Weights,
    tokens: torch.Tensor,
    names: Sequence[str],
    value: Callable[[torch.Tensor], torch.Tensor],
    graddrop: bool = False,
    on_block: Callable[[int, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """({name: activation}, [{name: ∂value/∂activation}, ...]) of one run on `tokens` (batch, pos), block by block.

    `value` maps the last position's logits (batch, d_vocab) to one number per row (batch,); the
    gradients are of its sum. The same numbers as one backward pass through the whole run, in
    bounded memory: the forward pass keeps only the residual stream between blocks, and each block
    is run again with gradients while the backward pass reaches it, so at most one block's graph is
    held (on a 1,024-token prompt of a GPT-2-small shape, one layer's attention pattern and MLP
    instead of twelve). Costs one forward pass more than the plain backward pass.

    With `graddrop` the list holds, after the plain gradients, one set per layer ℓ with no gradient
    through layer ℓ's attention and MLP outputs (AtP*'s GradDrop, see methods.py): in that block
    the gradient passes by the skip path only, so its residual-stream sites keep the incoming
    gradient and every other site of the block gets zero. All of them are carried down together,
    one block's graph at a time: the cost of n_layers + 1 backward passes.

    `on_block(layer, activations, [gradients per stream])`, when given, receives each block's sites
    as soon as they are known and nothing is kept (both returned dicts stay empty): a caller that
    reduces a layer's patterns and their gradients to a few numbers never holds every layer's.
    """
    n_layers = w.n_layers
    unknown = [n for n in names if not any(n.startswith(f"blocks.{i}.") for i in range(n_layers))]
    if unknown:
        raise ValueError(f"site_gradients reads block hooks only, not {unknown}")
    with torch.no_grad():
        x = embed(w, tokens)
        inputs = []  # (batch, pos, d_model) the residual stream entering each block
        for index in range(n_layers):
            inputs.append(x)
            x = block(w, index, x, ForwardCall((), ()))
    with torch.enable_grad():
        top = x[:, -1].detach().requires_grad_(True)  # (batch, d_model)
        logits = w.ln_final(top) @ w.W_U + (w.b_U if w.b_U is not None else 0)
        (grad_top,) = torch.autograd.grad(value(logits).sum(), top)
    last = torch.tensor([x.shape[1] - 1], device=x.device)
    streams = [None, *range(n_layers)] if graddrop else [None]  # None: the plain gradient; ℓ: layer ℓ's outputs dropped
    grad_out = [torch.zeros_like(x).index_copy_(1, last, grad_top[:, None]) for _ in streams]  # each (batch, pos, d_model)
    acts: dict[str, torch.Tensor] = {}
    grads: list[dict[str, torch.Tensor]] = [{} for _ in streams]
    for index in reversed(range(n_layers)):
        wanted = [n for n in names if n.startswith(f"blocks.{index}.")]
        run = ForwardCall((), wanted)
        with torch.enable_grad():
            resid = inputs[index].detach().requires_grad_(True)
            out = block(w, index, resid, run)
            found = [run.captured[n] for n in wanted]
            for s, dropped in enumerate(streams):
                if dropped == index:  # the skip path only
                    for n, a in zip(wanted, found, strict=True):
                        on_skip = n.rsplit(".", 1)[-1] in {SITE_HOOKS[k] for k in SKIP_SITES}
                        grads[s][n] = grad_out[s].clone() if on_skip else torch.zeros_like(a)
                    continue
                got = torch.autograd.grad(out, [resid, *found], grad_outputs=grad_out[s], allow_unused=True, retain_graph=True)
                grad_out[s] = got[0]
                for n, a, g in zip(wanted, found, got[1:], strict=True):
                    grads[s][n] = torch.zeros_like(a) if g is None else g
        if on_block is not None:
            on_block(index, {n: a.detach() for n, a in zip(wanted, found, strict=True)}, [{n: g.pop(n) for n in wanted} for g in grads])
            continue
        for n, a in zip(wanted, found, strict=True):
            acts[n] = a.detach()
    return acts, grads


@dataclass(frozen=True)
class BlockWeights:
    """What one block writes with, as the analyses that split its output into parts read it: float32 on the CPU."""

    W_O: torch.Tensor  # (head, d_head, d_model): a head's z -> its share of the attention output
    b_O: torch.Tensor | None  # (d_model,) the attention output's bias, None where the checkpoint has none
    W_out: torch.Tensor  # (d_mlp, d_model): a neuron's activation -> its share of the MLP output
    b_out: torch.Tensor | None  # (d_model,)


def block_weights(model: LoadedModel, layer: int) -> BlockWeights:
    """Block `layer`'s output weights: the one place analyses read per-block weights from.

    From the engine's Weights where the model's state already holds them (`weights_of` ran: a view on
    the engine); else from the bridge's own block, the one read of `bridge.blocks` outside the
    engine's extraction: a family the engine does not know, an offloaded model (under the nnsight
    backend the bridge refuses with its one line), and a view that never needed the engine. Why not
    build the engine's Weights here: they are a float32 copy of every weight, and the attention view
    of a multi-billion-parameter fp16 model needs one block's W_O, not a second copy of the model.
    Not kept: the bridge's block is cheap to read once per layer of an analysis. Both sources are
    equal (tests/test_families.py)."""
    w = model.state.weights
    if not isinstance(w, Weights):
        block = model.bridge.blocks[layer]
        with onloaded(block):  # an offloaded block's weights, on the CPU while read
            a, m = block.attn, block.mlp
            return BlockWeights(_t(a.W_O, "cpu"), _t(_read_now(a, "b_O"), "cpu"), _t(m.W_out, "cpu"), _t(_read_now(m, "b_out"), "cpu"))
    n = w.layers[layer]
    return BlockWeights(_t(n.W_O.reshape(w.n_heads, w.d_head, -1), "cpu"), _t(n.b_O, "cpu"), _t(n.W_out, "cpu"), _t(n.b_out, "cpu"))


def _read_now(module, name: str) -> torch.Tensor | None:
    """A transformer-lens weight as the module holds it now. A name that is an alias and not a property (the MLP's
    b_out -> out.bias) is a reference taken at load, which onloading an offloaded module does not update: follow its path."""
    path = None if isinstance(getattr(type(module), name, None), property) else getattr(module, "property_aliases", {}).get(name)
    if path is None:
        return weight_or_none(module, name)
    for part in path.split("."):
        module = getattr(module, part, None)
    return module
