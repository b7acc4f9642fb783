"""circuit-tracer's graph files: the graph JSON and one feature detail file per feature, as its viewer reads them.

circuit-tracer's viewer (and Neuronpedia's) opens a graph JSON (`export`) and, for
the feature a user clicks, fetches that feature's detail file: `features/<scan>/<index>.json`, where
`index` is the node's `feature` field, the Cantor pairing of (layer, feature). A detail file holds
what the viewer draws beside the graph (its frontend/feature_models.py and feature_examples/*.js):
- `examples_quantiles`: lists of held-out contexts, each a window of tokens with the feature's
  activation on every one (`tokens`, `tokens_acts_list`) and the token it peaks on
  (`train_token_ind`); the first list is the top activations, the others a few contexts drawn from
  bands of its non-zero activations, from the strongest band down;
- `top_logits` / `bottom_logits`: the tokens its decoder row promotes and suppresses through the
  unembedding;
- `act_min`, `act_max`, `quantile_values` (the activation at each percentile 1-100 of its non-zero
  activations: the viewer places the graph's activation among them), `histogram` (counts of its
  non-zero activations in equal bins from act_min to act_max), `activation_frequency` (the share of
  held-out tokens where it is active).

The held-out data are the transcoders' (train/transcoders.heldout): English windows, or the
circuits model's copying sequences. `write` puts the graph JSON, the viewer's `graph-metadata.json`
and the feature files in one folder, with the scan written as `./features/<scan>` so the viewer
reads the files from that folder without asking the Hugging Face hub (a plain scan name makes it
look there first).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workbench import attribution_graph as ag
from workbench.attribution_graph import AttributionGraph
from workbench.errors import InputError
from workbench.model import LoadedModel
from workbench.replacement_model import freeze
from workbench.tokens import token_labels
from workbench.transcoder import Transcoder

BEFORE, AFTER = 16, 4  # tokens of context shown before and after the token an example peaks on
TOP = 10  # top-activation examples
BANDS = 3  # bands of non-zero activations below the top, each with SAMPLES examples
SAMPLES = 5
BINS = 50  # histogram bins
ROWS = 64  # held-out rows read


# ---- export: circuit-tracer's graph JSON ------------------------------------------------------------------


def cantor(x: int, y: int) -> int:
    """The Cantor pairing of (layer, feature): a feature's index in circuit-tracer's files."""
    return (x + y) * (x + y + 1) // 2 + y


def export(g: AttributionGraph, slug: str, scan: str, supernodes: list[list[str]] = ()) -> dict:
    """The graph in circuit-tracer's JSON (frontend/graph_models.py: metadata, qParams, nodes, links), pruned.

    `supernodes`: [[name, node_id, ...], ...] as the viewer's qParams keeps them."""
    if not slug or not all(c.isalnum() or c in "-_" for c in slug):
        raise InputError(f"a graph's slug is letters, digits, - and _, got {slug!r}")
    keep = g.node_mask.nonzero()[:, 0].tolist()
    nodes = []
    for i in keep:
        k, layer, pos, f = g.where(i)
        cum = float(g.cumulative[i])  # circuit-tracer's 'influence': the cumulative share up to this node
        if k == "feature":
            node = dict(node_id=g.node_id(i), feature=cantor(layer, f), layer=str(layer), ctx_idx=pos, feature_type="cross layer transcoder",
                        jsNodeId=f"{layer}_{f}-0", clerp=g.label(i), influence=cum, activation=float(g.activations[i]))  # fmt: skip
        elif k == "error":
            node = dict(node_id=g.node_id(i), feature=-1, layer=str(layer), ctx_idx=pos, feature_type="mlp reconstruction error",
                        jsNodeId=f"{layer}_-1-{pos}", clerp=g.label(i), influence=cum, activation=None)  # fmt: skip
        elif k == "token":
            node = dict(node_id=g.node_id(i), feature=pos, layer="E", ctx_idx=pos, feature_type="embedding",
                        jsNodeId=f"E_{f}-{pos}", clerp=g.label(i), influence=cum, activation=None)  # fmt: skip
        else:
            j = i - (g.n_nodes - g.n_logits)
            p = float(g.logit_probs[j])
            node = dict(node_id=g.node_id(i), feature=f, layer=str(g.n_layers + 1), ctx_idx=pos, feature_type="logit",
                        jsNodeId=f"L_{f}-{pos}", clerp=f'Output "{g.logit_labels[j]}" (p={p:.3f})', influence=cum, activation=None,
                        token_prob=p, is_target_logit=j == 0)  # fmt: skip
        node.setdefault("token_prob", 0.0)
        node.setdefault("is_target_logit", False)
        node.update(run_idx=0, reverse_ctx_idx=0)
        nodes.append(node)
    kept = set(keep)
    dst, src = g.edge_mask.nonzero(as_tuple=True)
    links = [
        dict(source=g.node_id(s), target=g.node_id(t), weight=float(g.adjacency[t, s]))
        for t, s in zip(dst.tolist(), src.tolist(), strict=True)
        if s in kept and t in kept
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": list(g.labels),
            "prompt": g.prompt,
            "node_threshold": g.config.node_threshold,
            "schema_version": 1,
            "info": {
                "creator_name": "GPT interpretability workbench",
                "generator": {"name": "workbench.attribution_graph"},
                "replacement_score": g.replacement_score,
                "completeness_score": g.completeness_score,
            },
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [list(s) for s in supernodes],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


def feature_details(model: LoadedModel, g: AttributionGraph, tcs: dict[int, Transcoder] | None = None, k: int = 10) -> dict[str, dict]:
    """node_id -> a feature detail file (circuit-tracer's frontend reads one per feature): its activation on this
    prompt at every position and the tokens its decoder row promotes and suppresses through the unembedding."""
    tcs = ag.transcoders_for(model, tcs)
    w = ag.engine_weights(model)
    fz = freeze(w, g.tokens.to(model.device))
    out = {}
    for i in g.node_mask[: g.n_features].nonzero()[:, 0].tolist():
        layer, _pos, f = g.features[i].tolist()
        tc = tcs[layer]
        with torch.no_grad():
            acts = tc.encode(fz.mlp_in[layer])[:, f].float().cpu()  # (pos,)
            effect = (tc.total_row(f).to(w.W_U) @ w.W_U).float().cpu()  # (d_vocab,)
        up, down = effect.topk(k), (-effect).topk(k)
        out[g.node_id(i)] = {
            "index": cantor(layer, f),
            "layer": layer,
            "feature": f,
            "act_max": float(acts.max()),
            "activations": acts.tolist(),
            "top_logits": token_labels(model.tokenizer, up.indices.tolist()),
            "top_logit_values": up.values.tolist(),
            "bottom_logits": token_labels(model.tokenizer, down.indices.tolist()),
            "bottom_logit_values": (-down.values).tolist(),
        }
    return out


# ---- the feature files ----------------------------------------------------------------------------------


def process_token(token: str) -> str:
    """A token as circuit-tracer's viewer writes it: newline, tab and carriage return made visible."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _activations(model: LoadedModel, tcs: dict[int, Transcoder], wanted: dict[int, list[int]]):
    """(rows (n, pos), valid (n, pos) bool, {layer: (n, pos, len(wanted[layer])) activations}) on the held-out rows."""
    from workbench.train.transcoders import heldout, io_of

    w = ag.engine_weights(model)
    name, rows, _ = heldout(model)
    rows = rows[:ROWS]
    bos = model.bos_id if model.bos_id is not None else -1
    valid = rows != bos  # BOS and the padding of the last window (sae_quality.windows pads with BOS) are no text
    valid[:, 0] = False
    acts = {layer: [] for layer in wanted}
    with torch.no_grad():
        for s in range(0, len(rows), 16):
            io = io_of(w, rows[s : s + 16].to(model.device))
            for layer, feats in wanted.items():
                a = tcs[layer].encode(io[layer][0])[..., torch.tensor(feats, device=model.device)]  # (b, pos, n_f)
                acts[layer].append(a.float().cpu())
    out = {layer: torch.cat(a) * valid[..., None] for layer, a in acts.items()}
    return name, rows, valid, out


def _example(model: LoadedModel, rows: torch.Tensor, acts: torch.Tensor, r: int, p: int, repeated: bool) -> dict:
    """One context: tokens from p - BEFORE to p + AFTER of row r (BOS left out), the activation on each."""
    lo, hi = max(1, p - BEFORE), min(rows.shape[1], p + AFTER + 1)
    ids = rows[r, lo:hi].tolist()
    return {
        "tokens_acts_list": [round(float(v), 6) for v in acts[r, lo:hi]],
        "train_token_ind": p - lo,
        "is_repeated_datapoint": repeated,
        "tokens": [process_token(model.tokenizer.decode([i])) for i in ids],
    }


def feature_file(model: LoadedModel, rows: torch.Tensor, valid: torch.Tensor, acts: torch.Tensor, tc: Transcoder, layer: int,
                 feature: int, transcoder_id: str, seed: int = 0) -> dict:  # fmt: skip
    """One feature's detail file from its activations `acts` (n, pos) on the held-out `rows` (module doc)."""
    flat = acts.flatten()
    order = flat.argsort(descending=True)
    positive = flat[order] > 0
    n_pos = int(positive.sum())
    shown: list[tuple[int, int]] = []  # (row, position) of the examples so far: one whose window overlaps is drawn faded

    def examples(indices) -> list[dict]:
        out = []
        for i in indices:
            r, p = divmod(int(i), acts.shape[1])
            repeated = any(r == r2 and abs(p - p2) <= BEFORE + AFTER for r2, p2 in shown)
            out.append(_example(model, rows, acts, r, p, repeated))
            shown.append((r, p))
        return out

    quantiles = [{"quantile_name": "Top activations", "examples": examples(order[: min(TOP, n_pos)].tolist())}]
    values = flat[order[:n_pos]]  # (n_pos,) descending
    gen = torch.Generator().manual_seed(seed)
    rest = order[min(TOP, n_pos) : n_pos]
    for b, band in enumerate(rest.tensor_split(BANDS) if len(rest) else []):
        if len(band):
            pick = band[torch.randperm(len(band), generator=gen)[:SAMPLES].sort().values]  # strongest first: band is in descending order
            lo, hi = float(flat[band[-1]]), float(flat[band[0]])
            name = f"Band {b + 1} of {BANDS} below the top: activations {lo:.3g}-{hi:.3g}"
            quantiles.append({"quantile_name": name, "examples": examples(pick.tolist())})
    act_max = float(values[0]) if n_pos else 0.0
    if n_pos:
        qv = torch.quantile(values.double(), torch.linspace(0.01, 1.0, 100, dtype=torch.float64)).float().tolist()
        hist = torch.histc(values, bins=BINS, min=0.0, max=act_max).tolist()
    else:
        qv, hist = [0.0] * 100, [0.0] * BINS
    w = ag.engine_weights(model)
    with torch.no_grad():
        effect = (tc.total_row(feature).to(w.W_U) @ w.W_U).float().cpu()  # (d_vocab,) what it writes, through the unembedding
    k = min(10, len(effect))
    return {
        "transcoder_id": transcoder_id,
        "index": cantor(layer, feature),
        "examples_quantiles": quantiles,
        "top_logits": [process_token(model.tokenizer.decode([i])) for i in effect.topk(k).indices.tolist()],
        "bottom_logits": [process_token(model.tokenizer.decode([i])) for i in (-effect).topk(k).indices.tolist()],
        "act_min": 0.0,
        "act_max": act_max,
        "quantile_values": qv,
        "histogram": hist,
        "activation_frequency": n_pos / max(1, int(valid.sum())),
    }


def feature_files(model: LoadedModel, g: AttributionGraph, tcs: dict[int, Transcoder] | None = None) -> dict[int, dict]:
    """{index: detail file} for every feature node kept by the graph's pruning (index: the node's `feature`, Cantor(layer, feature))."""
    tcs = ag.transcoders_for(model, tcs)
    kept = g.node_mask[: g.n_features].nonzero()[:, 0].tolist()
    wanted: dict[int, list[int]] = {}
    for i in kept:
        layer, _pos, f = g.features[i].tolist()
        if f not in wanted.setdefault(layer, []):
            wanted[layer].append(f)
    if not wanted:
        return {}
    _name, rows, valid, acts = _activations(model, tcs, wanted)
    out = {}
    for layer, feats in wanted.items():
        tc = tcs[layer]
        tid = tc.meta.get("model_name", "") or f"{model.info.name}/{tc.hook_name}"
        for j, f in enumerate(feats):
            out[cantor(layer, f)] = feature_file(model, rows, valid, acts[layer][..., j], tc, layer, f, tid)
    return out


def write(folder: str | Path, model: LoadedModel, g: AttributionGraph, slug: str, scan: str, supernodes: list[list[str]] = (),
          tcs: dict[int, Transcoder] | None = None) -> list[Path]:  # fmt: skip
    """The graph JSON `<slug>.json`, `graph-metadata.json` (the viewer's list of graphs) and `features/<scan>/<index>.json`
    in `folder`; returns the paths written. Serve it with circuit-tracer's `serve(data_dir=folder, features_dir=folder / "features")`."""
    if not scan or not all(c.isalnum() or c in "-_." for c in scan):
        raise InputError(f"a scan name is letters, digits, '-', '_' and '.', got {scan!r}")
    folder = Path(folder)
    doc = export(g, slug, f"./features/{scan}", supernodes)
    feature_dir = folder / "features" / scan
    feature_dir.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{slug}.json"]
    written[0].write_text(json.dumps(doc))
    listing = folder / "graph-metadata.json"
    graphs = json.loads(listing.read_text())["graphs"] if listing.is_file() else []
    graphs = [m for m in graphs if m.get("slug") != slug] + [doc["metadata"]]
    listing.write_text(json.dumps({"graphs": graphs}, indent=1))
    written.append(listing)
    for index, detail in feature_files(model, g, tcs).items():
        path = feature_dir / f"{index}.json"
        path.write_text(json.dumps(detail))
        written.append(path)
    return written
