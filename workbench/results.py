"""A view's result as the facade hands it out (workbench/api.py): figure, table, notebook display, JSON both ways.

`Result` wraps the analysis module's own frozen result (`data`) and a `focus` (the head, SAE or
feature the default figure shows). `KINDS` is the table of what the facade shows for each result
type: its view, its figures by name (the view's figure functions, loaded when first drawn, so that
importing the facade loads no plotly) and its table. JSON is the probes' format (export.plain of
the result; a graph as its node-link document) inside {"type", "focus", "data", "dtypes"}, and
`from_json` reads both that and a probe's bare data file, whose type it finds by the field names.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import attention as attention_analysis
from workbench import attribution as attribution_analysis
from workbench import export, notebook, patching
from workbench import features as features_analysis
from workbench import graph as graph_analysis
from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench import lens as lens_analysis
from workbench.errors import InputError


def parse_head(head) -> tuple[int, int]:
    """(layer, head) of "1.2", "L1H2" or (1, 2), not yet checked against a model."""
    if isinstance(head, str):
        parts = head.strip().upper().replace("L", "").replace("H", ".").split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InputError(f"a head is written LAYER.HEAD, e.g. '1.2' (or 'L1H2'), got {head!r}")
        head = (int(parts[0]), int(parts[1]))
    if not (isinstance(head, tuple | list) and len(head) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in head)):
        raise InputError(f"a head is written LAYER.HEAD, e.g. '1.2' (or a pair (1, 2)), got {head!r}")
    return int(head[0]), int(head[1])


# ---- what the facade shows of each result type -----------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How the facade shows one type of analysis result: its view, its figures by name (the first is the default), its table."""

    view: str
    figures: dict[str, Callable]  # name -> fn(result, focus) -> plotly Figure
    rows: Callable  # fn(result, focus) -> list[dict]


def _pattern_figure(p, focus):
    from workbench.figures import attention as draw

    return draw.pattern_heatmap(p, *focus["head"]) if "head" in focus else draw.pattern_grid(p)[0]


def _pattern_rows(p, focus):
    if "head" in focus:
        return attention_analysis.pattern_rows(p, *focus["head"])
    layers, heads, _ = p.shape
    return [
        dict(layer=layer, head=h, **row)
        for layer in range(layers)
        for h in range(heads)
        for row in attention_analysis.pattern_rows(p, layer, h)
    ]


def _grid(p, focus):
    from workbench.figures import attention as draw

    return draw.pattern_grid(p)[0]


def _draw(module: str, name: str, *args) -> Callable:
    """fn(result, focus) calling workbench.figures.<module>.<name>(result, *args): figure modules load when first drawn."""

    def figure(result, focus):

        return getattr(importlib.import_module(f"workbench.figures.{module}"), name)(result, *args)

    return figure


def _in_list(module: str, name: str, *args) -> Callable:
    """The same for a figure function that takes a list of results (the lens's lines)."""

    def figure(result, focus):

        return getattr(importlib.import_module(f"workbench.figures.{module}"), name)([result], *args)

    return figure


def _sae(pf, focus) -> str:
    return focus.get("sae") or next(iter(pf.acts))


def _features_of_sae(pf, focus):
    from workbench.figures import features as draw

    hook = _sae(pf, focus)
    chosen, values = pf.strongest(hook)
    return draw.token_feature_heatmap(pf, hook, chosen, values)


def _one_feature(pf, focus):
    from workbench.figures import features as draw

    hook = _sae(pf, focus)
    if "feature" not in focus:
        raise InputError("name the feature to draw: figure('feature', feature=12)")
    return draw.feature_across_prompt(pf, hook, focus["feature"])


def _feature_rows(pf, focus):
    hooks = [focus["sae"]] if "sae" in focus else list(pf.acts)
    return [row for h in hooks for row in pf.rows(h, [focus["feature"]] if "feature" in focus else pf.strongest(h)[0])]


def _rows(result, focus):
    return result.rows()


