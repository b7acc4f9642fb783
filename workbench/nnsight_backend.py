"""A second way to run a model: nnsight, here or on an NDIF server.

`load_model("nnsight:<folder or cached hub name>")` runs the plain Hugging Face model through
`nnsight`'s `TransformersModel` on this machine; `load_model("ndif://host:port/<model>")` sends every
run as an nnsight trace to an NDIF server (`remote=True`, the host given per trace, so two
servers can be used at once). Either way the model enters through the run layer (`runs.run_tokens`
calls `NNsightBackend.run`), so pages and probes do not know which one they use.

How a transformer-lens hook maps onto module boundaries (`LAYOUTS`): the residual stream before a
block is the block's input, after it the block's output; a head's output `hook_z` is the input of
the attention's output projection (o_proj / c_proj / dense) split into heads; the attention
pattern is the attention module's second output (eager attention); `hook_resid_mid` is the input
of the MLP's layer norm (an edit there reaches the MLP only, as transformer-lens 4's bridge does);
the neurons `mlp.hook_post` the input of the MLP's down projection. Every edit of a run is a
function applied to one of those values inside one trace, so a patching sweep of many cells is
one trace (one request to a server) whose batch holds every patched run.

Coordinates: the backend runs the raw Hugging Face weights (`numeric_mode` RAW), not
transformer-lens's compatibility mode. Measured on GPT-2, Llama and GPT-NeoX tiny models
(tests/test_nnsight_backend.py): logits, attention patterns, the neurons, the logit lens and every
patching metric equal the bridge's within 1e-4; residual-stream values and attention/MLP outputs
equal the bridge's after removing their mean over d_model (compatibility mode centres the writing
weights; layer norms remove the mean anyway); a head's `hook_z` differs from the bridge's by a
constant per head (the value bias and the folded layer-norm bias, which the bridge moves into
b_O), so zero-ablating a head removes that constant here and keeps it on the bridge (NOTES.md:
16.44 vs 16.62 on a 2-layer GPT-2). Views that need transformer-lens's folded weights (the
forward engine, the per-head weights W_O) are refused with one line (`bridge` below).

Concurrency: every trace runs under the model's lock (runs.run_tokens, patching). Measured without
it: 30 of 40 traces from 4 threads on one model raised nnsight's "parent cannot be on a different
thread" (a trace's code runs in greenlets of the model's one interleaver); none came out wrong.

Editing an attention pattern needs a hook inside the attention function, which no module
boundary exposes: patterns are read-only here, and an edit of one is refused.

Above 500 lines: one adapter of every view's model access to nnsight's tracing API, local and on NDIF; its parts
only make sense together.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from workbench.errors import InputError

PREFIX_LOCAL = "nnsight:"
PREFIX_REMOTE = "ndif://"
REMOTE_NAME = re.compile(r"^ndif://(?P<host>[A-Za-z0-9.\-\[\]:]+):(?P<port>\d{1,5})/(?P<model>.+)$")
NUMERIC_MODE = "raw Hugging Face weights through nnsight (residuals not centred; see nnsight_backend.py)"


@dataclass(frozen=True)
class Layout:
    """Where a family keeps the modules whose inputs and outputs are the workbench's sites (dotted paths)."""

    embed: str  # token embedding: its output is hook_embed
    pos_embed: str | None  # learned positions: its output is hook_pos_embed
    blocks: str  # the list of blocks: input hook_resid_pre, output hook_resid_post
    attn: str  # in a block: output (attention output, pattern)
    o_proj: str  # in a block: input hook_z (pos, head * d_head)
    ln2: str | None  # in a block: input hook_resid_mid (sequential blocks only)
    mlp: str  # in a block: output hook_mlp_out
    mlp_down: str  # in a block: input mlp.hook_post
    final_norm: str
    unembed: str


