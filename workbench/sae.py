"""Sparse autoencoders (SAEs): a dictionary of features for one site of the residual stream.

An SAE reads an activation x (d_in,) and writes it as a sparse, non-negative combination of
learned directions (the decoder's rows), plus a bias:

    a = act((x - b_dec · apply_b_dec_to_input) W_enc + b_enc)      (d_sae,)  the features' activations
    x̂ = a W_dec + b_dec                                             (d_in,)   the reconstruction

`act` is ReLU, JumpReLU (zero below a per-feature threshold), TopK (Gao et al. 2024, "Scaling
and evaluating sparse autoencoders": keep the k largest pre-activations, ReLU'd, zero the rest),
which the workbench trains (workbench/train), or gated (Rajamanoharan et al. 2024: a feature is on
where x W_enc + b_gate > 0, and its size is ReLU(x (W_enc · exp(r_mag)) + b_mag)).

The files on disk follow SAELens's saved format, so one loader reads the SAEs trained here and
the ones users already have: a folder with `cfg.json` (d_in, d_sae, hook_name, architecture or
activation_fn_str, activation_fn_kwargs {"k"}, apply_b_dec_to_input, normalize_activations,
reshape_activations) and `sae_weights.safetensors` (W_enc (d_in, d_sae), b_enc (d_sae,), W_dec
(d_sae, d_in), b_dec (d_in,), `threshold` (d_sae,) for JumpReLU; b_gate, b_mag, r_mag instead of
b_enc for gated). The package itself is not needed (and does not import on transformer-lens 4);
tests/fixtures/saelens holds SAEs written by SAELens 6.54 with its own encode/decode outputs, and
this module reproduces them.

Input scaling (`normalize_activations`), as SAELens applies it at inference:
- `constant_norm_rescale`: x · √d_in / ‖x‖ in, the reconstruction divided by the same factor out;
- `layer_norm`: (x − mean) / (std + 1e-5) in, · std + mean out;
- `expected_average_only_in`: a constant factor learned in training, which SAELens's files do not
  hold: `SAE.load_from_disk` applies nothing, `from_pretrained` folds its release's factor into the
  weights. `load(folder, norm_scaling_factor=…)` folds it the same way; without one, the SAE reads
  its input as SAELens's own loader does, and its `meta` says so.
An SAE on `hook_z` reads the heads' z concatenated ((head, d_head) -> head · d_head, SAELens's
`reshape_activations: hook_z`); its edits go through the engine's `z` site, each head's slice
of a decoder row landing on that head.

An intervention on a feature is an engine edit (`clamp_edit`): the residual gains
(value − a_f(x)) · W_dec[f] at the chosen positions. That is the SAE's decomposition of x,
reconstruction + error, with feature f's coefficient set to `value` and everything else, the
error term included, kept. (Encoding the edited x again need not give `value` exactly: the
encoder is not the decoder's inverse.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import engine
from workbench.errors import InputError

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ACTIVATIONS = ("relu", "topk", "jumprelu", "gated")
NORMALIZE = ("none", "constant_norm_rescale", "layer_norm")  # applied at run time; expected_average_only_in is folded or none
LN_EPS = 1e-5  # SAELens's layer_norm input scaling
# SAELens's architectures (sae_lens.registry, 6.54) that this module cannot read, and why
UNSUPPORTED = {
    "abstopk": "TopK on |pre-activation| (signed features)",
    "batchtopk": "BatchTopK picks across a batch (SAELens saves trained ones as jumprelu, which loads)",
    "matryoshka_batchtopk": "BatchTopK across a batch (saved as jumprelu, which loads)",
    "matching_pursuit": "iterative matching-pursuit encoding",
    "temporal": "an encoder that reads earlier positions",
    "transcoder": "a transcoder reads one site and writes another",
    "skip_transcoder": "a transcoder with a skip connection",
    "jumprelu_transcoder": "a transcoder reads one site and writes another",
    "jumprelu_skip_transcoder": "a transcoder with a skip connection",
}


def check_activation(what: str, activation: str, allowed: tuple[str, ...], k: int | None, threshold, d_sae: int) -> None:
    """Refuses, in one line, an activation a dictionary of `d_sae` features (an SAE, a transcoder) cannot run with."""
    if activation not in allowed:
        raise InputError(f"unknown {what} activation {activation!r}; this workbench reads {', '.join(allowed)}")
    if activation == "topk" and not (k and 0 < k <= d_sae):
        raise InputError(f"a TopK {what} needs k between 1 and {d_sae}, got {k}")
    if activation == "jumprelu" and (threshold is None or threshold.shape != (d_sae,)):
        raise InputError(f"a JumpReLU {what} needs a threshold per feature")


def read_config(folder: Path, what: str) -> dict:
    """A saved dictionary's cfg.json (SAELens's format: cfg.json beside sae_weights.safetensors), or an InputError
    that names what is missing or unreadable (`what`: "an SAE", "a transcoder")."""
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{folder} is not {what} folder: {' and '.join(missing)} missing (SAELens's format)")
    try:
        return json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{folder / CONFIG} is not valid JSON ({err.msg}, line {err.lineno})") from None


class Dictionary:
    """What an SAE and a transcoder share: an encoder W_enc (d_in, d_sae) that reads d_in and writes d_sae features."""

    W_enc: torch.Tensor

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]


@dataclass(frozen=True, eq=False)
class SAE(Dictionary):
    """One SAE's weights and how it encodes; tensors on the CPU in float32 unless moved."""

    hook_name: str  # the transformer-lens hook it reads, e.g. "blocks.1.hook_resid_pre"
    W_enc: torch.Tensor  # (d_in, d_sae)
    b_enc: torch.Tensor  # (d_sae,)
    W_dec: torch.Tensor  # (d_sae, d_in)
    b_dec: torch.Tensor  # (d_in,)
    activation: str = "topk"  # one of ACTIVATIONS
    k: int | None = None  # TopK's k
    threshold: torch.Tensor | None = None  # (d_sae,) JumpReLU's thresholds
    apply_b_dec_to_input: bool = True
    meta: dict = field(default_factory=dict)  # cfg.json as read (model name, training settings, measurements)
    normalize: str = "none"  # one of NORMALIZE: the input scaling applied at run time (module docstring)
    rescale_by_decoder_norm: bool = False  # TopK's rescale_acts_by_decoder_norm: pre-activations × ‖W_dec[f]‖, acts ÷ it
    b_gate: torch.Tensor | None = None  # (d_sae,) gated: the gate's bias (b_enc is then the magnitude's, b_mag)
    r_mag: torch.Tensor | None = None  # (d_sae,) gated: the magnitude path reads W_enc · exp(r_mag)

    def __post_init__(self):
        d_in, d_sae = self.W_enc.shape
        if self.W_dec.shape != (d_sae, d_in) or self.b_enc.shape != (d_sae,) or self.b_dec.shape != (d_in,):
            raise InputError(
                f"the SAE's weights do not fit together: W_enc {tuple(self.W_enc.shape)}, b_enc {tuple(self.b_enc.shape)}, "
                f"W_dec {tuple(self.W_dec.shape)}, b_dec {tuple(self.b_dec.shape)}"
            )
        check_activation("SAE", self.activation, ACTIVATIONS, self.k, self.threshold, d_sae)
        if self.activation == "gated" and any(t is None or t.shape != (d_sae,) for t in (self.b_gate, self.r_mag)):
            raise InputError("a gated SAE needs b_gate and r_mag, one per feature")
        if self.normalize not in NORMALIZE:
            raise InputError(f"unknown input scaling {self.normalize!r}; this workbench applies {', '.join(NORMALIZE)}")
        engine_site(self.hook_name)  # refuses a hook the engine cannot edit

    @property
    def layer(self) -> int:
        return engine_site(self.hook_name)[1]

    @property
    def site(self) -> str:
        return engine_site(self.hook_name)[0]

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in), or a hook_z SAE's (..., head, d_head) -> (..., d_in)."""
        return x.flatten(-2) if self.site == "z" and x.shape[-1] != self.d_in else x

    def _scaled_in(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_in) the input as the SAE reads it (`normalize`)."""
        if self.normalize == "constant_norm_rescale":
            return x * (self.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        if self.normalize == "layer_norm":
            centred = x - x.mean(-1, keepdim=True)
            return centred / (centred.std(-1, keepdim=True) + LN_EPS)
        return x

    def out_scale(self, x: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(factor, shift) that take a reconstruction back to the scale of input x (..., d_in): x̂ · factor + shift."""
        if self.normalize == "constant_norm_rescale":
            return x.norm(dim=-1, keepdim=True) / self.d_in**0.5, 0.0
        if self.normalize == "layer_norm":
            mean = x.mean(-1, keepdim=True)
            return (x - mean).std(-1, keepdim=True), mean
        return 1.0, 0.0

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) the pre-activations (gated: the magnitude path's)."""
        x = self._scaled_in(self.flat(x))
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.to(x)
        W = self.W_enc.to(x) * self.r_mag.exp().to(x) if self.activation == "gated" else self.W_enc.to(x)
        h = x @ W + self.b_enc.to(x)
        return h * self.W_dec.norm(dim=-1).to(h) if self.rescale_by_decoder_norm else h

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) (hook_z: (..., head, d_head)) -> (..., d_sae) the features' activations (non-negative, sparse)."""
        h = self.pre(x)
        if self.activation == "relu":
            return h.relu()
        if self.activation == "jumprelu":
            return h.relu() * (h > self.threshold.to(h))
        if self.activation == "gated":
            x = self._scaled_in(self.flat(x))
            x = x - self.b_dec.to(x) if self.apply_b_dec_to_input else x
            gate = x @ self.W_enc.to(x) + self.b_gate.to(x) > 0  # (..., d_sae) which features are on
            return h.relu() * gate
        top = h.topk(self.k, dim=-1)  # keep the k largest, ReLU'd
        return torch.zeros_like(h).scatter(-1, top.indices, top.values.relu())

    @property
    def decoder(self) -> torch.Tensor:
        """(d_sae, d_in) what one unit of each feature's activation adds (W_dec, per unit norm under rescale_by_decoder_norm)."""
        return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True) if self.rescale_by_decoder_norm else self.W_dec

    def decode(self, a: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d_sae) -> (..., d_in) the reconstruction; in the scale and shape of input `like` where given.

        An SAE with run-time input scaling needs `like` (SAELens keeps the scale from its last encode)."""
        out = a @ self.decoder.to(a) + self.b_dec.to(a)
        if like is None:
            if self.normalize != "none":
                raise ValueError(f"this SAE scales its input ({self.normalize}): decode(a, like=x) needs the input x")
            return out
        factor, shift = self.out_scale(self.flat(like).to(out))
        return (out * factor + shift).reshape(like.shape)

    def direction(self, feature: int, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) or x's shape: what one unit of `feature` adds to input x (its decoder row, in x's scale)."""
        factor, _ = self.out_scale(self.flat(x))
        row = self.decoder[feature].to(x) * factor  # (d_in,) or (..., d_in)
        return row.reshape(*row.shape[:-1], *x.shape[-2:]) if self.flat(x) is not x else row

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), like=x)

    def check_feature(self, feature: object) -> int:
        """The feature index as an int, or an InputError that names the valid range."""
        try:
            f = int(str(feature).strip()) if not isinstance(feature, int | float) else int(feature)
        except (TypeError, ValueError):
            f = None
        if f is None or isinstance(feature, bool) or (isinstance(feature, float) and not feature.is_integer()):
            raise InputError(f"a feature is a whole number from 0 to {self.d_sae - 1}, got {feature!r}")
        if not 0 <= f < self.d_sae:
            raise InputError(f"feature {feature} is out of range: this SAE has features 0 to {self.d_sae - 1}")
        return f

    def clamp_edit(self, feature: int, value: float = 0.0, position: engine.Index = None) -> engine.Edit:
        """The engine edit that sets `feature` to `value` (0: ablate it) at `position` (None: every position)."""
        f = self.check_feature(feature)
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"a clamp value must be a finite number, got {value}")
        site, layer = engine_site(self.hook_name)
        return engine.Edit("map", site, layer, position=position, fn=FeatureClamp(self, f, value))

    def save(self, folder: str | Path, **meta) -> Path:
        """Writes the SAE in SAELens's format (cfg.json + sae_weights.safetensors); returns the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {
            **self.meta,
            **meta,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "hook_name": self.hook_name,
            "hook_layer": self.layer,
            "architecture": self.activation if self.activation != "relu" else "standard",
            "activation_fn_str": self.activation,
            "activation_fn_kwargs": {"k": self.k} if self.k else {},
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize,
            "reshape_activations": "hook_z" if self.site == "z" else "none",
            "rescale_acts_by_decoder_norm": self.rescale_by_decoder_norm,
        }
        (folder / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        tensors |= (
            {"b_mag": self.b_enc, "b_gate": self.b_gate, "r_mag": self.r_mag} if self.activation == "gated" else {"b_enc": self.b_enc}
        )
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        save_file({n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}, str(folder / WEIGHTS))
        return folder


@dataclass(frozen=True, eq=False)
class FeatureClamp:
    """An engine `map` function: the slice (..., d_in) with one feature's activation set to `value`."""

    sae: SAE
    feature: int
    value: float | torch.Tensor  # a tensor broadcasts against the slice's leading axes (a value per position)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        current = self.sae.encode(x)[..., self.feature]  # (...,)
        direction = self.sae.direction(self.feature, x)  # (d_in,), or x's shape under input scaling
        value = self.value.to(x) if isinstance(self.value, torch.Tensor) else self.value
        change = (value - current)[..., None]  # (..., 1)
        if self.sae.flat(x) is not x:  # a hook_z SAE: x (..., head, d_head), each head gets its slice of the row
            change = change[..., None]
        return x + change * direction

    def __repr__(self) -> str:
        return f"FeatureClamp(feature={self.feature}, value={self.value}, sae={self.sae.hook_name})"