def _by_head(g, focus):
    from workbench.figures import graph as draw

    return draw.graph_figure(g, by_head=True)


KINDS: dict[type, Kind] = {
    attention_analysis.Patterns: Kind("attention", {"pattern": _pattern_figure, "grid": _grid}, _pattern_rows),
    attention_analysis.HeadTypes: Kind("head_types", {"scores": _draw("attention", "head_types_heatmap")}, _rows),
    lens_analysis.LensResult: Kind(
        "lens",
        {
            "lens": _draw("lens", "lens_heatmap"),
            "stats": _in_list("lens", "lens_stats_lines"),
            "tracked": _in_list("lens", "lens_tracked_lines", -1),
        },
        _rows,
    ),
    patching.PatchResult: Kind("patch", {"heatmap": _draw("patching", "patching_heatmap")}, _rows),
    patching.DatasetPatchResult: Kind(
        "patch",
        {"heatmap": _draw("patching", "patching_heatmap")},
        lambda r, focus: [
            dict(cell=i, mean=float(m), std=float(s)) for i, (m, s) in enumerate(zip(r.mean.flatten(), r.std.flatten(), strict=True))
        ],
    ),
    attribution_analysis.InputAttribution: Kind(
        "attribute",
        {"tokens": _draw("attribution", "input_attribution_tokens"), "matrix": _draw("attribution", "input_attribution_matrix")},
        _rows,
    ),
    attribution_analysis.ComponentAttribution: Kind(
        "attribute",
        {"components": _draw("attribution", "component_bars"), "heads": _draw("attribution", "head_attribution_heatmap")},
        _rows,
    ),
    graph_analysis.Graph: Kind("graph", {"graph": _draw("graph", "graph_figure"), "by head": _by_head}, _rows),
    iv.Intervention: Kind(
        "intervene",
        {
            "next token": _draw("intervene", "next_token"),
            "kl": _draw("intervene", "kl_by_position"),
            "continuations": _draw("intervene", "continuations"),
        },
        _rows,
    ),
    ivs.AblationSweep: Kind("intervene", {"heads": _draw("intervene", "head_ablation")}, lambda s, focus: s.ranked()),
    features_analysis.PromptFeatures: Kind(
        "features", {"strongest": _draw("features", "strongest_by_layer"), "sae": _features_of_sae, "feature": _one_feature}, _feature_rows
    ),
}


def _focus_of(model_dims: tuple[int, int] | None, focus: dict) -> dict:
    """Focus given to figure() as the user types it ("1.2") made into the result's own values."""
    out = dict(focus)
    if "head" in out:
        out["head"] = parse_head(out["head"])
        if model_dims is not None:
            attention_analysis.check_head(*model_dims, *out["head"])
    return out


