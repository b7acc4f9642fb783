"""figures.attribution: signed scores diverging around zero, saliency sequential, every head's value shown."""

import torch

from workbench import attribution
from workbench.figures import attribution as draw

PROMPT = "apple river stone cloud apple river"


def _answer(model, token=" stone"):
    return attribution.parse_answer(model, "typed token", 0, token, "")


def test_signed_scores_diverge_around_zero_and_saliency_does_not(circuits):
    ig = attribution.input_attribution(circuits, PROMPT, _answer(circuits), method="integrated gradients", steps=8)
    heat, bars = draw.input_attribution_tokens(ig).data
    assert heat.zmid == 0 and heat.zmin == -heat.zmax and bars.marker.cmid == 0
    assert list(heat.z[0]) == [v for v in ig.scores[0].tolist() if v == v]  # NaN (outside the context) left out
    sal = attribution.input_attribution(circuits, PROMPT, _answer(circuits), method="saliency")
    heat = draw.input_attribution_tokens(sal).data[0]
    assert heat.zmin == 0 and heat.zmid is None


def test_per_head_heatmap_shows_the_result_values(circuits):
    c = attribution.component_attribution(circuits, PROMPT, circuits.tokenizer(" stone")["input_ids"][0])
    trace = draw.head_attribution_heatmap(c).data[0]
    assert torch.allclose(torch.tensor(trace.z), c.heads) and trace.zmid == 0 and trace.zmin == -trace.zmax
    bars = draw.component_bars(c).data[0]
    assert list(bars.x) == c.components and bars.marker.cmin == -bars.marker.cmax
