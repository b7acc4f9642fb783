"""Runs: the one layer that runs the model. Every analysis calls it; nothing else calls the bridge.

Two entries, both holding the model's lock (hooks are shared by every thread, see model.py),
moving tokens to the model's device and checking the memory budget:
- `run_prompt(model, prompt, names)`: one prompt, cached and shared (below);
- `run_tokens(model, tokens, names, hooks, last_only, grad)`: a batch of token ids, with
  hooks that edit the run, never cached;
- `run_edited(model, tokens, edits, names, ...)`: the same with edits given as data
  (engine.Edit: ablate, replace, add, map), the way pages and probes change a run.
The forward engine (engine.py) is the only other code that computes the model's function.

`run_prompt(model, prompt, names)` returns a `Run`: the tokens (BOS first), their display labels,
the logits and the cached activations (batch dimension removed, on the CPU). Runs are kept in
a small LRU on the loaded model, so every page and session asking for the same prompt shares
one forward pass; a cached run that holds more activations than asked for serves the request.

Hook names are transformer-lens's (compatibility-mode aliases), e.g. `blocks.0.attn.hook_pattern`;
`hook_names(model, "attn.hook_pattern")` expands a per-block suffix over every layer.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.tokens import token_labels

CACHE_BYTES = 512 * 2**20  # runs kept per model, by size of their tensors


def memory_budget() -> int:
    """Bytes one run may cache (WORKBENCH_MEMORY_MB, default 2048): a shared server's guard against one huge view."""
    try:
        return int(float(os.environ.get("WORKBENCH_MEMORY_MB", "2048")) * 2**20)
    except ValueError:
        return 2048 * 2**20


def estimate_bytes(model: LoadedModel, n_tokens: int, names: Iterable[str], batch: int = 1) -> int:
    """What a run of `batch` sequences of n_tokens caching `names` holds: activations, logits, and as much again while it runs."""
    i = model.info
    pos = n_tokens
    per_suffix = {
        "hook_resid_pre": pos * i.d_model, "hook_resid_mid": pos * i.d_model, "hook_resid_post": pos * i.d_model,
        "hook_attn_out": pos * i.d_model, "hook_mlp_out": pos * i.d_model, "hook_embed": pos * i.d_model,
        "hook_pos_embed": pos * i.d_model, "hook_q": pos * i.n_heads * i.d_head, "hook_k": pos * i.n_heads * i.d_head,
        "hook_v": pos * i.n_heads * i.d_head, "hook_z": pos * i.n_heads * i.d_head, "hook_attn_scores": i.n_heads * pos * pos,
        "hook_pattern": i.n_heads * pos * pos, "hook_pre": pos * i.d_mlp,
        "hook_post": pos * i.d_mlp, "hook_scale": pos,
    }  # fmt: skip
    elements = pos * i.d_vocab  # the logits
    for name in names:
        elements += per_suffix.get(name.rsplit(".", 1)[-1], pos * i.d_model)
    bytes_per = 2 if i.dtype in ("float16", "bfloat16") else 8 if i.dtype == "float64" else 4
    return 2 * elements * bytes_per * batch


def check_budget(model: LoadedModel, n_tokens: int, names: Iterable[str], batch: int = 1) -> None:
    """InputError, saying what would fit, when a run would hold more than the memory budget."""
    names = list(names)
    budget = memory_budget()
    need = estimate_bytes(model, n_tokens, names, batch)
    if need <= budget:
        return
    fits = n_tokens
    while fits > 1 and estimate_bytes(model, fits, names, batch) > budget:
        fits = int(fits * 0.9)
    raise InputError(
        f"this view would hold about {need / 2**20:,.0f} MB for {n_tokens} tokens, over this server's budget of "
        f"{budget / 2**20:,.0f} MB (WORKBENCH_MEMORY_MB): a prompt of up to about {fits} tokens fits"
    )


BLOCK_HOOKS = (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_attn_scores",
    "attn.hook_pattern", "mlp.hook_pre", "mlp.hook_post",
)  # fmt: skip
MODEL_HOOKS = ("hook_embed", "hook_pos_embed", "ln_final.hook_scale")


