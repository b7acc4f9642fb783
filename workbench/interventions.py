"""Interventions: change one thing inside the model and see what it does, next to the run it came from.

Three kinds of edit, each a small frozen record (an `EditSpec`) that turns into engine edits
(engine.Edit, applied inside one forward call through the bridge's hooks under the model's lock:
nothing stays on the shared model, and no other session sees them):

- `Ablate` a head (its output z), an MLP layer (its output), a neuron (after the activation) or an
  SAE feature, by *zero*, by its *mean* over a reference set of prompts (default: the model's
  shipped held-out text, BOS positions left out: BOS is no typical position), or by *resampling*
  it from another prompt (its activation at the same position; positions past that prompt's end
  are left as they are).
- `Steer`: add coefficient × vector to the residual stream at a layer, at every position or at
  chosen ones. The vector is the difference between two prompt sets (contrastive activation addition:
  mean activation of the "plus" prompts minus that of the "minus" prompts, Turner et al. 2023,
  Rimsky et al. 2024), an SAE feature's decoder direction, or a saved vector file
  (.safetensors, .pt, .npy), checked for width.
- `Clamp` a neuron or a feature to a value.

An `EditSet` (the edits, the reference prompts, the resample prompt) is the experiment's state:
it reads and writes a compact line for the URL (`EditSet.parse` / `str`) and a mapping for
JSON/YAML spec files (`from_dict` / `to_dict`). `intervene` runs a prompt with and without it:
the next-token distributions, per-position KL, a metric before and after, and both continuations.

Guidance sweeps: `ablation_sweep` ablates every head alone in batched engine passes (each ablated
run joins the batch at its own layer, from the unedited residual stream: the layers before it
cannot change; the last layer runs the last position only), after checking the engine's logits
against the bridge's once per model, and falls back to batched bridge hooks where they differ;
`steering_sweep` runs a range of coefficients and reports the answer tokens' probability against the KL on
neutral prompts, where steering starts to break the model.

Above 500 lines for now: edit specs and their parsing, value sources, compiling, the experiment and two sweeps are
the seams issue #25 names; the split is not done yet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote

import torch

from workbench import conventions, engine, sae
from workbench.errors import InputError
from workbench.generate import Generation, Sampling, generate
from workbench.metrics import Metric
from workbench.model import LoadedModel, allowed_root
from workbench.runs import check_token_ids, encode, has_hook, provenance, run_edited
from workbench.tokens import ordinary_token_ids, token_labels

UNITS = ("head", "mlp", "neuron", "feature")
HOW = ("zero", "zero-whole", "mean", "resample")  # a head's two zeros: conventions.ZERO_CONVENTIONS
VECTORS = ("prompts", "feature", "file")
STEER_SITES = ("resid_pre", "resid_mid", "resid_post")
SITE_HELP = (
    "resid_pre: the stream entering the layer; resid_post: leaving it. resid_mid (between attention and MLP) is, on "
    "transformer-lens 4, the MLP's input: a vector added there reaches the MLP but not the stream that goes on. "
    f"Vectors are in the workbench's coordinates: {conventions.RESIDUAL}."
)
METRICS = ("probability", "logit difference", "log-probability")  # metrics.METRICS, in the page's order (its default first)
REFERENCE_WINDOWS = 32  # reference prompts cut from the held-out text
REFERENCE_TOKENS = 64  # tokens per reference window
CONTINUATION = Sampling(max_new_tokens=12)  # the continuations compared, by default greedy
# the site each ablated unit lives at (engine.SITE_HOOKS)
UNIT_SITES = {"head": "z", "mlp": "mlp_out", "neuron": "mlp_post"}


# ---- the edits, as data --------------------------------------------------------------------------


def parse_positions(value) -> tuple[int, ...] | None:
    """Positions typed as "3,4,5" (or a list); None for every position ("", "all")."""
    if value is None or value == "" or value == "all":
        return None
    items = value if isinstance(value, list | tuple) else str(value).replace("|", ",").split(",")
    try:
        out = tuple(int(str(p).strip()) for p in items if str(p).strip() != "")
    except ValueError:
        raise InputError(f"positions are whole numbers such as 3,4,5 (or 'all'), got {value!r}") from None
    if any(p < 0 for p in out):
        raise InputError(f"positions count from 0 (BOS), got {list(out)}")
    return out or None


@dataclass(frozen=True)
class Ablate:
    """Knock out a head, an MLP layer, a neuron or an SAE feature: by zero, by its mean, or resampled."""

    unit: str  # one of UNITS
    layer: int | None = None  # feature: the SAE's layer
    index: int | None = None  # head, neuron or feature; None for an MLP layer
    how: str = "zero"  # one of HOW; a head's "zero" keeps its constant output, "zero-whole" removes it (conventions.py)
    positions: tuple[int, ...] | None = None  # None: every position
    sae: str | None = None  # feature: the SAE's hook name or folder (None: the model's only SAE)
    kind: ClassVar[str] = "ablate"

    def label(self) -> str:
        where = {"head": f"L{self.layer}H{self.index}", "mlp": f"MLP {self.layer}", "neuron": f"L{self.layer} neuron {self.index}"}
        unit = where.get(self.unit, f"feature {self.index}")
        how = self.how
        if self.unit == "head" and how in conventions.ZERO_CONVENTIONS:  # name the convention where the number is shown
            how = "zero, whole output" if how == "zero-whole" else "zero, input-dependent output"
        return f"ablate {unit} ({how}){_at(self.positions)}"

    @property
    def convention(self) -> str:
        """What this ablation does, in words (conventions.py): a head's two zeros differ by its constant output."""
        return conventions.convention(self.how, self.unit)


