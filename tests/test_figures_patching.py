"""figures.patching: a sweep's normalised effect, diverging around zero, one row per layer (and head)."""

import torch

from workbench import patching, tasks
from workbench.figures import patching as draw


def _setup(model):
    tok = model.tokenizer
    return tasks.Pair(
        "apple river stone cloud apple river",
        "apple river stone lemon apple river",
        tok(" cloud")["input_ids"][0],
        tok(" lemon")["input_ids"][0],
    )


def test_signed_effects_are_diverging_and_centred_on_zero(circuits):
    r = patching.sweep(circuits, _setup(circuits), "resid_pre")
    trace = draw.patching_heatmap(r).data[0]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax and trace.zmax >= 1 and trace.colorscale[0][1] != trace.colorscale[-1][1]
    assert torch.allclose(torch.tensor(trace.z), r.values) and list(trace.y) == [f"L{i}" for i in range(circuits.info.n_layers)]


def test_per_head_and_position_sites_get_one_row_per_head(circuits):
    r = patching.sweep(circuits, _setup(circuits), "z_pos")
    trace = draw.patching_heatmap(r).data[0]
    layers, heads, pos = r.values.shape
    assert len(trace.y) == layers * heads and trace.y[heads] == "L1 H0" and len(trace.x) == pos