@dataclass(frozen=True)
class Run:
    """One prompt's forward pass. Tensors are on the CPU and must not be modified (they are shared)."""

    model: str  # the model's name
    prompt: str
    tokens: torch.Tensor  # (pos,) int64, BOS first
    labels: list[str]  # (pos,) display labels, see tokens.py
    logits: torch.Tensor  # (pos, d_vocab) float32
    cache: Mapping[str, torch.Tensor] = field(repr=False)  # hook name -> activation without the batch dim
    truncated: int = 0  # tokens dropped from the start of the prompt to fit the context

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            raise KeyError(f"{name} was not cached in this run; ask run_prompt for it (cached: {sorted(self.cache)[:8]}...)")
        return self.cache[name]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def stack(self, suffix: str) -> torch.Tensor:
        """Stacks `blocks.{l}.{suffix}` over layers: (layer, ...)."""
        layers = sorted(int(k.split(".")[1]) for k in self.cache if k.startswith("blocks.") and k.endswith("." + suffix))
        return torch.stack([self.cache[f"blocks.{layer}.{suffix}"] for layer in layers])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logits, *self.cache.values()))


def hook_names(model: LoadedModel, *suffixes: str) -> list[str]:
    """Full hook names: block suffixes ("attn.hook_pattern") over every layer, model-level names as given.

    Names this architecture does not have are left out: parallel blocks (GPT-NeoX, Phi, GPT-J)
    have no `hook_resid_mid`, rotary models no `hook_pos_embed`.
    """
    names = []
    for suffix in suffixes:
        if suffix in MODEL_HOOKS:
            names.append(suffix)
        elif suffix in BLOCK_HOOKS:
            names.extend(f"blocks.{layer}.{suffix}" for layer in range(model.info.n_layers))
        else:
            raise ValueError(f"unknown hook suffix {suffix!r}; known: {', '.join(BLOCK_HOOKS + MODEL_HOOKS)}")
    if model.backend is not None:
        known = set(model.backend.hook_names())
        return [n for n in names if n in known]
    known = model.bridge.hook_dict
    learned_positions = model.bridge.cfg.positional_embedding_type == "standard"  # hook_pos_embed exists but never fires otherwise
    return [n for n in names if n in known and (learned_positions or n != "hook_pos_embed")]


def _known(model: LoadedModel):
    """The hook names this model's runs can record or edit (the bridge's, or the nnsight backend's)."""
    return model.bridge.hook_dict if model.backend is None else set(model.backend.hook_names())


def has_hook(model: LoadedModel, name: str) -> bool:
    return name in _known(model)


def all_hook_names(model: LoadedModel) -> list[str]:
    return hook_names(model, *MODEL_HOOKS, *BLOCK_HOOKS)


def check_prompt(prompt: object) -> str:
    """The prompt as text, or InputError saying what is wrong with it."""
    if isinstance(prompt, bytes | bytearray):
        try:
            prompt = bytes(prompt).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"the prompt is not valid UTF-8 text (bad byte at offset {err.start}); paste it as text") from err
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text, not {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError("the prompt is empty: type some text to run the model on")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            f"the prompt holds a character that is not valid Unicode (a lone surrogate at position {err.start}); remove it or paste the text again"
        ) from err
    bad = [ch for ch in prompt if unicodedata.category(ch) == "Cc" and ch not in "\n\t\r"]
    if bad:
        raise InputError(f"the prompt holds {len(bad)} control character(s) such as {bad[0]!r}; remove them (newlines and tabs are fine)")
    return prompt


def encode(model: LoadedModel, prompt: str, truncate: bool = False) -> tuple[torch.Tensor, int]:
    """((pos,) ids with BOS first, number of tokens dropped). Too long for the context: InputError, or keep the end."""
    prompt = check_prompt(prompt)
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if model.bos_id is not None:
        ids = [model.bos_id, *ids]
    n_ctx = model.info.n_ctx
    dropped = max(0, len(ids) - n_ctx)
    if dropped and not truncate:
        raise InputError(
            f"the prompt is {len(ids)} tokens (with BOS) but this model's context is {n_ctx}: shorten it by {dropped} "
            f"tokens, or turn on truncation to keep its last {n_ctx - 1}"
        )
    if dropped:
        ids = ids[:1] + ids[1 + dropped :] if model.bos_id is not None else ids[dropped:]
    return torch.tensor(ids, dtype=torch.long), dropped


