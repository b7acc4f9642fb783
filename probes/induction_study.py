"""End-to-end study: find the induction mechanism of the circuits model by head scan, then patching,
then attribution, and write report.md with the figures."""

from __future__ import annotations

import time

from workbench import attention, attribution, patching, tasks
from workbench.figures import attention as attention_figures
from workbench.figures import attribution as attribution_figures
from workbench.figures import patching as patching_figures

from .common import run_probe

DEFAULTS = {"model": "circuits", "pairs": 16, "repeat_n": 50}


def add_arguments(p):
    p.add_argument("--pairs", type=int, help="copying prompt pairs to average the patching over (default 16)")


def body(model, s, out):
    lines = [
        f"# The induction mechanism of `{model.info.name}`\n",
        f"Model: {model.info.source} ({model.info.n_layers} layers × {model.info.n_heads} heads).\n",
    ]

    t = time.time()
    types = attention.head_types_on_repeats(model, n=min(int(s["repeat_n"]), (model.info.n_ctx - 1) // 2), seed=int(s["seed"]))
    out.figure(attention_figures.head_types_heatmap(types), "1-head-types")
    out.data("1-head-types", types, types.rows())
    ind, prev = types.ranked("induction", 1)[0], types.ranked("previous token", 1)[0]
    lines.append(
        f"\n## 1. Head scan\n\nOn {types.source}: the strongest induction head is **L{ind['layer']}H{ind['head']}** "
        f"(score {ind['score']:.3f}); the strongest previous-token head is **L{prev['layer']}H{prev['head']}** ({prev['score']:.3f}).\n\n"
        "![head types](1-head-types.png)\n"
    )
    out.timing("head scan", time.time() - t)

    t = time.time()
    pairs = tasks.induction_pairs(model, int(s["pairs"]), seed=int(s["seed"]))
    resid = patching.sweep_dataset(model, pairs, "resid_pre")
    heads = patching.sweep_dataset(model, pairs, "z")
    out.figure(patching_figures.patching_heatmap(resid), "2-patching-resid")
    out.figure(patching_figures.patching_heatmap(heads), "2-patching-heads")
    out.data("2-patching-resid", resid)
    out.data("2-patching-heads", heads)
    layer0 = resid.mean[0, :-1]
    top_pos = int(layer0.argmax())
    flat = int(heads.mean.flatten().argmax())
    p_layer, p_head = divmod(flat, model.info.n_heads)
    example = pairs[0]
    lines.append(
        f"\n## 2. Activation patching\n\n{len(pairs)} copying pairs: random words, the first four repeated; in the corrupted prompt the "
        f"earlier copy's next word is swapped, e.g.\n\n- clean: `{example.clean}`\n- corrupted: `{example.corrupted}`\n\n"
        f"Denoising the residual stream before layer 0 restores the answer most at position **{top_pos}** ({resid.labels[top_pos]!r}: "
        f"the swapped word of the earlier copy), mean {float(layer0[top_pos]):.3f}. Among heads, patching **L{p_layer}H{p_head}**'s output "
        f"restores {float(heads.mean[p_layer, p_head]):.3f} of the clean logit difference (spread {float(heads.std[p_layer, p_head]):.3f}).\n\n"
        "![residual patching](2-patching-resid.png)\n\n![head patching](2-patching-heads.png)\n"
    )
    out.timing("patching", time.time() - t)

    t = time.time()
    c = attribution.component_attribution(model, example.clean, example.answer, example.wrong)
    out.figure(attribution_figures.head_attribution_heatmap(c), "3-dla-heads")
    out.figure(attribution_figures.component_bars(c), "3-dla-components")
    out.data("3-dla", c, c.rows())
    d_flat = int(c.heads.flatten().argmax())
    d_layer, d_head = divmod(d_flat, model.info.n_heads)
    ig = attribution.input_attribution(model, example.clean, attribution.Answer((example.answer,)), steps=32)
    out.figure(attribution_figures.input_attribution_tokens(ig), "3-input-ig")
    out.data("3-input-ig", ig, ig.rows())
    ig_top = int(ig.scores[0].nan_to_num(-1e9).argmax())
    lines.append(
        f"\n## 3. Attribution\n\nDirect logit attribution of {c.metric_label} on the first clean prompt: the largest head is "
        f"**L{d_layer}H{d_head}** ({float(c.heads[d_layer, d_head]):.3f} of {c.logit:.3f}). Integrated gradients put the most weight on "
        f"position {ig_top} ({ig.labels[ig_top]!r}); completeness gap {ig.completeness_gap():.1e}.\n\n"
        "![DLA per head](3-dla-heads.png)\n\n![Integrated gradients](3-input-ig.png)\n"
    )
    out.timing("attribution", time.time() - t)

    agree = (ind["layer"], ind["head"]) == (p_layer, p_head) == (d_layer, d_head)
    lines.append(
        "\n## Conclusion\n\n"
        + (
            f"All three methods name the same head, L{ind['layer']}H{ind['head']}: it attends to the token after the earlier occurrence of "
            f"the current word (head scan), carries what the corruption destroyed (patching), and writes the answer's logit directly "
            f"(attribution); the previous-token head L{prev['layer']}H{prev['head']} feeds it."
            if agree
            else f"The methods disagree: head scan L{ind['layer']}H{ind['head']}, patching L{p_layer}H{p_head}, attribution L{d_layer}H{d_head}."
        )
        + "\n"
    )
    out.manifest["findings"] = dict(
        induction_head=[ind["layer"], ind["head"]],
        patching_head=[p_layer, p_head],
        dla_head=[d_layer, d_head],
        previous_token_head=[prev["layer"], prev["head"]],
        agree=agree,
    )
    out.text("report.md", "".join(lines))


def main(argv=None) -> int:
    return run_probe("induction-study", __doc__, add_arguments, DEFAULTS, body, argv)