@dataclass(frozen=True)
class Clamp:
    """Set a neuron or an SAE feature to a value."""

    unit: str  # "neuron" or "feature"
    layer: int | None = None
    index: int = 0
    value: float = 0.0
    positions: tuple[int, ...] | None = None
    sae: str | None = None
    kind: ClassVar[str] = "clamp"

    def label(self) -> str:
        unit = f"L{self.layer} neuron {self.index}" if self.unit == "neuron" else f"feature {self.index}"
        return f"clamp {unit} to {self.value:g}{_at(self.positions)}"


@dataclass(frozen=True)
class Steer:
    """Add coefficient × a vector to the residual stream at a layer (before its block by default)."""

    layer: int | None = None  # feature vectors: the SAE's layer
    coefficient: float = 1.0
    vector: str = "prompts"  # one of VECTORS
    plus: tuple[str, ...] = ()  # prompts: those whose mean activation the vector points towards
    minus: tuple[str, ...] = ()  # ... and away from
    feature: int | None = None  # feature: its decoder row
    sae: str | None = None
    file: str | None = None  # file: a saved vector's file ("path" is path patching's word; older specs' path= still reads)
    site: str = "resid_pre"  # one of STEER_SITES (feature vectors: the SAE's site)
    positions: tuple[int, ...] | None = None
    kind: ClassVar[str] = "steer"

    def label(self) -> str:
        what = {"prompts": f"difference of {len(self.plus)} and {len(self.minus)} prompts", "feature": f"feature {self.feature}"}
        source = what.get(self.vector, f"vector {self.file}")
        layer = "" if self.layer is None else f" at layer {self.layer}"
        return f"steer {self.coefficient:+g} × {source}{layer}{_at(self.positions)}"


EditSpec = Ablate | Clamp | Steer
KINDS: dict[str, type] = {"ablate": Ablate, "clamp": Clamp, "steer": Steer}


def _at(positions: tuple[int, ...] | None) -> str:
    return "" if positions is None else f" at position{'s' if len(positions) > 1 else ''} {','.join(map(str, positions))}"


@dataclass(frozen=True)
class EditSet:
    """The edits of one experiment, and where mean and resample ablations take their values from."""

    edits: tuple[EditSpec, ...] = ()
    reference: tuple[str, ...] = ()  # mean ablation's prompts; empty: the model's held-out text
    resample: str = ""  # resample ablation's prompt

    # ---- the compact line for the URL: items separated by ';' ----
    # ablate head 1.2 mean | ablate mlp 0 zero | ablate neuron 0.37 resample | ablate feature 12 zero sae=...
    # clamp neuron 0.37 3.5 | clamp feature 12 5 sae=... | steer 1 4 prompts plus=a|b minus=c|d
    # steer 1 -2 file file=v.npy | steer - 3 feature feature=12 sae=... | resample <prompt> | reference <a|b>
    # Free text is percent-quoted, so that ';', ' ', '=' and '|' inside a prompt stay inside it.

    def __str__(self) -> str:
        items = [_line(e) for e in self.edits]
        if self.resample:
            items.append(f"resample {quote(self.resample, safe='')}")
        if self.reference:
            items.append("reference " + "|".join(quote(p, safe="") for p in self.reference))
        return "; ".join(items)

    @classmethod
    def parse(cls, text: str) -> EditSet:
        """The edit set a compact line describes; InputError naming the item that does not read."""
        edits, reference, resample = [], (), ""
        for n, item in enumerate(i.strip() for i in (text or "").split(";")):
            if not item:
                continue
            words = item.split()
            head, rest = words[0].lower(), words[1:]
            try:
                if head == "resample":
                    resample = unquote(" ".join(rest))
                elif head == "reference":
                    reference = tuple(unquote(p) for p in " ".join(rest).split("|") if p)
                elif head in KINDS:
                    edits.append(_read_line(head, rest))
                else:
                    raise InputError(f"it starts with {head!r}; an edit starts with ablate, clamp or steer")
            except InputError as err:
                raise InputError(f"edit {n + 1} ('{item[:60]}') does not read: {err}") from None
        return cls(tuple(edits), reference, resample)

    # ---- JSON / YAML ----
    def to_dict(self) -> dict:
        out: dict = {"edits": [{"kind": e.kind, **_fields(e)} for e in self.edits]}
        if self.reference:
            out["reference"] = list(self.reference)
        if self.resample:
            out["resample"] = self.resample
        return out

    @classmethod
    def from_dict(cls, spec: dict) -> EditSet:
        edits = spec.get("edits") or []
        if isinstance(edits, str):  # the compact line works in a file too (its own resample and reference items, unless given apart)
            line = cls.parse(edits)
            reference = spec.get("reference") or line.reference
            reference = (reference,) if isinstance(reference, str) else reference
            return cls(line.edits, tuple(str(p) for p in reference), str(spec.get("resample") or line.resample))
        if not isinstance(edits, list):
            raise InputError("'edits' must be a list of edits (each a mapping with a 'kind') or one compact line")
        out = []
        for n, item in enumerate(edits):
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                raise InputError(f"edit {n + 1} of the spec needs a 'kind': one of {', '.join(KINDS)}")
            out.append(_build(item["kind"], {k: v for k, v in item.items() if k != "kind"}, f"edit {n + 1} of the spec"))
        reference = spec.get("reference") or ()
        if isinstance(reference, str):
            reference = (reference,)
        return cls(tuple(out), tuple(str(p) for p in reference), str(spec.get("resample") or ""))

    def labels(self) -> list[str]:
        return [e.label() for e in self.edits]


