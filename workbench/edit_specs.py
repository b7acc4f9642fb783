"""The edits of an intervention, as data: `Ablate`, `Clamp` and `Steer` (each a small frozen record, an
`EditSpec`), and the `EditSet` that holds them with the reference prompts and the resample prompt.

An edit set reads and writes a compact line for the URL (`EditSet.parse` / `str`) and a mapping for JSON/YAML
spec files (`from_dict` / `to_dict`). Nothing here touches a model: interventions.check and
interventions.compile_edits turn an edit set into engine edits (edit_maps.py) with values from edit_values.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, unquote

from workbench import conventions
from workbench.errors import InputError

UNITS = ("head", "mlp", "neuron", "feature")
HOW = ("zero", "zero-whole", "mean", "resample")  # a head's two zeros: conventions.ZERO_CONVENTIONS
VECTORS = ("prompts", "feature", "file")
STEER_SITES = ("resid_pre", "resid_mid", "resid_post")
SITE_HELP = (
    "resid_pre: the stream entering the layer; resid_post: leaving it. resid_mid (between attention and MLP) is, on "
    "transformer-lens 4, the MLP's input: a vector added there reaches the MLP but not the stream that goes on. "
    f"Vectors are in the workbench's coordinates: {conventions.RESIDUAL}."
)


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
        items = [edit_line(e) for e in self.edits]
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
                    edits.append(_readedit_line(head, rest))
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


def _readedit_line(kind: str, words: list[str]) -> EditSpec:
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


def edit_line(e: EditSpec) -> str:
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
