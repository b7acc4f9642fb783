"""Transcoders: a sparse dictionary that stands in for one MLP (Dunefsky et al. 2024; Ameisen et al. 2025).

An SAE reconstructs the activation it reads; a transcoder reads the MLP's input and predicts the
MLP's output, so that its features are a sparse, readable replacement for the MLP's neurons:

    a = act(x W_enc + b_enc)                 (d_sae,)   x: the MLP's input (after its norm), (d_in,)
    ŷ = a W_dec + b_dec  [+ x W_skip]         (d_out,)   the MLP's output, before the residual add

`act` is TopK (what the workbench trains), JumpReLU or ReLU, as for SAEs (workbench/sae.py). The
optional linear skip connection W_skip (Paulo et al. 2025, "Transcoders beat sparse autoencoders
for interpretability") carries the part of the MLP that is nearly linear, so the features need not.
The difference y - ŷ is the transcoder's error; the attribution graph keeps it as an error node.

Where it reads: `blocks.L.mlp.hook_in`, the MLP's actual input after its norm (transformer-lens 4's
bridge has this hook in every family, parallel blocks included), and where it writes:
`blocks.L.hook_mlp_out`. The engine computes both (`mlp_io`); the tests check them against the
bridge's hooks.

On disk: SAELens's transcoder format, so the loader here reads the ones users bring and the
ones trained here load in SAELens: a folder with `cfg.json` (d_in, d_sae, d_out, hook_name,
hook_name_out, hook_layer, hook_layer_out, architecture "transcoder", "skip_transcoder" or
"jumprelu_transcoder", activation_fn_kwargs {"k"} for TopK) and `sae_weights.safetensors`
(W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_out), b_dec (d_out,), W_skip (d_in, d_out) when
skipped, threshold (d_sae,) for JumpReLU). A transcoder never subtracts b_dec from its input
(its input and output live in different places).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import engine
from workbench.errors import InputError
from workbench.sae import CONFIG, WEIGHTS, Dictionary, check_activation, read_config  # SAELens's file names

ACTIVATIONS = ("relu", "topk", "jumprelu")
FOLDER = "transcoders"  # models/<model>/transcoders/<layer>/: the transcoders that ship with a model


@dataclass(frozen=True, eq=False)
class Transcoder(Dictionary):
    """One layer's transcoder; tensors on the CPU in float32 unless moved."""

    layer: int
    W_enc: torch.Tensor  # (d_in, d_sae)
    b_enc: torch.Tensor  # (d_sae,)
    W_dec: torch.Tensor  # (d_sae, d_out)
    b_dec: torch.Tensor  # (d_out,)
    W_skip: torch.Tensor | None = None  # (d_in, d_out)
    activation: str = "topk"
    k: int | None = None
    threshold: torch.Tensor | None = None  # (d_sae,) JumpReLU's thresholds
    hook_name: str = ""  # what it reads; default blocks.L.mlp.hook_in
    hook_name_out: str = ""  # what it predicts; default blocks.L.hook_mlp_out
    meta: dict = field(default_factory=dict)
    # a cross-layer transcoder's layer (Ameisen et al. 2025): its features also write to the MLP outputs of the next
    # n_later layers, (d_sae, n_later, d_out); the MLP output of layer l is then its own decode plus those writes
    W_dec_later: torch.Tensor | None = None

    def __post_init__(self):
        d_in, d_sae = self.W_enc.shape
        d_out = self.b_dec.shape[0]
        if self.W_dec.shape != (d_sae, d_out) or self.b_enc.shape != (d_sae,):
            raise InputError(
                f"the transcoder's weights do not fit together: W_enc {tuple(self.W_enc.shape)}, b_enc {tuple(self.b_enc.shape)}, "
                f"W_dec {tuple(self.W_dec.shape)}, b_dec {tuple(self.b_dec.shape)}"
            )
        if self.W_skip is not None and self.W_skip.shape != (d_in, d_out):
            raise InputError(f"W_skip must be (d_in, d_out) = {(d_in, d_out)}, got {tuple(self.W_skip.shape)}")
        if self.W_dec_later is not None and (self.W_dec_later.ndim != 3 or self.W_dec_later.shape[::2] != (d_sae, d_out)):
            raise InputError(
                f"W_dec_later must be (d_sae, later layers, d_out) = ({d_sae}, n, {d_out}), got {tuple(self.W_dec_later.shape)}"
            )
        check_activation("transcoder", self.activation, ACTIVATIONS, self.k, self.threshold, d_sae)
        if not self.hook_name:
            object.__setattr__(self, "hook_name", f"blocks.{self.layer}.mlp.hook_in")
        if not self.hook_name_out:
            object.__setattr__(self, "hook_name_out", f"blocks.{self.layer}.hook_mlp_out")

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) the pre-activations."""
        return x @ self.W_enc.to(x) + self.b_enc.to(x)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) pre-activations -> activations (non-negative, sparse)."""
        if self.activation == "relu":
            return h.relu()
        if self.activation == "jumprelu":
            return h * (h > self.threshold.to(h))
        top = h.topk(self.k, dim=-1)
        return torch.zeros_like(h).scatter(-1, top.indices, top.values.relu())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) the features' activations."""
        return self.activate(self.pre(x))

    def decode(self, a: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d_sae) activations (and the input x for the skip path) -> (..., d_out) the predicted MLP output."""
        y = a @ self.W_dec.to(a) + self.b_dec.to(a)
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder's output needs its input x too")
            y = y + x @ self.W_skip.to(x)
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    @property
    def n_later(self) -> int:
        """Later layers a cross-layer transcoder's features write to (0 for a per-layer transcoder)."""
        return 0 if self.W_dec_later is None else self.W_dec_later.shape[1]

    def write_later(self, a: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) activations -> (..., n_later, d_out): what they write to the MLP outputs of the next layers."""
        return torch.einsum("...s,snd->...nd", a, self.W_dec_later.to(a))

    def total_row(self, feature: int) -> torch.Tensor:
        """(d_out,) everything one feature writes per unit of activation: its decoder row plus its later layers' rows."""
        row = self.W_dec[feature]
        return row if self.W_dec_later is None else row + self.W_dec_later[feature].sum(0)

    def check_feature(self, feature: object) -> int:
        try:
            f = int(feature)
        except (TypeError, ValueError):
            raise InputError(f"a feature is a whole number from 0 to {self.d_sae - 1}, got {feature!r}") from None
        if not 0 <= f < self.d_sae:
            raise InputError(f"feature {feature} is out of range: this transcoder has features 0 to {self.d_sae - 1}")
        return f

    def save(self, folder: str | Path, **meta) -> Path:
        """Writes the transcoder in SAELens's transcoder format; returns the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arch = "jumprelu_transcoder" if self.activation == "jumprelu" else ("skip_transcoder" if self.W_skip is not None else "transcoder")
        cfg = {
            **self.meta,
            **meta,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "d_out": self.d_out,
            "hook_name": self.hook_name,
            "hook_layer": self.layer,
            "hook_name_out": self.hook_name_out,
            "hook_layer_out": self.layer,
            "architecture": arch,
            "activation_fn_str": self.activation,
            "activation_fn_kwargs": {"k": self.k} if self.k else {},
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
        }
        (folder / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.W_skip is not None:
            tensors["W_skip"] = self.W_skip
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        if self.W_dec_later is not None:  # a cross-layer transcoder's layer: its writes to the later MLP outputs
            tensors["W_dec_later"] = self.W_dec_later
            cfg["cross_layer_outputs"] = self.n_later
            (folder / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
        save_file({n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}, str(folder / WEIGHTS))
        return folder

    @classmethod
    def random(cls, layer: int, d_model: int, d_sae: int, k: int, skip: bool = False, seed: int = 0, later: int = 0) -> Transcoder:
        """A random TopK transcoder (tests: the graph's arithmetic does not depend on training); `later`: a cross-layer
        transcoder's layer writing to that many later layers too."""
        g = torch.Generator().manual_seed(seed + 1000 * layer)
        return cls(
            layer=layer,
            W_enc=torch.randn(d_model, d_sae, generator=g) / d_model**0.5,
            b_enc=0.1 * torch.randn(d_sae, generator=g),
            W_dec=torch.randn(d_sae, d_model, generator=g) / d_sae**0.5,
            b_dec=0.1 * torch.randn(d_model, generator=g),
            W_skip=0.1 * torch.randn(d_model, d_model, generator=g) / d_model**0.5 if skip else None,
            k=k,
            W_dec_later=torch.randn(d_sae, later, d_model, generator=g) / d_sae**0.5 if later else None,
        )


def _layer_of(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def load(folder: str | Path) -> Transcoder:
    """The transcoder saved in `folder` (SAELens's format); an InputError that says what is missing or unsupported."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    cfg = read_config(folder, "a transcoder")
    meta = cfg.get("metadata") or {}
    hook_out = cfg.get("hook_name_out") or meta.get("hook_name_out")
    if "d_out" not in cfg and not hook_out:
        raise InputError(
            f"{folder} holds an SAE, not a transcoder: its cfg.json has no d_out or hook_name_out (open it on the Features page)"
        )
    tensors = load_file(str(folder / WEIGHTS))
    absent = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in tensors]
    if absent:
        raise InputError(f"{folder / WEIGHTS} lacks {', '.join(absent)}")
    if (cfg.get("normalize_activations") or "none") != "none":
        raise InputError("this transcoder rescales its input; the workbench reads transcoders with normalize_activations 'none'")
    if cfg.get("apply_b_dec_to_input"):
        raise InputError("this transcoder subtracts b_dec from its input (apply_b_dec_to_input), which a transcoder cannot do")
    arch = (cfg.get("architecture") or "transcoder").lower()
    act = (cfg.get("activation_fn_str") or "relu").lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if act == "topk" or "topk" in arch:
        activation, k = "topk", int(kwargs.get("k") or cfg.get("k") or 0)
    elif "jumprelu" in arch or act == "jumprelu":
        activation, k = "jumprelu", None
    elif act == "relu":
        activation, k = "relu", None
    else:
        raise InputError(f"transcoder architecture {arch!r} with activation {act!r} is not one this workbench reads")
    hook = cfg.get("hook_name") or meta.get("hook_name")
    layer = cfg.get("hook_layer", meta.get("hook_layer", _layer_of(hook or "")))
    if layer is None:
        raise InputError(f"{folder / CONFIG} does not say which layer the transcoder replaces (hook_name / hook_layer)")
    for name, size in (("d_in", tensors["W_enc"].shape[0]), ("d_sae", tensors["W_enc"].shape[1]), ("d_out", tensors["W_dec"].shape[1])):
        if name in cfg and int(cfg[name]) != size:
            raise InputError(f"{folder / CONFIG} says {name} = {cfg[name]} but the weights have {size}")
    skip, threshold, later = tensors.get("W_skip"), tensors.get("threshold"), tensors.get("W_dec_later")
    return Transcoder(
        layer=int(layer),
        W_enc=tensors["W_enc"].float(),
        b_enc=tensors["b_enc"].float(),
        W_dec=tensors["W_dec"].float(),
        b_dec=tensors["b_dec"].float(),
        W_skip=None if skip is None else skip.float(),
        activation=activation,
        k=k,
        threshold=None if threshold is None else threshold.float(),
        hook_name=hook or "",
        hook_name_out=hook_out or "",
        meta=cfg,
        W_dec_later=None if later is None else later.float(),
    )


def check_fits(tcs: dict[int, Transcoder], d_model: int, n_layers: int) -> None:
    """An InputError unless there is one transcoder per layer, each reading and writing this model's width."""
    missing = [layer for layer in range(n_layers) if layer not in tcs]
    if missing:
        raise InputError(f"an attribution graph needs a transcoder for every layer; layers {missing} have none")
    for layer, tc in tcs.items():
        if tc.d_in != d_model or tc.d_out != d_model:
            raise InputError(f"the transcoder of layer {layer} maps {tc.d_in} -> {tc.d_out}, but the model's width is {d_model}")
        if layer + tc.n_later >= n_layers:
            raise InputError(f"the cross-layer transcoder of layer {layer} writes to {tc.n_later} later layers; the model has {n_layers}")


def is_cross_layer(tcs: dict[int, Transcoder]) -> bool:
    return any(tc.W_dec_later is not None for tc in tcs.values())


def cross_layer_outputs(tcs: dict[int, Transcoder], acts: dict[int, torch.Tensor], xs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """layer -> (..., d_out) the replacement's MLP output at each layer: its transcoder's decode of its activations `acts`
    (inputs `xs` for the skip path) plus what earlier layers' cross-layer decoders write there."""
    out = {layer: tcs[layer].decode(acts[layer], xs[layer]) for layer in tcs}
    for layer, tc in tcs.items():
        if tc.n_later:
            later = tc.write_later(acts[layer])  # (..., n_later, d_out)
            for j in range(tc.n_later):
                out[layer + 1 + j] = out[layer + 1 + j] + later[..., j, :]
    return out


def reconstruction_errors(tcs: dict[int, Transcoder], mlp_in: list[torch.Tensor], mlp_out: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """layer -> what the transcoders miss of each real MLP output (the error nodes), cross-layer writes included."""
    with torch.no_grad():
        acts = {layer: tc.encode(mlp_in[layer]) for layer, tc in tcs.items()}
        got = cross_layer_outputs(tcs, acts, {layer: mlp_in[layer] for layer in tcs})
    return {layer: mlp_out[layer] - got[layer] for layer in tcs}


def transcoder_folders(model_folder: str | Path) -> dict[int, Path]:
    """layer -> folder of every transcoder shipped in `model_folder`/transcoders/."""
    root = Path(model_folder) / FOLDER
    if not root.is_dir():
        return {}
    found = {}
    for p in sorted(root.iterdir()):
        if (p / CONFIG).is_file() and (p / WEIGHTS).is_file():
            found[load(p).layer] = p
    return dict(sorted(found.items()))


def load_set(folder: str | Path) -> dict[int, Transcoder]:
    """layer -> Transcoder for every transcoder folder under `folder` (a user's set, one folder per layer)."""
    found = {}
    for p in sorted(Path(folder).expanduser().iterdir()) if Path(folder).expanduser().is_dir() else []:
        if (p / CONFIG).is_file():
            tc = load(p)
            found[tc.layer] = tc
    if not found:
        raise InputError(f"{folder} holds no transcoder folders (each: cfg.json + sae_weights.safetensors)")
    return dict(sorted(found.items()))


def transcoders_of(model) -> dict[int, Transcoder]:
    """layer -> Transcoder that ship with `model` (a LoadedModel), loaded once and kept in `model.state.transcoders`; {} when none."""
    if model.state.transcoders is None:
        found = {layer: load(p) for layer, p in transcoder_folders(model.info.source).items()}
        if found:
            check_fits(found, model.info.d_model, model.info.n_layers)
        model.state.transcoders = found
    return model.state.transcoders


# ---- where a transcoder reads and writes, in the forward engine -----------------------------------


def mlp_input(w: engine.Weights, layer: int, resid_pre: torch.Tensor, resid_mid: torch.Tensor | None) -> torch.Tensor:
    """(..., d_model) the MLP's input at `layer`: its norm of resid_mid (sequential) or of resid_pre (parallel blocks)."""
    L = w.layers[layer]
    if w.parallel:
        return (L.ln1 if L.ln2 is None else L.ln2)(resid_pre)
    return L.ln2(resid_mid)


def capture_names(w: engine.Weights) -> list[str]:
    """The engine hooks a run must capture for `mlp_io` and the attribution graph."""
    names = []
    for layer in range(w.n_layers):
        sites = ["resid_pre", "pattern", "mlp_out"] + ([] if w.parallel else ["resid_mid"])
        names += [f"blocks.{layer}.{engine.SITE_HOOKS[s]}" for s in sites]
    return [*names, f"blocks.{w.n_layers - 1}.{engine.SITE_HOOKS['resid_post']}"]


def mlp_io(w: engine.Weights, captured: dict[str, torch.Tensor], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP input, MLP output) at `layer`, each (batch, pos, d_model), from an engine run's captures (capture_names)."""
    pre = captured[f"blocks.{layer}.hook_resid_pre"]
    mid = captured.get(f"blocks.{layer}.hook_resid_mid")
    return mlp_input(w, layer, pre, mid), captured[f"blocks.{layer}.hook_mlp_out"]


# ---- the transcoders in place of the MLPs, as engine edits --------------------------------------------


@dataclass(frozen=True, eq=False)
class _Tap:
    """A `map` edit that changes nothing and keeps what it saw (the block's MLP reads it): the MLP's input for `_Swap`."""

    seen: dict

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen["x"] = x
        return x


@dataclass(frozen=True, eq=False)
class _Swap:
    """A `map` edit of mlp_out: the transcoder's output on the MLP's input (from `_Tap`), plus `error` when given.

    `clamp` ((position, feature, value), ...) sets those features' activations to fixed values (0 ablates)."""

    w: engine.Weights
    tc: Transcoder
    seen: dict
    error: torch.Tensor | None = None  # (pos, d_model) or (batch, pos, d_model)
    clamp: tuple = ()  # ((position, feature, factor), ...)
    shared: dict | None = None  # a cross-layer set: {"tcs": all layers' transcoders, layer: activations of this run}

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        layer, w = self.tc.layer, self.w
        resid = self.seen["x"]
        x = (w.layers[layer].ln1 if w.layers[layer].ln2 is None else w.layers[layer].ln2)(resid)
        a = self.tc.encode(x)  # (batch, pos, d_sae)
        if self.clamp:
            a = a.clone()
            for pos, f, value in self.clamp:
                a[:, pos, f] = value
        out = self.tc.decode(a, x)
        if self.shared is not None:  # the earlier layers of this run write here too (layers run in order)
            self.shared[layer] = a
            for source, tc in self.shared["tcs"].items():
                if source < layer <= source + tc.n_later:
                    out = out + tc.write_later(self.shared[source])[..., layer - source - 1, :]
        return out if self.error is None else out + self.error.to(out)


def splice_edits(w: engine.Weights, tcs: dict[int, Transcoder], errors: dict[int, torch.Tensor] | None = None, clamp=None) -> list:
    """Engine edits that put each transcoder of `tcs` in place of its MLP (plus the frozen `errors` {layer: (pos, d_model)}).

    `clamp` {layer: ((position, feature, value), ...)}. With every layer's error, the run is the real one
    exactly (the local replacement model); without, the transcoders alone replace the MLPs."""
    edits = []
    shared = {"tcs": tcs} if is_cross_layer(tcs) else None
    for layer, tc in tcs.items():
        seen: dict = {}
        # the MLP reads the norm of resid_mid in a sequential block, of resid_pre in a parallel one
        edits.append(engine.Edit("map", "resid_pre" if w.parallel else "resid_mid", layer, fn=_Tap(seen)))
        err = None if errors is None else errors.get(layer)
        edits.append(engine.Edit("map", "mlp_out", layer, fn=_Swap(w, tc, seen, err, tuple((clamp or {}).get(layer, ())), shared)))
    return edits


@dataclass(frozen=True, eq=False)
class _Steer:
    """A `map` edit of mlp_out: the real MLP's output, plus each clamped feature's decoder row × (its value − its
    activation in this run), the features read from the MLP's input (from `_Tap`): circuit-tracer's feature_intervention.

    `shared` {"tcs": every layer's transcoder, layer: that layer's activation changes}: a cross-layer feature's change
    is written to the later layers' outputs too."""

    w: engine.Weights
    tc: Transcoder
    seen: dict
    clamp: tuple = ()  # ((position, feature, value), ...)
    shared: dict | None = None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        layer, L = self.tc.layer, self.w.layers[self.tc.layer]
        out = y
        if self.clamp:
            x = (L.ln1 if L.ln2 is None else L.ln2)(self.seen["x"])
            a = self.tc.encode(x)  # (batch, pos, d_sae) this run's activations
            change = torch.zeros_like(a)
            for pos, f, value in self.clamp:
                change[:, pos, f] = value - a[:, pos, f]
            out = out + change @ self.tc.W_dec.to(change)
            if self.shared is not None:
                self.shared[layer] = change
        if self.shared is not None:  # earlier layers' cross-layer decoders write their changes here (layers run in order)
            for source, tc in self.shared["tcs"].items():
                if source in self.shared and source < layer <= source + tc.n_later:
                    out = out + tc.write_later(self.shared[source])[..., layer - source - 1, :]
        return out


def steer_edits(w: engine.Weights, tcs: dict[int, Transcoder], clamp: dict[int, list[tuple[int, int, float]]]) -> list:
    """Engine edits on the real model that set features to fixed values (`clamp` {layer: ((position, feature, value),
    ...)}) while every MLP keeps computing: each clamped feature's decoder row × (value − its live activation) is added to
    its MLP's output (circuit-tracer's ReplacementModel.feature_intervention, unconstrained)."""
    edits = []
    shared = {"tcs": tcs} if is_cross_layer(tcs) else None
    for layer, tc in tcs.items():
        if layer not in clamp and shared is None:
            continue
        seen: dict = {}
        edits.append(engine.Edit("map", "resid_pre" if w.parallel else "resid_mid", layer, fn=_Tap(seen)))
        edits.append(engine.Edit("map", "mlp_out", layer, fn=_Steer(w, tc, seen, tuple(clamp.get(layer, ())), shared)))
    return edits