def _fields(e: EditSpec) -> dict:
    """The edit's fields that differ from their defaults, JSON-ready."""
    out = {}
    for f in dataclasses.fields(e):
        value = getattr(e, f.name)
        if value != f.default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _build(kind: str, values: dict, where: str) -> EditSpec:
    """An edit from a mapping of its fields, every value checked for type; InputError otherwise."""
    cls = KINDS[kind]
    if kind == "steer" and "path" in values and "file" not in values:  # a steering file was written path= before #25's words
        values = {("file" if k == "path" else k): v for k, v in values.items()}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown} for {kind}; known: {', '.join(known)}")
    out = {}
    for name, value in values.items():
        if value is None:
            out[name] = None
        elif name == "positions":
            out[name] = parse_positions(value)
        elif name in ("plus", "minus"):
            out[name] = (value,) if isinstance(value, str) else tuple(str(p) for p in value)
        elif name in ("layer", "index", "feature"):
            if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
                raise InputError(f"{where}: {name} must be a whole number, got {value!r}")
            out[name] = int(value)
        elif name in ("value", "coefficient"):
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                raise InputError(f"{where}: {name} must be a number, got {value!r}") from None
        else:
            out[name] = str(value)
    return cls(**out)


def _number_pair(text: str, what: str) -> tuple[int, int]:
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"a {what} is written LAYER.INDEX, e.g. 1.2, got {text!r}")
    return int(parts[0]), int(parts[1])


def _read_line(kind: str, words: list[str]) -> EditSpec:
    """One compact edit: positional words first (see EditSet), then key=value words."""
    positional = [w for w in words if "=" not in w]
    keyed = {}
    for w in words:
        if "=" in w:
            k, v = w.split("=", 1)
            keyed[k] = [unquote(p) for p in v.split("|")] if k in ("plus", "minus") else unquote(v)
    if kind == "steer":
        if len(positional) < 2:
            raise InputError("write steer LAYER COEFFICIENT [prompts|feature|file] (LAYER '-' for a feature's own layer)")
        fields = {"layer": None if positional[0] == "-" else positional[0], "coefficient": positional[1]}
        if len(positional) > 2:
            fields["vector"] = positional[2]
        return _build("steer", fields | keyed, "steer")
    if len(positional) < 3:
        usage = (
            "ablate UNIT WHERE HOW (e.g. ablate head 1.2 mean)"
            if kind == "ablate"
            else "clamp UNIT WHERE VALUE (e.g. clamp neuron 0.37 3.5)"
        )
        raise InputError(f"write {usage}")
    unit, where, last = positional[0], positional[1], positional[2]
    if unit not in UNITS or (kind == "clamp" and unit not in ("neuron", "feature")):
        allowed = UNITS if kind == "ablate" else ("neuron", "feature")
        raise InputError(f"unknown unit {unit!r}: {kind} one of {', '.join(allowed)}")
    fields: dict = {"unit": unit}
    if unit in ("head", "neuron"):
        fields["layer"], fields["index"] = _number_pair(where, unit)
    elif unit == "mlp":
        fields["layer"] = where
    else:
        fields["index"] = where
    fields["how" if kind == "ablate" else "value"] = last
    return _build(kind, fields | keyed, kind)


def _line(e: EditSpec) -> str:
    """The compact form of one edit (EditSet.parse reads it back)."""
    if isinstance(e, Steer):
        words = ["steer", "-" if e.layer is None else str(e.layer), f"{e.coefficient:g}", e.vector]
        extra = {"feature": e.feature, "sae": e.sae, "file": e.file, "site": None if e.site == "resid_pre" else e.site}
        if e.plus:
            words.append("plus=" + "|".join(quote(p, safe="") for p in e.plus))
        if e.minus:
            words.append("minus=" + "|".join(quote(p, safe="") for p in e.minus))
    else:
        where = {"head": f"{e.layer}.{e.index}", "neuron": f"{e.layer}.{e.index}", "mlp": f"{e.layer}", "feature": f"{e.index}"}[e.unit]
        last = e.how if isinstance(e, Ablate) else f"{e.value:g}"
        words = [e.kind, e.unit, where, last]
        extra = {"sae": e.sae}
    extra["positions"] = None if e.positions is None else ",".join(map(str, e.positions))
    words += [f"{k}={quote(str(v), safe=',')}" for k, v in extra.items() if v is not None]
    return " ".join(words)


# ---- engine map functions: data, so that an edit set can be shown and compared ----------------------


def _pick(n: int, positions: tuple[int, ...] | None, limit: int | None = None) -> torch.Tensor:
    """(k,) the positions of a run of n that an edit touches (chosen ones that exist, up to `limit`)."""
    top = n if limit is None else min(n, limit)
    chosen = range(top) if positions is None else sorted(p for p in set(positions) if p < top)
    return torch.tensor(list(chosen), dtype=torch.long)


@dataclass(frozen=True, eq=False)
class SetTo:
    """slice (batch, pos, ...) -> the same with unit `index` of its last axis (None: all of it) set to `values`.

    `values`: one value for every position (shape of the unit), or one per position (pos, ...) when
    `per_position` (resample: positions past its end are left as they are).
    """

    values: torch.Tensor
    per_position: bool = False
    index: int | None = None
    positions: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        pos = _pick(x.shape[1], self.positions, len(self.values) if self.per_position else None).to(x.device)
        v = (self.values[pos.cpu()] if self.per_position else self.values).to(x)
        if self.index is None:
            x[:, pos] = v  # (batch, k, ...) <- (k, ...) or (...)
        else:
            x[:, pos, self.index] = v  # (batch, k) <- (k,) or ()
        return x

    def __repr__(self) -> str:
        return f"SetTo(index={self.index}, per_position={self.per_position}, positions={self.positions})"