@dataclass(frozen=True, eq=False)
class Result:
    """An analysis result (`data`, the analysis module's own frozen dataclass) with what a notebook wants of it.

    Attributes not found here are the data's (`r.values`, `r.labels`, `r.ranked()`), so a Result reads like the
    analysis's result. `focus`: what the default figure and the table show (a head, an SAE, a feature).
    """

    data: object
    focus: dict = field(default_factory=dict)

    def __post_init__(self):
        if type(self.data) not in KINDS:
            raise TypeError(f"the facade has no view of {type(self.data).__name__}")

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("data", "focus"):  # copy and pickle probe dunders before the fields exist
            raise AttributeError(name)
        return getattr(self.data, name)

    @property
    def kind(self) -> Kind:
        return KINDS[type(self.data)]

    @property
    def view(self) -> str:
        return self.kind.view

    @property
    def figure_names(self) -> list[str]:
        return list(self.kind.figures)

    def _dims(self) -> tuple[int, int] | None:
        pattern = getattr(self.data, "pattern", None)
        return tuple(pattern.shape[:2]) if isinstance(pattern, torch.Tensor) else None

    def figure(self, which: str | None = None, **focus):
        """The view's figure (plotly): `which` one of `figure_names` (default the first), `focus` e.g. head="1.2"."""
        figures = self.kind.figures
        if which is not None and which not in figures:
            raise InputError(f"the {self.view} view draws {', '.join(map(repr, figures))}, not {which!r}")
        return figures[which or next(iter(figures))](self.data, _focus_of(self._dims(), {**self.focus, **focus}))

    def to_pandas(self):
        """The result's table (the rows its CSV export writes), as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.kind.rows(self.data, self.focus))

    def _repr_mimebundle_(self, include=None, exclude=None):
        return notebook.inline(self.figure())._repr_mimebundle_(include, exclude)

    def _repr_html_(self) -> str:
        return notebook.bundle(self.figure())["text/html"]

    def __repr__(self) -> str:
        return f"<wb.{self.view} result: {type(self.data).__name__}{f' focus={self.focus}' if self.focus else ''}; .figure(), .to_pandas()>"

    # ---- JSON: the probes' format, with the type and focus around it ----
    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON (`from_json` reads it back); written to `path` when given."""
        data = self.data.document() if isinstance(self.data, graph_analysis.Graph) else self.data
        focus = {k: list(v) if isinstance(v, tuple) else v for k, v in self.focus.items()}
        doc = {"type": _type_name(type(self.data)), "focus": focus, "data": export.plain(data), "dtypes": _dtypes(self.data)}
        text = json.dumps(doc, indent=1, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path | dict) -> Result:
        """A result from `to_json`'s text or file, or from a probe's data file (out/<probe>/<name>.json)."""
        return from_json(source)


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def from_json(source: str | Path | dict) -> Result | dict[str, Result]:
    """The Result written by `Result.to_json` or by a probe (its data file); a probe's folder (or its manifest.json) gives
    {file name: Result} for every data file in its manifest that holds a result."""
    if isinstance(source, dict):
        doc = source
    else:
        text = str(source)
        path = Path(text) if len(text) < 4096 and not text.lstrip().startswith(("{", "[")) else None
        if path is not None and (path.is_dir() or path.name == "manifest.json"):
            return _probe_folder(path if path.is_dir() else path.parent)
        if path is not None and not path.is_file():
            raise InputError(f"no JSON file at {path}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8") if path is not None else text)
        except json.JSONDecodeError as err:
            raise InputError(f"not JSON ({err.msg} at line {err.lineno}): give a result's file or text") from None
    if not isinstance(doc, dict):
        raise InputError("this JSON is not a result (a list or a number, such as a probe's table or one tensor)")
    focus = {}
    dtypes = {}
    if {"type", "focus", "data"} <= set(doc) <= {"type", "focus", "data", "dtypes"}:
        types_ = {_type_name(t): t for t in KINDS}
        if doc["type"] not in types_:
            raise InputError(f"unknown result type {doc['type']!r}: this workbench reads {', '.join(sorted(types_))}")
        cls, data, focus, dtypes = types_[doc["type"]], doc["data"], dict(doc["focus"] or {}), doc.get("dtypes") or {}
        if "head" in focus:
            focus["head"] = parse_head(focus["head"])
    else:
        cls, data = _guess(doc), doc
    if cls is graph_analysis.Graph:
        return Result(_graph_of(data), focus)
    return Result(_rebuild(cls, data, dtypes), focus)


def _probe_folder(folder: Path) -> dict[str, Result]:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"{folder} has no manifest.json: give a probe's output folder or one of its data files")
    files = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    out = {}
    for name in files:
        if name.endswith(".json"):
            try:
                out[name.removesuffix(".json")] = from_json(folder / name)
            except InputError:  # a table or a tensor, not a result
                continue
    return out


GRAPH_DOCUMENT = {"directed", "multigraph", "nodes", "links", "metadata"}