_LLAMA = Layout(
    "model.embed_tokens", None, "model.layers", "self_attn", "self_attn.o_proj", "post_attention_layernorm", "mlp", "mlp.down_proj",
    "model.norm", "lm_head",
)  # fmt: skip
LAYOUTS = {
    "gpt2": Layout("transformer.wte", "transformer.wpe", "transformer.h", "attn", "attn.c_proj", "ln_2", "mlp", "mlp.c_proj", "transformer.ln_f", "lm_head"),
    "gpt_neox": Layout(
        "gpt_neox.embed_in", None, "gpt_neox.layers", "attention", "attention.dense", "post_attention_layernorm", "mlp",
        "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "lm_head",
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}  # fmt: skip

# where each transformer-lens block hook lives: (module in the block, "input"/"output", tuple index), in run order
BLOCK_POINTS = {
    "hook_resid_pre": ("", "input", None),
    "attn.hook_z": ("o_proj", "input", None),
    "attn.hook_pattern": ("attn", "output", 1),
    "hook_attn_out": ("attn", "output", 0),
    "hook_resid_mid": ("ln2", "input", None),
    "mlp.hook_post": ("mlp_down", "input", None),
    "hook_mlp_out": ("mlp", "output", None),
    "hook_resid_post": ("", "output", None),
}
READ_ONLY = ("attn.hook_pattern",)


class Refused:
    """Stands where a bridge would: any view that reads transformer-lens's bridge (its folded weights, its
    hooks) gets one line saying why it cannot run on this backend."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # Python's own protocol lookups (copy, pickle, hasattr) are not a view
            raise AttributeError(attr)
        raise InputError(
            f"this view needs transformer-lens's bridge (its folded weights, '{attr}'), and '{self._name}' runs through "
            "nnsight on the plain Hugging Face model: load it without the 'nnsight:' / 'ndif://' prefix for this view"
        )

    def __call__(self, *args, **kwargs):
        self.__getattr__("forward")


@dataclass
class Traffic:
    """What the backend sent: one trace is one request (to a server, when remote)."""

    requests: int = 0
    sent_bytes: int = 0  # serialized requests (remote, or simulated remote); 0 for local traces
    received_bytes: int = 0  # the saved values that came back (their tensors' bytes)
    seconds: float = 0.0

    def snapshot(self) -> Traffic:
        return Traffic(self.requests, self.sent_bytes, self.received_bytes, self.seconds)

    def since(self, before: Traffic) -> Traffic:
        return Traffic(
            self.requests - before.requests, self.sent_bytes - before.sent_bytes,
            self.received_bytes - before.received_bytes, self.seconds - before.seconds,
        )  # fmt: skip


@contextlib.contextmanager
def _server_errors(backend: NNsightBackend):
    """A server that cannot be reached, or fails mid-request, is one line (InputError) saying which and what to do."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:
        if backend.mode != "remote":
            raise
        first = (str(err).strip() or type(err).__name__).splitlines()[0][:300]
        raise InputError(
            f"the NDIF server at {backend.host} did not complete the request ({first}); check that it runs "
            "(`ndif status` on its machine) and try again -- your inputs are kept"
        ) from err


def _measuring_backend(model, traffic: Traffic):
    """nnsight's local simulation of a server (serialize, deserialize with this checkout's modules hidden, run),
    counting the request's bytes as the remote backend would send them (zstd-compressed)."""
    from nnsight.intervention.backends.local import LocalSimulationBackend
    from nnsight.schema.request import RequestModel

    class Measuring(LocalSimulationBackend):
        def __call__(self, tracer):
            traffic.sent_bytes += len(RequestModel.serialize(tracer, compress=True))
            return super().__call__(tracer)

    return Measuring(model)


@dataclass(eq=False)
class NNsightBackend:
    """Runs a Hugging Face causal LM through nnsight: here (`mode` "local"), on an NDIF server ("remote"), or
    through nnsight's local simulation of a server ("simulated": the request is serialized and run as a
    server would, with this checkout's modules hidden)."""

    nn: object  # nnsight TransformersModel
    family: str
    layout: Layout
    n_layers: int
    n_heads: int
    mode: str = "local"
    host: str | None = None  # http://host:port of the NDIF server
    traffic: Traffic = field(default_factory=Traffic)

    # ---- names ----

    def hook_names(self) -> list[str]:
        """Every transformer-lens hook name this backend exposes, in run order."""
        names = ["hook_embed"] + (["hook_pos_embed"] if self.layout.pos_embed else [])
        for layer in range(self.n_layers):
            names += [f"blocks.{layer}.{s}" for s, (where, _, _) in BLOCK_POINTS.items() if where != "ln2" or self._has_ln2()]
        return names

    def _has_ln2(self) -> bool:
        """Sequential blocks only: a parallel block's MLP reads the block's input, so it has no resid_mid."""
        config = self.nn.config
        return self.layout.ln2 is not None and not getattr(config, "use_parallel_residual", False)

    def _module(self, dotted: str):
        envoy = self.nn
        for part in dotted.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _point(self, name: str) -> tuple[tuple[int, int], str, str, int | None]:
        """((layer, order), module path, "input"/"output", tuple index) of a transformer-lens hook name."""
        if name == "hook_embed":
            return (-1, 0), self.layout.embed, "output", None
        if name == "hook_pos_embed" and self.layout.pos_embed:
            return (-1, 1), self.layout.pos_embed, "output", None
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in BLOCK_POINTS:
            layer = int(parts[1])
            where, io, index = BLOCK_POINTS[parts[2]]
            if layer < self.n_layers and (where != "ln2" or self._has_ln2()):
                block = f"{self.layout.blocks}.{layer}"
                path = block if not where else f"{block}.{getattr(self.layout, where)}"
                order = list(BLOCK_POINTS).index(parts[2])
                return (layer, order), path, io, index
        raise InputError(
            f"the nnsight backend has no site '{name}' on this {self.family} model: it sees residuals, attention and MLP "
            "outputs, heads' outputs (hook_z), patterns and neurons at module boundaries"
        )

    # ---- running ----

    def trace_kwargs(self) -> dict:
        if self.mode != "local":
            # a server has no workbench installed: the edits (engine.Edit, its apply) travel as source with the request
            from nnsight import register

            register("workbench")
        if self.mode == "remote":
            from nnsight.intervention.backends.remote import RemoteBackend

            return {"backend": RemoteBackend(self.nn.to_model_key(), host=self.host, blocking=True)}
        if self.mode == "simulated":
            return {"backend": _measuring_backend(self.nn, self.traffic)}
        return {}

    def run(
        self,
        tokens: torch.Tensor,
        names: Sequence[str] = (),
        hooks: Sequence[tuple[str, Callable]] = (),
        last_only: bool = False,
        grad: bool = False,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits (batch, pos or 1, d_vocab), {name: activation}) of token ids (batch, pos) in one trace.

        `reduce`, when given, maps the last position's logits (batch, d_vocab) to what comes back
        instead of the logits (a metric: (batch,)), computed where the model runs -- from a server,
        a patching sweep brings back one number per patched run, not a vocabulary of logits.

        `hooks` are transformer-lens style `fn(activation, hook) -> activation or None`, applied in
        the order given at their site; `names` are recorded after them (the edited values), heads
        split as transformer-lens does ((batch, pos, head, d_head) for hook_z).
        """
        steps = self._plan(names, hooks)
        start = time.perf_counter()
        kwargs = self.trace_kwargs()
        if last_only:
            kwargs["logits_to_keep"] = 1
        # the traced block names no `self`: a server gets the model's envoys and the hooks, not this object
        nn, n_heads = self.nn, self.n_heads
        with _server_errors(self), torch.set_grad_enabled(grad), nn.trace(tokens, **kwargs):
            cache = _walk(steps, n_heads, grad)
            logits = nn.output.logits
            if reduce is not None:
                logits = reduce(logits[:, -1])
            if not grad:
                logits = logits.detach()
            cache = cache.save()
            logits = logits.save()
        self._count(start, logits, *cache.values())
        return logits, cache

    def _count(self, start: float, *tensors: torch.Tensor) -> None:
        self.traffic.requests += 1
        self.traffic.received_bytes += sum(t.numel() * t.element_size() for t in tensors)
        self.traffic.seconds += time.perf_counter() - start

    def _plan(self, names: Sequence[str], hooks: Sequence[tuple[str, Callable]]) -> list:
        """[(module envoy, "input"/"output", [(tuple index, name, hooks, keep), ...])] in the order the model computes them."""
        for name, _ in hooks:
            if name.split(".", 2)[-1] in READ_ONLY:
                raise InputError(
                    f"the nnsight backend cannot edit {name}: the attention pattern is computed inside the attention "
                    "function, which no module boundary exposes; edit the heads' output (z) instead"
                )
        plan: dict[tuple, dict] = {}  # one entry per module value touched

        def entry(name: str) -> dict:
            order, path, io, index = self._point(name)
            items = plan.setdefault((order[0], order[1] if index is None else 2, path, io), {})
            return items.setdefault(index, {"name": name, "hooks": [], "keep": False})

        for name, fn in hooks:
            entry(name)["hooks"].append(fn)
        for name in names:
            entry(name)["keep"] = True
        return [
            (self._module(path), io, [(index, it["name"], it["hooks"], it["keep"]) for index, it in sorted(items.items(), key=lambda kv: -1 if kv[0] is None else kv[0])])
            for (_, _, path, io), items in sorted(plan.items(), key=lambda kv: kv[0][:2])
        ]  # fmt: skip

    def patch_sweep(
        self,
        source: torch.Tensor,
        base: torch.Tensor,
        hook_of: Callable[[int], str],
        edit_of: Callable,
        layers: Sequence[int],
        n_rows: int,
        reduce: Callable,
    ):
        """(metric of each patched run (n_rows,), source run's last logits (d_vocab,), base run's (d_vocab,)) in ONE trace.

        Three invokes share one forward pass: the source run records the site at `layers`, the base
        run gives the baseline, and `n_rows` copies of the base run take their patched values from the
        first invoke's activations there, where the model runs (`edit_of(layer, source activation)`
        builds the engine.Edit of that layer's rows). To a server this is one request, and what comes
        back is one number per patched run and two rows of logits.
        """
        names = [hook_of(layer) for layer in layers]
        keep_steps = self._plan(names, ())
        found = {}  # filled by the first invoke, read by the third's hooks (one dict shared by the invokes)
        hooks = [(name, _SourceEdit(edit_of, layer, found, name)) for layer, name in zip(layers, names, strict=True)]
        start = time.perf_counter()
        nn, n_heads, patch_steps = self.nn, self.n_heads, self._plan((), hooks)
        with _server_errors(self), torch.no_grad(), nn.trace(**self.trace_kwargs()) as tracer:
            with tracer.invoke(source[None]):
                _walk(keep_steps, n_heads, False, found)
                source_logits = nn.output.logits[0, -1].save()
            with tracer.invoke(base[None]):
                base_logits = nn.output.logits[0, -1].save()
            with tracer.invoke(base[None].expand(n_rows, -1)):
                _walk(patch_steps, n_heads, False)
                values = reduce(nn.output.logits[:, -1]).save()
        self._count(start, values, source_logits, base_logits)
        return values, source_logits, base_logits

    def readout_weights(self) -> tuple[object, torch.Tensor, torch.Tensor | None]:
        """(final norm as engine.Norm, W_U (d_model, d_vocab), b_U or None) read from the Hugging Face modules.

        Remote: one request that brings them back (d_model × d_vocab floats: 154 MB for GPT-2 small).
        """
        from workbench import engine

        norm_path, unembed_path = self.layout.final_norm, self.layout.unembed
        if self.mode == "local":
            norm, unembed = self._module(norm_path)._module, self._module(unembed_path)._module
            weights = {"w": getattr(norm, "weight", None), "b": getattr(norm, "bias", None), "W": unembed.weight, "bU": unembed.bias}
        else:
            start = time.perf_counter()
            nn, norm, unembed = self.nn, self._module(norm_path), self._module(unembed_path)
            with _server_errors(self), torch.no_grad(), nn.trace(torch.zeros(1, 1, dtype=torch.long), **self.trace_kwargs()):
                weights = {"w": norm.weight, "b": getattr(norm, "bias", None), "W": unembed.weight, "bU": unembed.bias}.save()
            self.traffic.requests += 1
            self.traffic.received_bytes += sum(t.numel() * t.element_size() for t in weights.values() if t is not None)
            self.traffic.seconds += time.perf_counter() - start
        config = self.nn.config
        eps = next(
            (float(getattr(config, k)) for k in ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps") if hasattr(config, k)), 1e-5
        )
        rms = (
            "rms" in type(self._module(norm_path)._module).__name__.lower()
            if self.mode == "local"
            else self.family not in ("gpt2", "gpt_neox")
        )
        w = None if weights["w"] is None else weights["w"].detach().float().cpu()
        b = None if rms or weights["b"] is None else weights["b"].detach().float().cpu()
        norm = engine.Norm("rms" if rms else "layer", w, b, eps)
        b_u = None if weights["bU"] is None else weights["bU"].detach().float().cpu()
        return norm, weights["W"].detach().float().cpu().T.contiguous(), b_u

    def generate(self, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """(1, pos + new) greedy continuation of (1, pos) ids, in one request."""
        start = time.perf_counter()
        with (
            _server_errors(self),
            torch.no_grad(),
            self.nn.generate(tokens, max_new_tokens=max_new_tokens, do_sample=False, **self.trace_kwargs()) as tracer,
        ):
            out = tracer.result.save()
        self.traffic.requests += 1
        self.traffic.seconds += time.perf_counter() - start
        return out


def _walk(steps: list, n_heads: int, grad: bool, cache: dict | None = None) -> dict[str, torch.Tensor]:
    """Inside a trace (or an invoke): applies each step's hooks at its module value and returns {name: kept value}.

    `cache` receives each kept value as soon as it is known (another invoke may read it at the same module).
    """
    cache = {} if cache is None else cache
    for module, io, items in steps:
        value = module.input if io == "input" else module.output
        parts = list(value) if isinstance(value, tuple) else None
        for index, name, fns, keep in items:
            act = value if index is None else parts[index]
            heads = name.endswith("attn.hook_z")
            if heads:  # (batch, pos, head * d_head) -> (batch, pos, head, d_head), as transformer-lens shows it
                act = act.reshape(*act.shape[:-1], n_heads, -1)
            for fn in fns:
                new = fn(act, SimpleNamespace(name=name))
                act = act if new is None else new
            if keep:
                cache[name] = act if grad else act.detach()
            if fns:
                act = act.reshape(*act.shape[:-2], -1) if heads else act
                if index is None:
                    value = act
                else:
                    parts[index] = act
        if any(fns for _, _, fns, _ in items):
            new_value = value if parts is None else tuple(parts)
            if io == "input":
                module.input = new_value
            else:
                module.output = new_value
    return cache


@dataclass(frozen=True)
class _SourceEdit:
    """A hook that patches rows with another invoke's activation, read when the hook runs (that invoke ran first)."""

    edit_of: Callable
    layer: int
    found: dict
    name: str

    def __call__(self, act: torch.Tensor, hook) -> torch.Tensor:
        from workbench import engine

        return engine.apply(self.edit_of(self.layer, self.found[self.name][0]), act)


def is_nnsight_name(name: object) -> bool:
    return isinstance(name, str) and name.strip().startswith((PREFIX_LOCAL, PREFIX_REMOTE))


def split_name(name: str) -> tuple[str, str | None]:
    """(model folder or hub name, server URL or None) of an 'nnsight:' or 'ndif://host:port/model' name."""
    name = name.strip()
    if name.startswith(PREFIX_LOCAL):
        rest = name[len(PREFIX_LOCAL) :].strip()
        if not rest:
            raise InputError("'nnsight:' needs a model after it: nnsight:<folder or cached hub name>, e.g. nnsight:models/english")
        return rest, None
    found = REMOTE_NAME.match(name)
    if not found or not 0 < int(found["port"]) < 65536:
        raise InputError(
            f"'{name}' is not a server address: write ndif://host:port/<model>, e.g. ndif://127.0.0.1:8001/openai-community/gpt2"
        )
    scheme = "https" if found["port"] == "443" else "http"  # the public NDIF (api.ndif.us:443) speaks TLS
    return found["model"].strip(), f"{scheme}://{found['host']}:{found['port']}"


def load(name: str, device: str | None = None, dtype: str = "float32", trust_remote_code: bool = False, simulate_remote: bool = False):
    """A LoadedModel whose runs go through nnsight: locally for 'nnsight:<model>', on the server of
    'ndif://host:port/<model>' (the model's config and tokenizer are read here, its weights stay there).

    `simulate_remote`: run every trace through nnsight's simulation of a server (serialized, then run
    here with this checkout's modules hidden), counting the request bytes a server would receive.
    """
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from workbench import model as model_module

    inner, host = split_name(name)
    _, folder, kind = model_module.resolve(inner, model_module.allowed_root())
    if dtype not in model_module.DTYPES:
        raise InputError(f"unknown dtype '{dtype}': use one of {', '.join(model_module.DTYPES)}")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    family = config.model_type
    if family not in LAYOUTS:
        raise InputError(f"the nnsight backend knows the module layout of {', '.join(LAYOUTS)}, not '{family}': load it without the prefix")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    if host is None:
        model_module.check_folder(folder)
        device = model_module.pick_device(device)
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                folder, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=model_module.DTYPES[dtype],
                attn_implementation="eager", local_files_only=True,
            ).to(device).eval()  # fmt: skip
        except Exception as err:
            raise InputError(f"could not load the model in {folder}: {model_module.first_line(err)}") from err
        nn = TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")
        n_params = sum(p.numel() for p in hf_model.parameters())
    else:
        # the weights stay on the server: a meta model gives the module tree; the server is asked for `inner`
        repo_id = str(folder) if kind != "hub cache" else inner
        # nnsight names the model to the server by its hub id, which it canonicalises by asking the hub; offline (and
        # for a folder a self-hosted server loads from the same path) the id is taken as it is
        from nnsight.modeling import huggingface as nnsight_hf

        nnsight_hf._ID_CACHE.setdefault(repo_id, repo_id)
        nn = TransformersModel(repo_id, tokenizer=tokenizer, task="text-generation", dispatch=False)
        n_params = 0
        device = "cpu"  # where results land
    mode = "remote" if host else "simulated" if simulate_remote else "local"
    backend = NNsightBackend(nn, family, LAYOUTS[family], config.num_hidden_layers, config.num_attention_heads, mode, host)
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    info = model_module.ModelInfo(
        name=name.strip(),
        source=str(folder) if host is None else f"{host} ({inner})",
        kind=kind if host is None else "NDIF server",
        architecture=(config.architectures or [family])[0],
        n_layers=config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        d_model=d_model,
        d_head=getattr(config, "head_dim", None) or d_model // n_heads,
        d_mlp=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model,
        n_ctx=getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024),
        d_vocab=config.vocab_size,
        n_params=n_params,
        numeric_mode=NUMERIC_MODE,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    return model_module.LoadedModel(bridge=Refused(name.strip()), tokenizer=tokenizer, info=info, backend=backend)