@dataclass(frozen=True, eq=False)
class FeatureTo:
    """slice (batch, pos, d_in) -> the same with SAE feature `feature` set to `values`: x + (v − a_f(x)) W_dec[f].

    As sae.FeatureClamp, with a value per position when `per_position` (a resampled feature).
    """

    sae: sae.SAE
    feature: int
    values: torch.Tensor  # () or (pos,)
    per_position: bool = False
    positions: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        pos = _pick(x.shape[1], self.positions, len(self.values) if self.per_position else None).to(x.device)
        value = (self.values[pos.cpu()] if self.per_position else self.values).to(x)  # () or (k,)
        x[:, pos] = sae.FeatureClamp(self.sae, self.feature, value)(x[:, pos])  # (batch, k, d_in)
        return x

    def __repr__(self) -> str:
        return f"FeatureTo(feature={self.feature}, sae={self.sae.hook_name}, per_position={self.per_position})"


@dataclass(frozen=True, eq=False)
class AddAt:
    """slice (batch, pos, d_model) -> the same plus `vector` ((d_model,), or (batch, d_model): one per row) at `positions`."""

    vector: torch.Tensor
    positions: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vector.to(x)
        v = v[:, None] if v.ndim == x.ndim - 1 else v  # per row: (batch, 1, d_model); a hook_z row (head, d_head) broadcasts
        if self.positions is None:
            return x + v
        x = x.clone()
        pos = _pick(x.shape[1], self.positions).to(x.device)
        x[:, pos] = x[:, pos] + v
        return x

    def __repr__(self) -> str:
        return f"AddAt(norm={float(self.vector.norm()):.3g}, positions={self.positions})"


# ---- where values come from: reference means, resampled runs, SAEs, vectors -------------------------


