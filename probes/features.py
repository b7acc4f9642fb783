"""SAE features on a prompt (token x feature heatmaps at every SAE), dashboards of chosen features, an optional
feature intervention, and one HTML page with all of it."""

from __future__ import annotations

import time

from workbench import dashboards, features, sae
from workbench.errors import InputError
from workbench.figures import features as draw
from workbench.figures import intervene as draw_intervention
from workbench.generate import Sampling

from .common import run_probe

DEFAULTS = {
    "model": "english",
    "prompt": "The whale swam to the ship, and the captain called to the men. The whale",
    "sae": None,  # one SAE by name (hook name, or the folder's), default: all
    "sae_folder": None,
    "features": None,  # default: the strongest on the prompt's last position
    "per_position": 3,
    "clamp": None,  # a value: regenerate with the first chosen feature set to it (0 ablates) at every position
    "new_tokens": 20,
}


def add_arguments(p):
    p.add_argument("--prompt")
    p.add_argument("--sae", help="the SAE to use for dashboards (a hook name such as blocks.1.hook_resid_pre); default: every SAE")
    p.add_argument("--sae-folder", dest="sae_folder", help="an SAE folder in SAELens's format (cfg.json + sae_weights.safetensors)")
    p.add_argument("--features", type=int, nargs="+", help="features to show dashboards of (default: the 3 strongest at the last position)")
    p.add_argument("--per-position", type=int, dest="per_position", help="features per position in the heatmap (default 3)")
    p.add_argument("--clamp", type=float, help="regenerate with the first feature set to this value (0 ablates) at every position")
    p.add_argument("--new-tokens", type=int, dest="new_tokens", help="tokens to generate for --clamp (default 20)")


def body(model, s, out):
    folders = tuple(s["sae_folder"] if isinstance(s["sae_folder"], list) else [s["sae_folder"]]) if s.get("sae_folder") else ()
    saes = sae.sae_set(model, folders)
    if not saes:
        raise InputError(f"{model.info.name} has no SAEs: give --sae-folder, or train them with `python -m workbench.train sae`")
    names = list(saes)
    if s.get("sae"):
        if s["sae"] not in saes:
            raise InputError(f"no SAE {s['sae']!r}; this model has {', '.join(names)}")
        names = [s["sae"]]
    elif folders:
        names = [n for n in names if n.startswith(sae.USER)]
    t = time.time()
    pf = features.prompt_features_of(model, s["prompt"], folders)
    out.timing("prompt features", time.time() - t)
    overview = draw.strongest_by_layer(pf)
    out.figure(overview, "features-every-layer")
    figures = [overview]
    summary = {}
    for name in names:
        chosen, values = pf.strongest(name, int(s["per_position"]))
        label = dashboards.safe(name)
        if chosen:
            fig = draw.token_feature_heatmap(pf, name, chosen, values)
            out.figure(fig, f"features-{label}")
            figures.append(fig)
        out.data(f"features-{label}", pf, pf.rows(name, chosen))
        last = pf.acts[name][-1]  # (d_sae,)
        wanted = s.get("features") or [int(f) for f in last.topk(3).indices if last[f] > 0]
        t = time.time()
        features.stats_of(model, name, folders)
        out.timing(f"dashboard stats {name}", time.time() - t)
        summary[name] = {"strongest": chosen[:10], "dashboards": []}
        for f in wanted:
            d = features.dashboard_of(model, name, int(f), folders)
            for fig, what in (
                (draw.feature_across_prompt(pf, name, d.feature), "prompt"),
                (draw.contexts(d.top, d.max, f"Top activations of feature {d.feature} ({name})"), "top"),
                (draw.histogram(d), "histogram"),
                (draw.logit_effect(d), "logit-effect"),
                (draw.nearest(d), "nearest"),
            ):
                out.figure(fig, f"feature-{label}-{d.feature}-{what}")
                figures.append(fig)
            out.data(f"feature-{label}-{d.feature}", d, d.rows())
            summary[name]["dashboards"].append(
                {"feature": d.feature, "max": round(d.max, 4), "density": round(d.density, 6), "promoted": [t for t, _ in d.promoted[:5]]}
            )
        if s.get("clamp") is not None and wanted:
            f = int(wanted[0])
            iv = features.intervene(
                model, name, s["prompt"], f, float(s["clamp"]), None, Sampling(max_new_tokens=int(s["new_tokens"])), folders
            )
            fig = draw_intervention.continuations(iv)
            out.figure(fig, f"intervention-{label}-{f}")
            figures.append(fig)
            out.data(f"intervention-{label}-{f}", iv, iv.continuation_rows())
            summary[name]["intervention"] = {
                "feature": f,
                "value": float(s["clamp"]),
                "edits": str(iv.edits),
                "original": iv.original.text,
                "edited": iv.edited.text,
            }
    # plotly.js inlined once, so that the page opens offline
    page = "".join(fig.to_html(full_html=False, include_plotlyjs=i == 0) for i, fig in enumerate(figures))
    out.text("features.html", f"<html><head><meta charset='utf-8'><title>Features</title></head><body>{page}</body></html>")
    out.manifest["summary"] = summary


def main(argv=None) -> int:
    return run_probe("features", __doc__, add_arguments, DEFAULTS, body, argv)