def engine_site(hook_name: str) -> tuple[str, int]:
    """(engine site, layer) of a block hook name such as "blocks.3.hook_resid_pre"."""
    parts = hook_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        for site, suffix in engine.SITE_HOOKS.items():
            if parts[2] == suffix:
                return site, int(parts[1])
    known = ", ".join(f"blocks.L.{s}" for s in engine.SITE_HOOKS.values())
    raise InputError(f"an SAE must read a block's hook ({known}); got {hook_name!r}")


def load(folder: str | Path, norm_scaling_factor: float | None = None) -> SAE:
    """The SAE saved in `folder` in SAELens's format; an InputError that says what is missing or unsupported.

    `norm_scaling_factor`: an `expected_average_only_in` SAE's factor (its release's, from SAELens's
    pretrained_saes.yaml), folded into the weights as SAELens's `from_pretrained` does; without one
    such an SAE reads its input unscaled, as SAELens's `load_from_disk` does.
    """
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    cfg = read_config(folder, "an SAE")
    arch = (cfg.get("architecture") or "standard").lower()
    act = (cfg.get("activation_fn_str") or "relu").lower()
    if arch in UNSUPPORTED:
        readable = "standard (ReLU), TopK, JumpReLU and gated"
        raise InputError(f"SAE architecture {arch!r} ({UNSUPPORTED[arch]}) is not one this workbench reads; it reads {readable}")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "topk" or act == "topk":
        activation, k = "topk", int(kwargs.get("k") or cfg.get("k") or 0)
    elif arch in ("jumprelu", "gated"):
        activation, k = arch, None
    elif arch == "standard" and act == "relu":
        activation, k = "relu", None
    else:
        raise InputError(
            f"SAE architecture {arch!r} with activation {act!r} is not one this workbench reads (standard ReLU, TopK, JumpReLU, gated)"
        )
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in (*NORMALIZE, "expected_average_only_in"):
        raise InputError(
            f"this SAE scales its input by {normalize!r}; the workbench applies none, expected_average_only_in, "
            "constant_norm_rescale and layer_norm (fold any other scaling into the weights first)"
        )
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as err:
        raise InputError(f"cannot read {folder / WEIGHTS}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    needed = ("W_enc", "W_dec", "b_dec", *(("b_gate", "b_mag", "r_mag") if activation == "gated" else ("b_enc",)))
    absent = [n for n in needed if n not in tensors]
    if absent:
        raise InputError(f"{folder / WEIGHTS} lacks {', '.join(absent)}, which a {arch} SAE needs")
    # SAELens 6 keeps the hook in "metadata"; releases before 4 called it "hook_point"
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise InputError(f"{folder / CONFIG} does not say which hook the SAE reads (hook_name)")
    cfg = {**cfg, "hook_name": hook}
    for name, size in (("d_in", tensors["W_enc"].shape[0]), ("d_sae", tensors["W_enc"].shape[1])):
        if name in cfg and int(cfg[name]) != size:
            raise InputError(f"{folder / CONFIG} says {name} = {cfg[name]} but the weights have {size}")
    W_enc, W_dec, b_dec = (tensors[n].float() for n in ("W_enc", "W_dec", "b_dec"))
    if normalize == "expected_average_only_in":
        normalize = "none"
        if norm_scaling_factor is None:
            cfg["input_scaling"] = "expected_average_only_in without its factor: input read unscaled, as SAELens's load_from_disk"
        else:  # SAELens's fold_activation_norm_scaling_factor
            f = float(norm_scaling_factor)
            W_enc, W_dec, b_dec = W_enc * f, W_dec / f, b_dec / f
            cfg["input_scaling"] = f"expected_average_only_in, factor {f:g} folded into the weights"
    threshold = tensors.get("threshold")
    gated = activation == "gated"
    return SAE(
        hook_name=cfg["hook_name"],
        W_enc=W_enc,
        b_enc=(tensors["b_mag"] if gated else tensors["b_enc"]).float(),
        W_dec=W_dec,
        b_dec=b_dec,
        activation=activation,
        k=k,
        threshold=None if threshold is None else threshold.float(),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        meta=cfg,
        normalize=normalize,
        rescale_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        b_gate=tensors["b_gate"].float() if gated else None,
        r_mag=tensors["r_mag"].float() if gated else None,
    )


def check_fits(sae: SAE, d_model: int, n_layers: int, z_width: int | None = None) -> None:
    """An InputError unless the SAE reads a site of this model: its width and layer (`z_width`: heads × d_head, for hook_z)."""
    if sae.site == "z":
        if z_width is not None and sae.d_in != z_width:
            raise InputError(
                f"this hook_z SAE reads {sae.d_in} values per position, but the model's heads write {z_width} (heads × d_head)"
            )
    elif sae.d_in != d_model:
        raise InputError(f"this SAE reads vectors of width {sae.d_in}, but the model's residual stream has width {d_model}")
    if sae.layer >= n_layers:
        raise InputError(f"this SAE reads layer {sae.layer}, but the model has layers 0 to {n_layers - 1}")


SAE_FOLDER = "sae"  # models/<model>/sae/<hook_name>/: the SAEs that ship with a model, one folder per hook


def sae_folders(model_folder: str | Path) -> dict[str, Path]:
    """hook_name -> folder of every SAE shipped in `model_folder`/sae/ (SAELens's format), in layer order."""
    root = Path(model_folder) / SAE_FOLDER
    found = {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG).is_file() and (p / WEIGHTS).is_file()} if root.is_dir() else {}
    return dict(sorted(found.items(), key=lambda kv: _hook_order(kv[0])))


