"""Input attribution (captum) and direct logit attribution of a prediction."""

from __future__ import annotations

from probes.common import run_probe
from workbench import attribution, figures
from workbench.runs import run_prompt

DEFAULTS = {
    "prompt": "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a",
    "target": "",
    "contrast": "",
    "continuation": "",
    "methods": list(attribution.METHODS),
    "baseline": "zeros",
    "steps": 32,
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--target", help="target token (default: the model's prediction)")
    p.add_argument("--contrast", help="token B: attribute logit(target) - logit(B)")
    p.add_argument("--continuation", help="attribute a continuation of several tokens instead")
    p.add_argument("--method", action="append", dest="methods", choices=attribution.METHODS)
    p.add_argument("--baseline", choices=attribution.BASELINES)
    p.add_argument("--steps", type=int)


def body(model, s, out):
    predicted = int(run_prompt(model, s["prompt"]).logits[-1].argmax())
    if s["continuation"]:
        target = attribution.parse_answer(model, "continuation", predicted, s["continuation"])
    elif s["contrast"]:
        target = attribution.parse_answer(model, "contrast", predicted, s["target"], s["contrast"])
    elif s["target"]:
        target = attribution.parse_answer(model, "typed token", predicted, s["target"])
    else:
        target = attribution.Answer((predicted,))
    for method in s["methods"]:
        a = attribution.input_attribution(model, s["prompt"], target, method=method, baseline=s["baseline"], steps=int(s["steps"]))
        name = "input-" + method.replace(" ", "-").replace("×", "x")
        out.figure(figures.input_attribution_tokens(a), name)
        if len(a.answer_labels) > 1:
            out.figure(figures.input_attribution_matrix(a), name + "-matrix")
        out.data(name, a, a.rows())
    c = attribution.component_attribution(model, s["prompt"], target.tokens[0], target.wrong)
    out.figure(figures.component_bars(c), "dla-components")
    out.figure(figures.head_attribution_heatmap(c), "dla-heads")
    out.data("dla", c, c.rows())


def main(argv=None) -> int:
    return run_probe("attribution", __doc__, add_arguments, DEFAULTS, body, argv)
