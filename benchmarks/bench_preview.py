"""The Patching page's preview: AtP* against the exact sweep it previews and against plain AtP, per site, with its
passes counted (the same whatever the number of cells: 2 forward, layers + 1 backward)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.bench_methods import counted
from benchmarks.common import Row, compare
from workbench import families, patching, preview, tasks
from workbench.model import MODELS_DIR, load_model

SITES = ("resid_pre", "z_pos", "k", "k_pos")


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    rows = []
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        bigger = families.build(
            "gpt2", Path(tmp) / "g4", layers=4, heads=8, kv_heads=8, width=128, tokenizer=MODELS_DIR / "circuits"
        )  # fmt: skip
        for name, folder, length in (("circuits", "circuits", 8), ("gpt2 4 layers × 8 heads", str(bigger), 24)):
            model = load_model(folder)
            pair = tasks.induction_pairs(model, 1, length=length, repeat=length // 2)[0]
            for site in SITES:
                with counted() as c:
                    star = preview.preview_sweep(model, pair, site)
                exact = patching.sweep(model, pair, site)
                plain = preview.preview_sweep(model, pair, site, method="AtP")
                cells = star.values.numel()
                ref, ours = compare(
                    lambda m=model, p=pair, s=site: patching.sweep(m, p, s),
                    lambda m=model, p=pair, s=site: preview.preview_sweep(m, p, s),
                    repeats, warmup=1,
                )  # fmt: skip
                rows.append(Row("preview", f"{name}: {site}, {cells} cells", "exact sweep (batched engine)", ref, "AtP* preview", ours))
                ref, ours = compare(
                    lambda m=model, p=pair, s=site: preview.preview_sweep(m, p, s, method="AtP"),
                    lambda m=model, p=pair, s=site: preview.preview_sweep(m, p, s),
                    repeats, warmup=1,
                )  # fmt: skip
                rows.append(Row("preview", f"{name}: {site}, {cells} cells", "plain AtP preview", ref, "AtP* preview", ours))
                layers = model.info.n_layers
                print(
                    f"{name} {site} ({cells} cells): AtP* {star.forward} forward + {star.backward} backward passes "
                    f"(counted: {c['forward'] - 2} after the 2 engine checks, {c['backward']} backward; ≤ layers + 2 = {layers + 2}); "
                    f"recall@{preview.K} AtP* {preview.recall(star, exact):.2f}, AtP {preview.recall(plain, exact):.2f}; "
                    f"correlation AtP* {patching.correlation(star, exact):.3f}, AtP {patching.correlation(plain, exact):.3f}"
                )
    return rows