def _hook_order(hook_name: str) -> tuple[int, int]:
    try:
        site, layer = engine_site(hook_name)
    except InputError:
        return (1 << 30, 0)
    return (layer, list(engine.SITE_HOOKS).index(site))


def saes_of(model) -> dict[str, SAE]:
    """hook_name -> SAE for every SAE that ships with `model` (a LoadedModel): models/<model>/sae/<hook_name>/.

    Empty for a model without SAEs. Loaded once per model and kept in `model.state.saes`."""
    if model.state.saes is None:
        loaded = {hook: load(folder) for hook, folder in sae_folders(model.info.source).items()}
        for s in loaded.values():
            check_fits(s, model.info.d_model, model.info.n_layers, model.info.n_heads * model.info.d_head)
        model.state.saes = loaded
    return model.state.saes


def user_sae(model, folder: str | Path) -> SAE:
    """The SAE in a user's `folder` (SAELens's format), checked to fit `model` (a LoadedModel); loaded once per model
    and folder (`model.state.user_saes`)."""
    key = str(Path(folder).expanduser().resolve())
    if key not in model.state.user_saes:
        loaded = load(folder)
        check_fits(loaded, model.info.d_model, model.info.n_layers, model.info.n_heads * model.info.d_head)
        model.state.user_saes[key] = loaded
    return model.state.user_saes[key]


# ---- the one registry of a model's SAEs, by name (a view's cache is keyed by names, not tensors) ----

USER = "folder: "  # the name of a user's SAE starts with this, then its folder


def sae_set(model, folders: tuple[str, ...] = ()) -> dict[str, SAE]:
    """name -> SAE: the model's shipped SAEs (by hook name, `saes_of`) and the SAEs in `folders` (SAELens's format,
    `user_sae`, named USER + folder), checked to fit the model."""
    out = dict(saes_of(model))
    for folder in folders:
        out[USER + str(folder)] = user_sae(model, folder)
    return out


def folder_of(model, name: str) -> Path:
    """Where the SAE called `name` lives (its dashboards are cached there when it is writable)."""
    return Path(name[len(USER) :]).expanduser() if name.startswith(USER) else Path(model.info.source) / SAE_FOLDER / name


def pick(model, name: str, folders: tuple[str, ...] = ()) -> SAE:
    """The SAE called `name` among `sae_set(model, folders)`; an InputError naming the choices otherwise."""
    found = sae_set(model, folders)
    if name not in found:
        raise InputError(f"no SAE called {name!r} here; choose one of {', '.join(found) or '(none: open an SAE folder)'}")
    return found[name]
