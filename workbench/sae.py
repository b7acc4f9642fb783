"""Sparse autoencoders (SAEs): a dictionary of features for one site of the residual stream.

An SAE reads an activation x (d_in,) and writes it as a sparse, non-negative combination of
learned directions (the decoder's rows), plus a bias:

    a = act((x - b_dec · apply_b_dec_to_input) W_enc + b_enc)      (d_sae,)  the features' activations
    x̂ = a W_dec + b_dec                                             (d_in,)   the reconstruction

`act` is ReLU, JumpReLU (zero below a per-feature threshold), or TopK (Gao et al. 2024, "Scaling
and evaluating sparse autoencoders": keep the k largest pre-activations, ReLU'd, zero the rest),
which the workbench trains (workbench/train).

The files on disk follow SAELens's saved format, so one loader reads the SAEs trained here and
the ones users already have: a folder with `cfg.json` (d_in, d_sae, hook_name, architecture or
activation_fn_str, activation_fn_kwargs {"k"}, apply_b_dec_to_input, normalize_activations) and
`sae_weights.safetensors` (W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,),
and `threshold` (d_sae,) for JumpReLU). The package itself is not needed (and does not import
on transformer-lens 4).

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
ACTIVATIONS = ("relu", "topk", "jumprelu")


@dataclass(frozen=True, eq=False)
class SAE:
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

    def __post_init__(self):
        d_in, d_sae = self.W_enc.shape
        if self.W_dec.shape != (d_sae, d_in) or self.b_enc.shape != (d_sae,) or self.b_dec.shape != (d_in,):
            raise InputError(
                f"the SAE's weights do not fit together: W_enc {tuple(self.W_enc.shape)}, b_enc {tuple(self.b_enc.shape)}, "
                f"W_dec {tuple(self.W_dec.shape)}, b_dec {tuple(self.b_dec.shape)}"
            )
        if self.activation not in ACTIVATIONS:
            raise InputError(f"unknown SAE activation {self.activation!r}; this workbench reads {', '.join(ACTIVATIONS)}")
        if self.activation == "topk" and not (self.k and 0 < self.k <= d_sae):
            raise InputError(f"a TopK SAE needs k between 1 and {d_sae}, got {self.k}")
        if self.activation == "jumprelu" and (self.threshold is None or self.threshold.shape != (d_sae,)):
            raise InputError("a JumpReLU SAE needs a threshold per feature")
        engine_site(self.hook_name)  # refuses a hook the engine cannot edit

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def layer(self) -> int:
        return engine_site(self.hook_name)[1]

    @property
    def site(self) -> str:
        return engine_site(self.hook_name)[0]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) the pre-activations."""
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.to(x)
        return x @ self.W_enc.to(x) + self.b_enc.to(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) the features' activations (non-negative, sparse)."""
        h = self.pre(x)
        if self.activation == "relu":
            return h.relu()
        if self.activation == "jumprelu":
            return h * (h > self.threshold.to(h))
        top = h.topk(self.k, dim=-1)  # keep the k largest, ReLU'd
        return torch.zeros_like(h).scatter(-1, top.indices, top.values.relu())

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) -> (..., d_in) the reconstruction."""
        return a @ self.W_dec.to(a) + self.b_dec.to(a)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

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
            "architecture": "topk" if self.activation == "topk" else ("jumprelu" if self.activation == "jumprelu" else "standard"),
            "activation_fn_str": self.activation,
            "activation_fn_kwargs": {"k": self.k} if self.k else {},
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
        }
        (folder / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
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
        direction = self.sae.W_dec[self.feature].to(x)  # (d_in,)
        value = self.value.to(x) if isinstance(self.value, torch.Tensor) else self.value
        return x + (value - current)[..., None] * direction

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


def load(folder: str | Path) -> SAE:
    """The SAE saved in `folder` in SAELens's format; an InputError that says what is missing or unsupported."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{folder} is not an SAE folder: {' and '.join(missing)} missing (SAELens's format)")
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{folder / CONFIG} is not valid JSON ({err.msg}, line {err.lineno})") from None
    tensors = load_file(str(folder / WEIGHTS))
    absent = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in tensors]
    if absent:
        raise InputError(f"{folder / WEIGHTS} lacks {', '.join(absent)}")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        raise InputError(f"this SAE rescales its input ({normalize!r}); the workbench reads SAEs with normalize_activations 'none'")
    arch = (cfg.get("architecture") or "standard").lower()
    act = (cfg.get("activation_fn_str") or "relu").lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "topk" or act == "topk":
        activation, k = "topk", int(kwargs.get("k") or cfg.get("k") or 0)
    elif arch == "jumprelu":
        activation, k = "jumprelu", None
    elif arch == "standard" and act == "relu":
        activation, k = "relu", None
    else:
        raise InputError(
            f"SAE architecture {arch!r} with activation {act!r} is not one this workbench reads (standard ReLU, TopK, JumpReLU)"
        )
    # SAELens 6 keeps the hook in "metadata"; releases before 4 called it "hook_point"
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise InputError(f"{folder / CONFIG} does not say which hook the SAE reads (hook_name)")
    cfg = {**cfg, "hook_name": hook}
    for name, size in (("d_in", tensors["W_enc"].shape[0]), ("d_sae", tensors["W_enc"].shape[1])):
        if name in cfg and int(cfg[name]) != size:
            raise InputError(f"{folder / CONFIG} says {name} = {cfg[name]} but the weights have {size}")
    threshold = tensors.get("threshold")
    return SAE(
        hook_name=cfg["hook_name"],
        W_enc=tensors["W_enc"].float(),
        b_enc=tensors["b_enc"].float(),
        W_dec=tensors["W_dec"].float(),
        b_dec=tensors["b_dec"].float(),
        activation=activation,
        k=k,
        threshold=None if threshold is None else threshold.float(),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        meta=cfg,
    )


def check_fits(sae: SAE, d_model: int, n_layers: int) -> None:
    """An InputError unless the SAE reads a site of this model: its width and layer."""
    if sae.d_in != d_model:
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

    Empty for a model without SAEs. Loaded once per model and kept in `model.derived`."""
    key = "saes"
    if key not in model.derived:
        loaded = {hook: load(folder) for hook, folder in sae_folders(model.info.source).items()}
        for s in loaded.values():
            check_fits(s, model.info.d_model, model.info.n_layers)
        model.derived[key] = loaded
    return model.derived[key]