def _weights(backend: NNsightBackend, paths: Sequence[str]) -> dict[str, torch.Tensor]:
    """{path: weight} of modules, read here (local) or brought back from the server in one request."""
    if backend.mode == "local":
        return {p: backend._module(p)._module.weight.detach().float().cpu() for p in paths}
    start = time.perf_counter()
    nn, modules = backend.nn, {p: backend._module(p) for p in paths}
    with _server_errors(backend), torch.no_grad(), nn.trace(torch.zeros(1, 1, dtype=torch.long), **backend.trace_kwargs()):
        found = {p: m.weight for p, m in modules.items()}.save()
    backend.traffic.requests += 1
    backend.traffic.received_bytes += sum(t.numel() * t.element_size() for t in found.values())
    backend.traffic.seconds += time.perf_counter() - start
    return {p: t.detach().float().cpu() for p, t in found.items()}


def _as_in_out(weight: torch.Tensor, family: str) -> torch.Tensor:
    """(in, out) of a projection's weight: GPT-2's Conv1D stores (in, out), nn.Linear (out, in)."""
    return weight if family == "gpt2" else weight.T


def component_attribution(
    model, prompt: str, answer: int, wrong: int | None = None, position: int = -1, top_neurons: int = 20, truncate: bool = False
):
    """Direct logit attribution on the nnsight backend: attribution.ComponentAttribution, in the raw model's coordinates.

    Each component's write c is read as the final norm reads it with its scale frozen:
    (c − mean c) / scale · (γ ⊙ (W_U[:, answer] − W_U[:, wrong])) (no centring under RMSNorm). These equal
    the bridge's compatibility-mode numbers for the embeddings, every attention and MLP output, every
    neuron and the residual points (tests/test_nnsight_backend.py); a head's value differs from the
    bridge's by a constant (its value bias, which the bridge moves into b_O), and so does the remainder.
    """
    from workbench import engine
    from workbench.attribution import ComponentAttribution
    from workbench.lens import lens_points
    from workbench.runs import check_position, check_token_ids, hook_names, provenance, run_prompt
    from workbench.tokens import token_labels

    backend: NNsightBackend = model.backend
    info = model.info
    check_token_ids(model, [answer] + ([] if wrong is None else [wrong]), "answer and wrong token")
    names = hook_names(model, "hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                       "hook_mlp_out", "attn.hook_z", "mlp.hook_post")  # fmt: skip
    run = run_prompt(model, prompt, names, truncate=truncate)
    position = check_position(run.n_tokens, position)
    r = engine.readout_of(model)  # the final norm and unembedding, read once per model
    norm, w_u, b_u = r.norm, r.W_U, r.b_U
    gamma = norm.weight if norm.weight is not None else torch.ones(info.d_model)
    direction = gamma * (w_u[:, answer] - (w_u[:, wrong] if wrong is not None else 0.0))  # (d_model,)
    centre = norm.kind == "layer"

    def centred(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if centre else x

    final = run[f"blocks.{info.n_layers - 1}.hook_resid_post"][position].float()  # (d_model,) what the final norm reads
    scale = torch.sqrt(centred(final).pow(2).mean() + norm.eps)  # the frozen final-norm scale

    def dla(x: torch.Tensor) -> torch.Tensor:
        return centred(x.float()) @ direction / scale

    components, values = ["embed"], [dla(run["hook_embed"][position])]
    if "hook_pos_embed" in run.cache:
        components.append("pos_embed")
        values.append(dla(run["hook_pos_embed"][position]))
    layout = backend.layout
    o_paths = [f"{layout.blocks}.{layer}.{layout.o_proj}" for layer in range(info.n_layers)]
    down_paths = [f"{layout.blocks}.{layer}.{layout.mlp_down}" for layer in range(info.n_layers)]
    weights = _weights(backend, o_paths + down_paths)
    heads, neurons = torch.zeros(info.n_layers, info.n_heads), []
    for layer in range(info.n_layers):
        components += [f"L{layer} attn", f"L{layer} mlp"]
        values += [dla(run[f"blocks.{layer}.hook_attn_out"][position]), dla(run[f"blocks.{layer}.hook_mlp_out"][position])]
        w_o = _as_in_out(weights[o_paths[layer]], backend.family).reshape(
            info.n_heads, info.d_head, info.d_model
        )  # (head, d_head, d_model)
        z = run[f"blocks.{layer}.attn.hook_z"][position].float()  # (head, d_head)
        heads[layer] = dla(torch.einsum("he,hed->hd", z, w_o))
        post = run[f"blocks.{layer}.mlp.hook_post"][position].float()  # (d_mlp,)
        contrib = post * (centred(_as_in_out(weights[down_paths[layer]], backend.family)) @ direction) / scale  # (d_mlp,)
        for n in contrib.abs().topk(min(top_neurons, len(contrib))).indices.tolist():
            neurons.append(dict(layer=layer, neuron=n, activation=float(post[n]), attribution=float(contrib[n])))
    neurons.sort(key=lambda r: -abs(r["attribution"]))
    # the bridge folds the final norm's bias into b_U: the logit the components add up to leaves out both
    bias = (b_u if b_u is not None else torch.zeros(info.d_vocab)) + (norm.bias @ w_u if norm.bias is not None else 0.0)
    logit = run.logits[position, answer] - bias[answer]
    if wrong is not None:
        logit = logit - (run.logits[position, wrong] - bias[wrong])
    component_values = torch.stack(values)
    points = lens_points(model)
    cumulative = torch.stack([dla(run[name][position]) for _, name in points])
    labels = token_labels(model.tokenizer, [answer] + ([wrong] if wrong is not None else []))
    return ComponentAttribution(
        metric_label=f"logit({labels[0]})" + (f" − logit({labels[1]})" if wrong is not None else ""),
        position=position,
        logit=float(logit),
        components=components,
        component_values=component_values,
        heads=heads,
        head_remainder=float(component_values.sum() - heads.sum()),
        cumulative_labels=[label for label, _ in points],
        cumulative=cumulative,
        neurons=neurons[:top_neurons],
        provenance=provenance(model, [prompt], method="direct logit attribution (nnsight)", answer=answer, wrong=wrong, position=position),
    )