def _validate_names(model: LoadedModel, names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(names))
    known = _known(model)
    unknown = [n for n in names if n not in known]
    if unknown and model.backend is not None:
        model.backend._point(unknown[0])  # InputError: which sites the nnsight backend sees
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown}; see runs.all_hook_names(model)")
    return names


def run_prompt(model: LoadedModel, prompt: str, names: Iterable[str] = (), truncate: bool = False) -> Run:
    """Runs (or fetches from the shared cache) `prompt` with the activations `names` cached."""
    tokens, dropped = encode(model, prompt, truncate)
    names = _validate_names(model, names)
    check_budget(model, len(tokens), names)
    key = (prompt, truncate)
    with model.lock:
        if model.attached_hooks():
            # a run under someone's edit is not the model's run: never serve or store it in the shared cache
            logits, cache = run_tokens(model, tokens[None], names)
            return _make_run(model, prompt, tokens, logits[0], {n: cache[n][0] for n in names}, dropped)
        cached = model.run_cache.get(key)
        if cached is not None and all(n in cached.cache for n in names):
            model.run_cache.move_to_end(key)
            return cached
        # a previous run's activations are kept too, so that pages asking in turn still share one entry
        wanted = tuple(dict.fromkeys((*(cached.cache if cached else ()), *names)))
        logits, cache = run_tokens(model, tokens[None], wanted)
        run = _make_run(model, prompt, tokens, logits[0], {n: cache[n][0] for n in wanted}, dropped)
        model.run_cache[key] = run
        model.run_cache.move_to_end(key)
        while len(model.run_cache) > 1 and sum(r.nbytes() for r in model.run_cache.values()) > CACHE_BYTES:
            model.run_cache.popitem(last=False)
        return run


def _make_run(model: LoadedModel, prompt: str, tokens: torch.Tensor, logits: torch.Tensor, cache: dict, dropped: int) -> Run:
    return Run(
        model=model.info.name,
        prompt=prompt,
        tokens=tokens,
        labels=token_labels(model.tokenizer, tokens.tolist()),
        logits=logits.float().cpu(),
        cache={n: t.cpu() for n, t in cache.items()},
        truncated=dropped,
    )


Hook = tuple[str, Callable]  # (hook name, fn(activation, hook) -> activation or None), transformer-lens style


def run_tokens(
    model: LoadedModel,
    tokens: torch.Tensor,
    names: Iterable[str] = (),
    hooks: Sequence[Hook] = (),
    last_only: bool = False,
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {name: activation}) of a batch of token ids (batch, pos), never cached.

    `hooks` edit the run (they are attached for this call only); `names` are recorded after the
    edits, batch first, on the model's device. `last_only`: logits (batch, 1, d_vocab) of the last
    position only (a next-token metric needs no more, and a large vocabulary's unembedding is
    costly). `grad`: keep the graph, for gradient methods (captum, attribution patching).
    """
    if tokens.ndim != 2:
        raise ValueError(f"run_tokens takes (batch, pos) token ids, got shape {tuple(tokens.shape)}")
    names = _validate_names(model, names)
    check_budget(model, tokens.shape[1], names, batch=tokens.shape[0])
    cache: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable:
        # keyed by the name asked for: the bridge calls a hook with its canonical name ("blocks.0.hook_in"
        # for the alias "blocks.0.hook_resid_pre")
        def keep(act: torch.Tensor, hook) -> None:
            cache[name] = act if grad else act.detach()

        return keep

    if model.backend is not None:  # nnsight: the same hooks and names, applied at module boundaries in one trace
        with model.lock:
            return model.backend.run(tokens.to(model.device), names, hooks, last_only, grad)
    fwd = [*hooks, *((n, keeper(n)) for n in names)]  # edits first, so that what is recorded is what flowed on
    with model.lock, torch.set_grad_enabled(grad), model.bridge.hooks(fwd_hooks=fwd):
        batch = tokens.to(model.device)
        logits = model.bridge(batch, logits_to_keep=1) if last_only else model.bridge(batch)
    return logits, cache


def run_edited(
    model: LoadedModel,
    tokens: torch.Tensor,
    edits: Sequence[engine.Edit] = (),
    names: Iterable[str] = (),
    last_only: bool = False,
    grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {name: activation}) of token ids (batch, pos) with `edits` applied inside this one call.

    The edits are data (engine.Edit) turned into hooks on the model's own modules for this call
    only, under the model's lock: exact on every architecture that loads, nothing left behind,
    and no other session sees them. Recorded activations are the edited ones.
    """
    hooks = [(e.hook, _edit_hook(e)) for e in edits]
    return run_tokens(model, tokens, names=names, hooks=hooks, last_only=last_only, grad=grad)


