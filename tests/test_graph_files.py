"""circuit-tracer's graph files (workbench/graph_files.py): the graph JSON beside one feature detail file per feature.

What circuit-tracer's viewer reads is the reference: every feature node of the graph JSON has its file at
`features/<scan>/<node.feature>.json` (frontend/assets/feature_examples/init-feature-examples.js with a
`./` scan), each file validates against the JSON schema derived from its pydantic models
(tests/fixtures/circuit_tracer_feature_schema.json), and what the viewer computes from them holds:
one activation per token, the token an example peaks on inside it, percentiles in order. The
activations themselves are recomputed from transformer-lens's own hook (`mlp.hook_in`) on the
held-out row each example comes from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench import attribution_graph as ag
from workbench import graph_files
from workbench.errors import InputError
from workbench.runs import run_tokens
from workbench.train.transcoders import heldout
from workbench.transcoder import transcoders_of

SCHEMA = Path(__file__).parent / "fixtures" / "circuit_tracer_feature_schema.json"
GRAPH_SCHEMA = Path(__file__).parent / "fixtures" / "circuit_tracer_graph_schema.json"
PROMPT = "apple river stone cloud tiger lemon apple river stone"


@pytest.fixture(scope="module")
def written(circuits, tmp_path_factory):
    if not transcoders_of(circuits):
        pytest.skip("circuits has no transcoders")
    g = ag.build(circuits, PROMPT)
    folder = tmp_path_factory.mktemp("graph")
    paths = graph_files.write(folder, circuits, g, "copying", "circuits-tc")
    return g, folder, paths


def test_every_feature_node_has_its_file_where_the_viewer_looks(written):
    jsonschema = pytest.importorskip("jsonschema")
    _g, folder, paths = written
    doc = json.loads((folder / "copying.json").read_text())
    jsonschema.validate(doc, json.loads(GRAPH_SCHEMA.read_text()))
    scan = doc["metadata"]["scan"]
    assert scan == "./features/circuits-tc"  # a ./ scan: the viewer reads `${scan}/${featureIndex}.json` beside the page
    features = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert features
    schema = json.loads(SCHEMA.read_text())
    for node in features:
        path = folder / scan / f"{node['feature']}.json"
        assert path in paths
        detail = json.loads(path.read_text())
        jsonschema.validate(detail, schema)
        layer, f = node["jsNodeId"].split("-")[0].split("_")
        assert detail["index"] == node["feature"] == graph_files.cantor(int(layer), int(f))
    listing = json.loads((folder / "graph-metadata.json").read_text())
    assert [m["slug"] for m in listing["graphs"]] == ["copying"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in detail.items() if k != "examples_quantiles"}, schema)


def test_the_files_hold_what_the_viewer_draws_and_their_activations_are_the_models(written, circuits):
    g, folder, _paths = written
    tcs = transcoders_of(circuits)
    _name, rows, _ = heldout(circuits)
    names = [f"blocks.{layer}.mlp.hook_in" for layer in range(circuits.info.n_layers)]
    checked = 0
    for path in sorted((folder / "features" / "circuits-tc").glob("*.json")):
        d = json.loads(path.read_text())
        assert d["act_min"] == 0 <= d["act_max"] and 0 < d["activation_frequency"] <= 1
        qv = d["quantile_values"]
        assert len(qv) == 100 and qv == sorted(qv) and qv[-1] == pytest.approx(d["act_max"], rel=1e-5)
        assert len(d["histogram"]) == graph_files.BINS and all(h >= 0 for h in d["histogram"])
        assert len(d["top_logits"]) == len(d["bottom_logits"]) == 10 and not set(d["top_logits"]) & set(d["bottom_logits"])
        top = d["examples_quantiles"][0]
        assert top["quantile_name"] == "Top activations" and top["examples"]
        peaks = [e["tokens_acts_list"][e["train_token_ind"]] for e in top["examples"]]
        assert peaks == sorted(peaks, reverse=True) and peaks[0] == pytest.approx(d["act_max"], rel=1e-5)
        for q in d["examples_quantiles"]:
            for e in q["examples"]:
                assert len(e["tokens"]) == len(e["tokens_acts_list"]) and 0 <= e["train_token_ind"] < len(e["tokens"])
        # the strongest example recomputed from transformer-lens's hook on its held-out row
        layer, f = _uncantor(d["index"])
        e = top["examples"][0]
        row = next(r for r in range(len(rows)) if _contains(rows[r], e, circuits))
        _, cache = run_tokens(circuits, rows[row][None], names)
        acts = tcs[layer].encode(cache[names[layer]][0])[:, f]  # (pos,)
        assert float(acts.max()) == pytest.approx(e["tokens_acts_list"][e["train_token_ind"]], rel=1e-4, abs=1e-5)
        checked += 1
    kept = g.node_mask[: g.n_features].nonzero()[:, 0]
    assert checked == len({(int(g.features[i, 0]), int(g.features[i, 2])) for i in kept})  # one file per feature, not per node


def test_a_bad_scan_name_is_one_line(written, circuits, tmp_path):
    g, _folder, _paths = written
    with pytest.raises(InputError, match="scan"):
        graph_files.write(tmp_path, circuits, g, "x", "../elsewhere")


def _uncantor(z: int) -> tuple[int, int]:
    w = int(((8 * z + 1) ** 0.5 - 1) // 2)
    y = z - w * (w + 1) // 2
    return w - y, y


def _contains(row: torch.Tensor, example: dict, model) -> bool:
    ids = row.tolist()
    pieces = [graph_files.process_token(model.tokenizer.decode([i])) for i in ids]
    n = len(example["tokens"])
    return any(pieces[s : s + n] == example["tokens"] for s in range(1, len(ids) - n + 1))
