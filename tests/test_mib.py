"""MIB circuit JSON: the graph's names as MIB's own Graph.from_model enumerates them, and a round trip that scores the same."""

import json

import pytest
import torch

from workbench import edges, engine, families, methods, mib, tasks
from workbench.errors import InputError
from workbench.model import load_model


@pytest.fixture(scope="module")
def pairs(circuits):
    return methods.prepare_all(circuits, tasks.induction_pairs(circuits, 2))


def _mib_edge_names(cfg: dict) -> set[str]:
    """The edge names of MIB's eap.graph.Graph.from_model (hannamw/EAP-IG, src/eap/graph.py), its loop transcribed."""
    names, stream = set(), ["input"]
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{h}" for h in range(cfg["n_heads"])]
        mlp = f"m{layer}"
        names |= {f"{node}->{head}<{qkv}>" for node in stream for head in heads for qkv in "qkv"}
        if cfg["parallel_attn_mlp"]:
            names |= {f"{node}->{mlp}" for node in stream}
            stream = [*stream, *heads, mlp]
        else:
            stream = stream + heads
            names |= {f"{node}->{mlp}" for node in stream}
            stream = [*stream, mlp]
    return names | {f"{node}->logits" for node in stream}


def test_the_graph_has_mibs_nodes_and_edges(circuits, tmp_path):
    w = engine.weights_of(circuits)
    doc = mib.from_edges(w, []).document()
    assert doc["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 128}
    assert set(doc["edges"]) == _mib_edge_names(doc["cfg"])
    assert set(doc["nodes"]) == {"input", "logits"} | {f"a{L}.h{H}" for L in range(2) for H in range(4)} | {"m0", "m1"}
    neox = engine.weights_of(load_model(str(families.build("gpt_neox", tmp_path / "neox", kv_heads=4))))
    doc = mib.from_edges(neox, []).document()
    assert doc["cfg"]["parallel_attn_mlp"] and set(doc["edges"]) == _mib_edge_names(doc["cfg"])


def test_an_exported_circuit_read_back_scores_the_same_faithfulness(circuits, pairs, tmp_path):
    w = pairs[0].weights
    effects = edges.eap(circuits, pairs)
    for top in (0, 5, 40):
        circuit = mib.from_effects(w, effects, top)
        assert circuit.size == top
        path = circuit.write(tmp_path / f"circuit-{top}.json")
        back = mib.read(path, w)
        assert torch.equal(back.in_graph, circuit.in_graph) and torch.allclose(back.scores, circuit.scores)
        for pair in pairs:
            before = edges.circuit_faithfulness(pair, list(circuit.edges), circuit.keep)
            after = edges.circuit_faithfulness(pair, list(back.edges), back.keep)
            assert torch.equal(before, after)
    # the top edges by |score| are the ones kept
    doc = json.loads((tmp_path / "circuit-5.json").read_text())
    kept = sorted((abs(v["score"]) for v in doc["edges"].values() if v["in_graph"]), reverse=True)
    dropped = max(abs(v["score"]) for v in doc["edges"].values() if not v["in_graph"])
    assert len(kept) == 5 and kept[-1] >= dropped


def test_a_hand_written_mib_file_is_the_circuit_it_names(circuits, pairs, tmp_path):
    """A file as MIB writes it (only some edges listed, MIB's names): the same faithfulness as those edges chosen directly."""
    w = pairs[0].weights
    named = ["input->a0.h1<v>", "a0.h1->a1.h2<k>", "a1.h2->logits", "input->a1.h2<q>", "input->a1.h2<v>"]
    doc = {"cfg": mib.graph_cfg(w), "nodes": {}, "edges": {n: {"score": 1.0, "in_graph": True} for n in named}}
    circuit = mib.read(doc, w)
    chosen = [e for e in edges.edges_of(w) if mib.edge_name(e) in named]
    assert len(chosen) == 5 and circuit.size == 5
    labels = {e.label for e in chosen}
    assert "L0H1 → L1H2.k" in labels and "embed → L0H1.v" in labels
    direct = mib.from_edges(w, chosen)
    assert torch.equal(circuit.in_graph, direct.in_graph)
    assert torch.equal(edges.circuit_faithfulness(pairs[0], list(circuit.edges), circuit.keep),
                       edges.circuit_faithfulness(pairs[0], chosen, torch.ones(1, 5, dtype=torch.bool)))  # fmt: skip


@pytest.mark.parametrize(
    "doc, says",
    [
        ({"cfg": {"n_layers": 12, "n_heads": 4}, "nodes": {}, "edges": {}}, "n_layers = 12"),
        ({"cfg": {}, "nodes": {}, "edges": {"a5.h0->m9": {"score": 1, "in_graph": True}}}, "does not have"),
        ({"edges": {}}, "'cfg', 'nodes' and 'edges'"),
    ],
)
def test_a_circuit_that_does_not_fit_is_refused_in_one_line(circuits, doc, says):
    with pytest.raises(InputError, match=says):
        mib.read(doc, engine.weights_of(circuits))


def test_grouped_query_models_are_refused_with_the_reason(tmp_path):
    w = engine.weights_of(load_model(str(families.build("llama", tmp_path / "llama"))))
    with pytest.raises(InputError, match="key/value heads"):
        mib.from_edges(w, [])