def _edit_hook(edit: engine.Edit) -> Callable:
    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        return engine.apply(edit, act)

    return hook


def head_results(model: LoadedModel, run: Run, layer: int) -> torch.Tensor:
    """(pos, head, d_model) what each head writes to the residual stream: hook_z · W_O (without b_O).

    Computed here rather than cached through `set_use_attn_result`, which OPT's and GPT-J's
    attention bridges do not support.
    """
    z = run[f"blocks.{layer}.attn.hook_z"].float()  # (pos, head, d_head)
    w_o = engine.block_weights(model, layer).W_O  # (head, d_head, d_model)
    return torch.einsum("phe,hed->phd", z, w_o)


def activation_cache(model: LoadedModel, run: Run):
    """The run's activations as a transformer-lens ActivationCache (batch of 1), for its analysis tools."""
    from transformer_lens import ActivationCache

    return ActivationCache({n: t[None].to(model.device) for n, t in run.cache.items()}, model.bridge, has_batch_dim=True)


@dataclass(frozen=True)
class TopK:
    """The k most likely next tokens after `position` of a run."""

    position: int
    ids: list[int]
    labels: list[str]
    probs: list[float]
    logits: list[float]

    def rows(self) -> list[dict]:
        return [
            dict(rank=r + 1, id=i, token=label, probability=p, logit=logit)
            for r, (i, label, p, logit) in enumerate(zip(self.ids, self.labels, self.probs, self.logits, strict=True))
        ]


def next_token_topk(model: LoadedModel, run: Run, k: int = 10, position: int = -1) -> TopK:
    if not 1 <= k <= model.info.d_vocab:
        raise InputError(f"k must be between 1 and {model.info.d_vocab}, got {k}")
    position = check_position(run.n_tokens, position)
    logits = run.logits[position]  # (d_vocab,)
    probs = logits.softmax(-1)
    top = probs.topk(k)
    ids = top.indices.tolist()
    return TopK(position, ids, token_labels(model.tokenizer, ids), top.values.tolist(), logits[top.indices].tolist())


def check_position(n_tokens: int, position: int) -> int:
    """The position counted from the start (negative counts from the end), or InputError."""
    if not isinstance(position, int) or not -n_tokens <= position < n_tokens:
        raise InputError(f"position {position} is outside the prompt: it has positions 0..{n_tokens - 1}")
    return position % n_tokens


def check_token_ids(model: LoadedModel, ids: Iterable[object], what: str = "token") -> list[int]:
    """The ids as ints, or InputError naming the ones outside the vocabulary."""
    ids = list(ids)
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < model.info.d_vocab]
    if bad:
        raise InputError(f"{what} id(s) {bad} are outside the vocabulary of this model (0..{model.info.d_vocab - 1})")
    return [int(i) for i in ids]


LIBRARIES = ("torch", "transformer-lens", "transformers", "captum", "plotly", "streamlit")


@functools.cache
def versions() -> dict[str, str | None]:
    """Versions of the libraries a result depends on, and Python's."""

    def version(lib: str) -> str | None:
        try:
            return importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {lib: version(lib) for lib in LIBRARIES} | {"python": platform.python_version()}


def provenance(model: LoadedModel, prompts: Sequence[str], **settings) -> dict:
    """What a result records about how it was made: the model and its source, the prompt(s), settings, versions."""
    i = model.info
    return {
        "model": i.name,
        "source": f"{i.kind}: {i.source}",
        "architecture": i.architecture,
        "numeric_mode": i.numeric_mode,
        "prompts": list(prompts),
        "settings": settings,
        "versions": dict(versions()),
    }