def reference_prompts(model: LoadedModel) -> tuple[str, ...]:
    """The default reference set: windows of the model's held-out text (models/<name>/heldout_*.txt), or,
    for a model without one (the circuits model), random sequences of its ordinary tokens (its training text)."""
    folder = Path(model.info.source)
    files = sorted(folder.glob("heldout_*.txt"))
    if files:
        ids = model.tokenizer("\n\n".join(f.read_text(encoding="utf-8") for f in files), add_special_tokens=False)["input_ids"]
        step = max(REFERENCE_TOKENS, len(ids) // REFERENCE_WINDOWS)
        windows = [ids[i : i + REFERENCE_TOKENS] for i in range(0, len(ids) - REFERENCE_TOKENS + 1, step)][:REFERENCE_WINDOWS]
        return tuple(model.tokenizer.decode(w) for w in windows)
    words = ordinary_token_ids(model.tokenizer, model.info.d_vocab)
    # tokens that are text (a prompt is checked for control characters)
    words = words[[model.tokenizer.decode([int(t)]).isprintable() for t in words]]
    gen = torch.Generator().manual_seed(0)
    n = min(REFERENCE_TOKENS, model.info.n_ctx - 1)
    return tuple(model.tokenizer.decode(words[torch.randint(len(words), (n,), generator=gen)]) for _ in range(REFERENCE_WINDOWS))


def mean_reference(model: LoadedModel, reference: tuple[str, ...] = ()) -> str:
    """What a mean ablation here averages over, in words (the graph's mean is another: graph.ablation_reference)."""
    if reference:
        return f"mean over {len(reference)} given reference prompt(s)"
    if any(Path(model.info.source).glob("heldout_*.txt")):
        return f"mean over {REFERENCE_WINDOWS} windows of {REFERENCE_TOKENS} tokens of the model's held-out text"
    return f"mean over {REFERENCE_WINDOWS} random sequences of the model's ordinary tokens (it has no held-out text)"


def _activations(model: LoadedModel, prompts: Sequence[str], hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """{hook: (n, ...)} the activations at every non-BOS position of every prompt, stacked (float32, CPU)."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    skip = 1 if model.bos_id is not None else 0
    for p in prompts:
        ids, _ = encode(model, p, truncate=True)
        _, cache = run_edited(model, ids[None], names=hooks)
        for h in hooks:
            out[h].append(cache[h][0, skip:].float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def reference_mean(model: LoadedModel, reference: tuple[str, ...], hook: str, fn: Callable | None = None, key: str = "") -> torch.Tensor:
    """The mean over the reference set's non-BOS positions of `hook`'s activation (or of fn(activation)); kept on the model."""
    prompts = reference or reference_prompts(model)
    store = model.state.reference_means
    k = (hash(prompts), hook, key)
    if k not in store:
        acts = _activations(model, prompts, [hook])[hook]  # (n, ...)
        store[k] = (fn(acts) if fn is not None else acts).mean(0)
    return store[k]


def load_sae(model: LoadedModel, which: str | None) -> sae.SAE:
    """The SAE named by hook name (one of the model's), folder or sae.USER + folder; None: the model's only one.

    Read from the model's one registry (sae.pick); a folder only where this server reads folders (server_path)."""
    shipped = sae.saes_of(model)
    if which is None:
        if len(shipped) != 1:
            raise InputError(f"name the SAE (sae=HOOK or a folder): this model ships {len(shipped)} ({', '.join(shipped) or 'none'})")
        which = next(iter(shipped))
    if which in shipped:
        return shipped[which]
    folder = server_path(which.removeprefix(sae.USER), "SAE folders", also=Path(model.info.source))
    if not Path(folder).expanduser().is_dir():
        raise InputError(f"no SAE '{which}': give one of this model's ({', '.join(shipped) or 'none shipped'}) or an SAE folder")
    return sae.pick(model, sae.USER + str(folder), (str(folder),))


def server_path(path: str | Path, what: str, also: Path | None = None) -> Path:
    """The path, resolved; on a shared server (WORKBENCH_MODEL_ROOT) only under that folder (or `also`), as model folders."""
    path = Path(path).expanduser()
    root = allowed_root()
    if root is None:
        return path
    target = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not (target.is_relative_to(root) or (also is not None and target.is_relative_to(also.resolve()))):
        raise InputError(f"this server reads {what} only from {root}: '{path}' is outside it")
    return target


def load_vector(path: str | Path, width: int) -> torch.Tensor:
    """(width,) a vector saved as .safetensors (one tensor, or one named 'vector'), .pt/.pth or .npy; checked for width."""
    path = server_path(path, "vector files")
    if not path.is_file():
        raise InputError(f"no vector file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "vector" not in tensors and len(tensors) != 1:
                raise InputError(f"{path} holds {len(tensors)} tensors ({', '.join(tensors)}): name the steering vector 'vector'")
            v = tensors.get("vector", next(iter(tensors.values())))
        elif path.suffix in (".pt", ".pth"):
            v = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".npy":
            import numpy as np

            v = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            raise InputError(f"a vector file is .safetensors, .pt or .npy, got {path.name}")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read the vector {path.name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(v, torch.Tensor):
        raise InputError(f"{path.name} holds a {type(v).__name__}, not a tensor")
    v = v.detach().float().reshape(-1) if v.ndim == 2 and 1 in v.shape else v.detach().float()
    if v.ndim != 1 or v.shape[0] != width:
        raise InputError(f"the vector in {path.name} has shape {tuple(v.shape)}, but this model's residual stream has width {width}")
    if not torch.isfinite(v).all():
        raise InputError(f"the vector in {path.name} holds NaN or infinite values")
    return v


def difference_vector(model: LoadedModel, plus: Sequence[str], minus: Sequence[str], layer: int, site: str = "resid_pre") -> torch.Tensor:
    """(d_model,) mean activation at `site` of `layer` over the plus prompts' non-BOS positions, minus the minus prompts'."""
    if not plus or not minus:
        raise InputError("a difference vector needs prompts on both sides (plus and minus)")
    hook = f"blocks.{layer}.{engine.SITE_HOOKS[site]}"
    store = model.state.differences
    key = (tuple(plus), tuple(minus), hook)
    if key not in store:
        store[key] = _activations(model, plus, [hook])[hook].mean(0) - _activations(model, minus, [hook])[hook].mean(0)
    return store[key]


# ---- checking and compiling an edit set ------------------------------------------------------------


def _check_layer(model: LoadedModel, layer: int | None, what: str) -> int:
    n = model.info.n_layers
    if layer is None or not 0 <= layer < n:
        raise InputError(f"{what}: layer {layer} does not exist; this model has layers 0 to {n - 1}")
    return layer


def _check_site(model: LoadedModel, site: str, layer: int) -> None:
    hook = f"blocks.{layer}.{engine.SITE_HOOKS[site]}"
    if not has_hook(model, hook):
        raise InputError(f"this model has no {site} (parallel attention and MLP blocks have no resid_mid); steer at resid_pre")


def _finite(value: float, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value}")
    return float(value)


def check(model: LoadedModel, edits: EditSet) -> None:
    """InputError with one line for the first edit that cannot apply to this model (nothing is run)."""
    i = model.info
    for e in edits.edits:
        what = e.label()
        if isinstance(e, Steer):
            _finite(e.coefficient, f"{what}: the coefficient")
            if e.vector not in VECTORS:
                raise InputError(f"{what}: unknown vector source {e.vector!r}; use one of {', '.join(VECTORS)}")
            if e.vector == "feature":
                s = load_sae(model, e.sae)
                if e.feature is None:
                    raise InputError(f"{what}: name the feature (feature=N)")
                s.check_feature(e.feature)
            else:
                if e.site not in STEER_SITES:
                    raise InputError(f"{what}: steer at one of {', '.join(STEER_SITES)}, not {e.site!r}")
                _check_site(model, e.site, _check_layer(model, e.layer, what))
                if e.vector == "file":
                    if not e.file:
                        raise InputError(f"{what}: give the vector file (file=...)")
                    load_vector(e.file, i.d_model)
                elif not e.plus or not e.minus:
                    raise InputError(f"{what}: a difference vector needs prompts on both sides (plus and minus)")
            continue
        if e.unit not in UNITS:
            raise InputError(f"unknown unit {e.unit!r}: use one of {', '.join(UNITS)}")
        if isinstance(e, Ablate) and e.how not in HOW:
            raise InputError(f"{what}: unknown ablation {e.how!r}; use one of {', '.join(HOW)}")
        if isinstance(e, Ablate) and e.how == "resample" and not edits.resample.strip():
            raise InputError(f"{what}: a resample ablation needs a prompt to resample from (resample ...)")
        if isinstance(e, Clamp):
            _finite(e.value, f"{what}: the value")
        if e.unit == "feature":
            load_sae(model, e.sae).check_feature(e.index)
            continue
        _check_layer(model, e.layer, what)
        size = {"head": i.n_heads, "neuron": i.d_mlp}.get(e.unit)
        if size is not None and (e.index is None or not 0 <= e.index < size):
            raise InputError(
                f"{e.unit} {e.layer}.{e.index} does not exist: this model has {e.unit}s 0 to {size - 1} in each of layers 0 to {i.n_layers - 1}"
            )


def compile_edits(model: LoadedModel, edits: EditSet) -> list[engine.Edit]:
    """The engine edits of an edit set (checked first); values from the reference set or the resample prompt as asked."""
    check(model, edits)
    resampled: dict[str, torch.Tensor] = {}

    def resample(hook: str) -> torch.Tensor:  # (pos, ...) the resample prompt's activation, BOS included
        if hook not in resampled:
            ids, _ = encode(model, edits.resample, truncate=True)
            _, cache = run_edited(model, ids[None], names=[hook])
            resampled[hook] = cache[hook][0].float().cpu()
        return resampled[hook]

    out = []
    for e in edits.edits:
        if isinstance(e, Steer):
            if e.vector == "feature":
                s = load_sae(model, e.sae)
                vector, site, layer = s.decoder[s.check_feature(e.feature)], s.site, s.layer
                if site == "z":  # a hook_z SAE's row, each head's slice on its head: (head, d_head)
                    vector = vector.reshape(model.info.n_heads, model.info.d_head)
            else:
                site, layer = e.site, e.layer
                vector = (
                    load_vector(e.file, model.info.d_model)
                    if e.vector == "file"
                    else difference_vector(model, e.plus, e.minus, layer, site)
                )
            out.append(engine.Edit("map", site, layer, fn=AddAt(e.coefficient * vector, e.positions)))
            continue
        if e.unit == "feature":
            s = load_sae(model, e.sae)
            f = s.check_feature(e.index)
            if isinstance(e, Clamp):
                values, per = torch.tensor(e.value), False
            elif e.how in ("zero", "zero-whole"):  # a feature's zero is the same in both conventions
                values, per = torch.tensor(0.0), False
            elif e.how == "mean":
                values = reference_mean(model, edits.reference, s.hook_name, lambda a, s=s, f=f: s.encode(a)[..., f], key=f"{id(s)}:{f}")
                per = False
            else:
                values, per = s.encode(resample(s.hook_name))[..., f], True
            out.append(engine.Edit("map", s.site, s.layer, fn=FeatureTo(s, f, values, per, e.positions)))
            continue
        site = UNIT_SITES[e.unit]
        hook = f"blocks.{e.layer}.{engine.SITE_HOOKS[site]}"
        head = e.index if e.unit == "head" else None
        index = e.index if e.unit == "neuron" else None
        if isinstance(e, Clamp):
            values, per = torch.tensor(e.value), False
        elif e.how == "resample":
            act = resample(hook)  # (pos, ...) or (pos, head, d_head)
            values, per = (act[:, head] if head is not None else act), True
            values = values[:, index] if index is not None else values
        else:
            mean = reference_mean(model, edits.reference, hook) if e.how == "mean" else None
            shape = {"head": (model.info.d_head,), "mlp": (model.info.d_model,), "neuron": ()}[e.unit]
            values = torch.zeros(shape) if mean is None else (mean[head] if head is not None else mean)
            if e.how == "zero-whole" and head is not None:  # z = −c_h: its output and its constant output cancel
                values = -conventions.head_constants(model)[e.layer, head]
            values = values[index] if index is not None and values.ndim else values
            per = False
        out.append(engine.Edit("map", site, e.layer, head=head, fn=SetTo(values, per, index, e.positions)))
    return out


# ---- the experiment -----------------------------------------------------------------------------------


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(...,) KL(p ‖ q) in nats between the distributions of two logit tensors (..., d_vocab)."""
    lp, lq = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


@dataclass(frozen=True)
class Intervention:
    """A prompt run with and without an edit set: next-token distributions, per-position KL, metric, continuations."""

    prompt: str
    edits: EditSet
    edit_labels: list[str]
    labels: list[str]  # (pos,) the prompt's tokens
    kl: torch.Tensor  # (pos,) KL(original ‖ edited) of the next-token distribution after each position, nats
    ids: list[int]  # the tokens of the next-token table: each run's top k, together
    token_labels: list[str]
    original_probs: torch.Tensor  # (len(ids),) next-token probabilities after the last position
    edited_probs: torch.Tensor
    metric: Metric
    metric_label: str
    before: float
    after: float
    original: Generation
    edited: Generation
    differs: list[bool]  # per generated step: the edited continuation's token differs from the original's there
    reference: str = ""  # what the edit set's mean ablations average over (mean_reference); "" when it has none
    backend: str = "bridge hooks"  # always the model's own hooks (engine.model_hooks): generation samples through them
    provenance: dict = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        """The next-token table, most likely (edited) first."""
        return [
            dict(id=i, token=t, original=float(a), edited=float(b), change=float(b - a))
            for i, t, a, b in zip(self.ids, self.token_labels, self.original_probs, self.edited_probs, strict=True)
        ]

    def continuation_rows(self) -> list[dict]:
        return [
            dict(step=n, position=a.position, original=a.chosen_label, edited=b.chosen_label, differs=c)
            for n, (a, b, c) in enumerate(zip(self.original.steps, self.edited.steps, self.differs, strict=False))
        ]


def intervene(
    model: LoadedModel, prompt: str, edits: EditSet, metric: Metric | None = None, sampling: Sampling = CONTINUATION, k: int = 10
) -> Intervention:
    """Runs `prompt` without and with `edits`; `metric` None: the probability of the original run's top next token.

    Always through the model's own hooks (runs.run_edited; `backend` records which): one unbatched pair of runs gains
    nothing from the engine, and the continuations are sampled through the same hooks."""
    ids, _ = encode(model, prompt)
    engine_edits = compile_edits(model, edits)
    original, _ = run_edited(model, ids[None])  # (1, pos, d_vocab)
    # no edits (the page's first visit): the edited run is the original one, computed once
    edited = run_edited(model, ids[None], engine_edits)[0] if engine_edits else original
    original, edited = original[0].float().cpu(), edited[0].float().cpu()  # (pos, d_vocab)
    if metric is None:
        metric = Metric("probability", int(original[-1].argmax()))
    metric = metric.check(model)
    p, q = original[-1].softmax(-1), edited[-1].softmax(-1)  # (d_vocab,)
    top = list(dict.fromkeys([*q.topk(k).indices.tolist(), *p.topk(k).indices.tolist()]))
    gen_a = generate(model, prompt, sampling)
    gen_b = generate(model, prompt, sampling, engine_edits) if engine_edits else gen_a  # the same seed: the same draws
    differs = [a.chosen_id != b.chosen_id for a, b in zip(gen_a.steps, gen_b.steps, strict=False)]
    differs += [True] * (len(gen_b.steps) - len(differs))
    return Intervention(
        prompt=prompt,
        edits=edits,
        edit_labels=edits.labels(),
        labels=token_labels(model.tokenizer, ids.tolist()),
        kl=kl(original, edited),
        ids=top,
        token_labels=token_labels(model.tokenizer, top),
        original_probs=p[top],
        edited_probs=q[top],
        metric=metric,
        metric_label=metric.label(model.tokenizer),
        before=float(metric.value(original[-1:])),
        after=float(metric.value(edited[-1:])),
        original=gen_a,
        edited=gen_b,
        differs=differs,
        reference=mean_reference(model, edits.reference) if any(isinstance(e, Ablate) and e.how == "mean" for e in edits.edits) else "",
        backend=engine.model_hooks(model),
        provenance=provenance(
            model, [prompt], edits=str(edits), metric=metric.kind, answer=metric.answer, wrong=metric.wrong,
            sampling=dataclasses.asdict(sampling), backend=engine.model_hooks(model),
            conventions=[e.convention for e in edits.edits if isinstance(e, Ablate)], residual=conventions.RESIDUAL,
        ),
    )  # fmt: skip


# ---- guidance: every head ablated, ranked -----------------------------------------------------------


@dataclass(frozen=True)
class AblationSweep:
    """The metric with each head ablated alone: `values` (layer, head); `before` unablated."""

    how: str
    metric: Metric
    metric_label: str
    values: torch.Tensor  # (layer, head) the metric with that head ablated
    before: float
    backend: str  # engine.backend's choice: "engine" (one batched pass), "bridge hooks" or "nnsight"
    note: str = ""
    reference: str = ""  # for `how` "mean": what the mean is over (mean_reference); else ""
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def effect(self) -> torch.Tensor:
        """(layer, head) change of the metric when the head is ablated."""
        return self.values - self.before

    def ranked(self, k: int | None = None) -> list[dict]:
        """Heads by |effect|, largest first."""
        flat = self.effect.flatten()
        order = flat.abs().argsort(descending=True)[: k or len(flat)]
        H = self.values.shape[1]
        return [
            dict(rank=r + 1, layer=int(i) // H, head=int(i) % H, metric=float(self.values.flatten()[i]), effect=float(flat[i]))
            for r, i in enumerate(order.tolist())
        ]


def _head_values(model: LoadedModel, edits: EditSet, how: str, n_tokens: int, layer: int) -> torch.Tensor:
    """(head, n_tokens or 1, d_head) what each head of `layer` becomes (zeros, the reference mean, or resampled)."""
    i = model.info
    hook = f"blocks.{layer}.attn.hook_z"
    if how == "zero":
        return torch.zeros(i.n_heads, 1, i.d_head)
    if how == "zero-whole":
        return -conventions.head_constants(model)[layer][:, None]  # (head, 1, d_head)
    if how == "mean":
        return reference_mean(model, edits.reference, hook)[:, None]  # (head, 1, d_head)
    ids, _ = encode(model, edits.resample, truncate=True)
    _, cache = run_edited(model, ids[None], names=[hook])
    return cache[hook][0].float().cpu().transpose(0, 1)  # (head, pos, d_head)


def ablation_sweep(model: LoadedModel, prompt: str, metric: Metric, how: str = "mean", edits: EditSet = EditSet()) -> AblationSweep:
    """Each head ablated alone (`how`: zero, mean, resample; `edits` gives the reference set / resample prompt)."""
    if how not in HOW:
        raise InputError(f"unknown ablation {how!r}; use one of {', '.join(HOW)}")
    if how == "resample" and not edits.resample.strip():
        raise InputError("a resample sweep needs a prompt to resample from")
    metric = metric.check(model)
    ids, _ = encode(model, prompt)
    i = model.info
    L, H, n = i.n_layers, i.n_heads, len(ids)
    values = {layer: _head_values(model, edits, how, n, layer) for layer in range(L)}
    chosen = engine.backend(model)  # checked against the model's logits once per set of weights
    if chosen.engine:
        logits = _engine_sweep(chosen.weights, ids, values, L, H)  # (L * H, d_vocab)
        before = float(metric.value(logits[-1:].float().cpu()))  # the last row: nothing ablated
        logits = logits[:-1]
    else:
        plain, _ = run_edited(model, ids[None], last_only=True)
        before = float(metric.value(plain[:, -1].float().cpu()))
        batch_edits = [
            engine.Edit("map", "z", layer, rows=torch.arange(layer * H, (layer + 1) * H), fn=_RowHeads(values[layer])) for layer in range(L)
        ]
        logits, _ = run_edited(model, ids[None].expand(L * H, -1), batch_edits, last_only=True)
        logits = logits[:, -1]
    result = metric.value(logits.float().cpu()).reshape(L, H)
    return AblationSweep(
        how, metric, metric.label(model.tokenizer), result, before, chosen.name, chosen.note(),
        mean_reference(model, edits.reference) if how == "mean" else "",
        provenance(model, [prompt], how=how, convention=conventions.convention(how), metric=metric.kind, answer=metric.answer,
                   wrong=metric.wrong, edits=str(edits), backend=chosen.name),
    )  # fmt: skip


def _engine_sweep(w: engine.Weights, ids: torch.Tensor, values: dict[int, torch.Tensor], L: int, H: int) -> torch.Tensor:
    """(L * H + 1, d_vocab) next-token logits with each head ablated alone (row layer * H + head), then unablated.

    Two engine calls, each computing only what can change: the heads of layers before the last join a
    batch at their own layer from the unablated residual stream (the last layer then runs the last query
    only); a last-layer head changes the last position alone, so its rows run that position only, with the
    unablated keys and values of the others (engine.forward's `past`).
    """
    device = w.W_U.device
    n, last = ids.shape[0], L - 1
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)] + [f"blocks.{last}.attn.hook_{kv}" for kv in "kv"]
    with torch.no_grad():
        base = engine.forward(w, ids[None].to(device), capture=names, last_only=True)
        out = []
        if last:
            enter, edits = {}, []
            for layer in range(last):
                enter[layer] = base.captured[f"blocks.{layer}.hook_resid_pre"].expand(H, -1, -1)  # (H, pos, d_model)
                rows = torch.arange(layer * H, (layer + 1) * H, device=device)
                edits.append(engine.Edit("map", "z", layer, rows=rows, fn=_RowHeads(values[layer].to(device))))
            out.append(engine.forward(w, enter=enter, edits=edits, last_only=True).logits)  # (last * H, d_vocab)
        v = values[last]  # (head, 1 or pos, d_head)
        v = v if v.shape[1] == 1 else v[:, n - 1 : n] if v.shape[1] >= n else None  # None: a resample prompt too short to reach it
        resid = base.captured[f"blocks.{last}.hook_resid_pre"][:, n - 1 :].expand(H, -1, -1)  # (H, 1, d_model)
        past = {last: tuple(base.captured[f"blocks.{last}.attn.hook_{kv}"][:, : n - 1] for kv in "kv")} if n > 1 else None
        edits = [] if v is None else [engine.Edit("map", "z", last, fn=_RowHeads(v.to(device)))]
        out.append(engine.forward(w, resid=resid, start=last, edits=edits, last_only=True, past=past).logits)  # (H, d_vocab)
        out.append(base.logits)  # (1, d_vocab)
    return torch.cat(out).float().cpu()


@dataclass(frozen=True, eq=False)
class _RowHeads:
    """z (rows, pos, head, d_head) of a layer's sweep rows -> row r with head r set to values[r] ((head, 1 or pos, d_head))."""

    values: torch.Tensor

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        heads = torch.arange(z.shape[0], device=z.device)  # row r is head r's run
        if self.values.shape[1] == 1:  # one value for every position
            z[heads, :, heads] = self.values.to(z).expand(-1, z.shape[1], -1)  # (head, pos, d_head)
        else:  # per position; positions past a resample prompt's end stay as they are
            n = min(z.shape[1], self.values.shape[1])
            z[heads, :n, heads] = self.values[:, :n].to(z)
        return z


# ---- guidance: the steering coefficient against the damage ------------------------------------------


@dataclass(frozen=True)
class SteeringSweep:
    """Per coefficient: the answer tokens' probability on held-out prompts, and the KL on neutral prompts."""

    coefficients: torch.Tensor  # (c,)
    answer: torch.Tensor  # (c,) mean over prompts and positions of the answer tokens' total next-token probability
    kl_neutral: torch.Tensor  # (c,) mean KL(unsteered ‖ steered) over the neutral prompts' positions, nats
    answer_labels: list[str]
    steer: str  # the steering edit, as its compact line
    provenance: dict = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        return [
            dict(coefficient=float(c), answer_probability=float(t), kl_neutral=float(d))
            for c, t, d in zip(self.coefficients, self.answer, self.kl_neutral, strict=True)
        ]


def steering_sweep(
    model: LoadedModel,
    steer: Steer,
    answers: Sequence[int],
    prompts: Sequence[str],
    neutral: Sequence[str],
    coefficients: Sequence[float] = (0, 1, 2, 4, 8, 16),
    edits: EditSet = EditSet(),
) -> SteeringSweep:
    """One batched run per prompt, one row per coefficient: do the answer tokens rise before the neutral text breaks?"""
    answers = check_token_ids(model, list(answers), "answer token")
    if not answers:
        raise InputError("name at least one answer token")
    if not prompts or not neutral:
        raise InputError("the sweep needs held-out prompts (for the answer tokens) and neutral prompts (for the KL)")
    coefficients = torch.tensor([_finite(float(c), "a coefficient") for c in coefficients])
    unit = dataclasses.replace(steer, coefficient=1.0)
    (edit,) = compile_edits(model, dataclasses.replace(edits, edits=(unit,)))
    vector = coefficients[:, None] * edit.fn.vector  # (c, d_model): one steering vector per row
    batched = dataclasses.replace(edit, fn=AddAt(vector, edit.fn.positions))
    skip = 1 if model.bos_id is not None else 0

    def runs(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, _ = encode(model, prompt, truncate=True)
        plain, _ = run_edited(model, ids[None])
        steered, _ = run_edited(model, ids[None].expand(len(coefficients), -1), [batched])
        return plain[0, skip:].float().cpu(), steered[:, skip:].float().cpu()  # (pos, d_vocab), (c, pos, d_vocab)

    answer = torch.stack([r[1].softmax(-1)[..., answers].sum(-1).mean(-1) for r in map(runs, prompts)]).mean(0)  # (c,)
    damage = torch.stack([kl(plain[None], steered).mean(-1) for plain, steered in map(runs, neutral)]).mean(0)  # (c,)
    return SteeringSweep(
        coefficients, answer, damage, token_labels(model.tokenizer, answers), _line(unit),
        provenance(model, [*prompts, *neutral], steer=_line(unit), answers=answers, coefficients=coefficients.tolist()),
    )  # fmt: skip