def _guess(doc: dict) -> type:
    """The result type whose fields are exactly the document's keys (a probe's data file carries no type)."""
    if set(doc) == GRAPH_DOCUMENT:
        return graph_analysis.Graph
    found = [t for t in KINDS if t is not graph_analysis.Graph and {f.name for f in dataclasses.fields(t)} == set(doc)]
    if len(found) != 1:
        raise InputError(
            f"this JSON is not a result the facade reads (keys {sorted(doc)[:6]}...): give a probe's data file or a to_json file"
        )
    return found[0]


def _nan(value):
    """JSON's null (export.plain writes NaN so) back to NaN, inside nested lists."""
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return value


def _dtypes(value, path: str = "") -> dict[str, str]:
    """{path: dtype} of every tensor in a result ("scores.induction"): JSON's lists do not say int64 from float32 when empty."""
    if isinstance(value, torch.Tensor):
        return {path: str(value.dtype).removeprefix("torch.")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, dict):
        items = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {}
    return {p: d for name, v in items for p, d in _dtypes(v, f"{path}.{name}" if path else name).items()}


def _rebuild(hint, value, dtypes: dict[str, str] | None = None, path: str = ""):
    """`value` (plain JSON) as the type `hint` names: dataclasses field by field, tensors from nested lists (of the dtype
    recorded at their `path`, else as torch infers it), tuples. export.plain wrote NaN as null: a float comes back NaN."""
    dtypes = dtypes or {}

    def at(name) -> str:
        return f"{path}.{name}" if path else str(name)

    if hint is float:
        return math.nan if value is None else float(value)
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(value, dict):  # a union of dataclasses (edit_specs.EditSpec): the one whose fields match
            options = [
                a for a in options if dataclasses.is_dataclass(a) and set(value) <= {f.name for f in dataclasses.fields(a)}
            ] or options
        return _rebuild(options[0], value, dtypes, path)
    if hint is torch.Tensor:
        dtype = getattr(torch, dtypes[path]) if path in dtypes else None
        return torch.tensor(_nan(value), dtype=dtype)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        known = {f.name for f in dataclasses.fields(hint) if f.init}
        return hint(**{k: _rebuild(hints[k], v, dtypes, at(k)) for k, v in value.items() if k in known})
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_rebuild(args[0], v, dtypes, at(i)) for i, v in enumerate(value))
        return tuple(_rebuild(a, v, dtypes, at(i)) for i, (a, v) in enumerate(zip(args, value, strict=True))) if args else tuple(value)
    if origin is list:
        (arg,) = typing.get_args(hint) or (typing.Any,)
        return [_rebuild(arg, v, dtypes, at(i)) for i, v in enumerate(value)]
    if origin is dict:
        _, arg = typing.get_args(hint) or (typing.Any, typing.Any)
        return {k: _rebuild(arg, v, dtypes, at(k)) for k, v in value.items()}
    return value


def _graph_of(doc: dict) -> graph_analysis.Graph:
    """A Graph from its node-link document (Graph.document, what the graph probe writes)."""

    def node(node_id: str) -> tuple[int, int]:  # "p{point}@{position}" (graph.node_id)
        point, position = node_id[1:].split("@")
        return int(point), int(position)

    meta = doc["metadata"]
    edges = tuple(
        graph_analysis.Edge(
            kind=e["kind"], layer=e["layer"], source=node(e["source"]), destination=node(e["target"]),
            importance=e["importance"], weight=e["weight"], flow=e["flow"], heads=tuple(e["heads"]),
        )
        for e in doc["links"]
    )  # fmt: skip
    return graph_analysis.Graph(
        model=meta["model"], prompt=meta["prompt"], tokens=torch.tensor(meta["tokens"]), labels=meta["labels"], points=meta["points"],
        position=meta["position"], threshold=meta["threshold"], answer=meta["answer"], answer_label=meta["answer_label"],
        wrong=meta["wrong"], wrong_label=meta["wrong_label"], nodes=tuple(node(n["id"]) for n in doc["nodes"]), edges=edges,
        node_flow={node(n["id"]): n["flow"] for n in doc["nodes"]}, error=meta["decomposition_error"], provenance=meta["provenance"],
    )  # fmt: skip
