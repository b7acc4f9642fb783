"""Input attribution (captum) and direct logit attribution of a prediction."""

from __future__ import annotations

from workbench import attribution
from workbench.figures import attribution as draw
from workbench.runs import run_prompt

from .common import run_probe

DEFAULTS = {
    "prompt": None,  # the model's example for this view (workbench/examples.py)
    "answer": "",
    "wrong": "",
    "continuation": "",
    "methods": list(attribution.METHODS),
    "baseline": "zeros",
    "steps": 32,
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--answer", "--target", dest="answer", help="the answer token (default: the model's prediction)")
    p.add_argument(
        "--wrong", "--contrast", dest="wrong", help="a wrong token: attribute the logit difference, logit(answer) - logit(wrong)"
    )
    p.add_argument("--continuation", help="attribute a continuation of several tokens instead")
    p.add_argument("--method", action="append", dest="methods", choices=attribution.METHODS)
    p.add_argument("--baseline", choices=attribution.BASELINES)
    p.add_argument("--steps", type=int)


def body(model, s, out):
    predicted = int(run_prompt(model, s["prompt"]).logits[-1].argmax())
    if s["continuation"]:
        answer = attribution.parse_answer(model, "continuation", predicted, s["continuation"])
    elif s["wrong"]:
        answer = attribution.parse_answer(model, "logit difference", predicted, s["answer"], s["wrong"])
    elif s["answer"]:
        answer = attribution.parse_answer(model, "typed token", predicted, s["answer"])
    else:
        answer = attribution.Answer((predicted,))
    for method in s["methods"]:
        print(attribution.estimate(model, s["prompt"], answer, method, int(s["steps"])).line(), flush=True)
        a = attribution.input_attribution(model, s["prompt"], answer, method=method, baseline=s["baseline"], steps=int(s["steps"]))
        name = "input-" + method.replace(" ", "-").replace("×", "x")
        out.figure(draw.input_attribution_tokens(a), name)
        if len(a.answer_labels) > 1:
            out.figure(draw.input_attribution_matrix(a), name + "-matrix")
        out.data(name, a, a.rows())
    c = attribution.component_attribution(model, s["prompt"], answer.tokens[0], answer.wrong)
    out.figure(draw.component_bars(c), "dla-components")
    out.figure(draw.head_attribution_heatmap(c), "dla-heads")
    out.data("dla", c, c.rows())


def main(argv=None) -> int:
    return run_probe("attribution", __doc__, add_arguments, DEFAULTS, body, argv)
